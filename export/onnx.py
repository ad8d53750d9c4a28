"""Checkpoint -> validated ONNX serving bundle, through Optimum.

Steps: check the inputs (checkpoint, options, eval file, output paths) before loading anything -> merge a
LoRA adapter -> `main_export` -> optional ORTOptimizer pass -> validate that fp32 graph against PyTorch
(over --atol fails) -> optional int8 quantization -> optional accuracy report (fails when int8 loses more
than --max-accuracy-drop) -> assemble the bundle and the Triton entry in work directories -> rename both
into place. Any failure removes every work directory: no partial bundle is left behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.atomic import check_output_dir, fresh_work_dir, replace_dir, write_json
from sft.errors import InputError

from .checkpoint import Checkpoint, check_exportable, inspect_checkpoint, max_length_of
from .convert import (
    QUANTIZATIONS,
    check_optimization_level,
    cpu_instruction_set,
    export_with_optimum,
    exportable_model_dir,
    optimize_graph,
    quantize_int8,
)
from .manifest import build_manifest, seal
from .runners import IMAGE_TASK
from .validate import OutputDiff, ValidationError, check_tolerance, compare, validation_texts

FP32_KEPT_NAME = "model_fp32.onnx"


@dataclass
class ExportReport:
    bundle_dir: Path
    max_abs_diff: float  # of the fp32 graph, the one held to --atol
    num_samples: int
    manifest: dict[str, Any]
    diffs: list[OutputDiff] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)  # PyTorch / ONNX variants: file, size, metric
    metric: str | None = None
    triton_dir: Path | None = None


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    *,
    atol: float = 1e-4,
    opset: int | None = None,
    max_length: int | None = None,
    validation_texts: list[str] | None = None,
    task: str | None = None,
    optimize: str | None = None,
    quantize: str | None = None,
    eval_file: str | Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    max_accuracy_drop: float = 1.0,
    triton_repo: str | Path | None = None,
    keep_fp32: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    say = progress or (lambda message: None)
    output = Path(output)
    _check_options(atol, opset, optimize, quantize, max_accuracy_drop)
    ckpt = inspect_checkpoint(checkpoint, task)
    if ckpt.task == IMAGE_TASK:
        from .vision import check_image_processor

        check_image_processor(ckpt)
    max_length = max_length or max_length_of(ckpt)
    eval_set = None
    if eval_file is not None:
        from .accuracy import read_eval_set

        eval_set = read_eval_set(eval_file, ckpt, text_column, label_column, image_column)
    check_output_dir(output, marker="manifest.json")
    triton_name = None
    if triton_repo is not None:
        if ckpt.task in (IMAGE_TASK, "text2text-generation-with-past"):
            raise InputError("--triton-repo: the Triton entry is made for single-graph text models only")
        from .triton import check_repo, model_name

        triton_name = model_name(output)
        check_repo(Path(triton_repo), triton_name)
    check_exportable(ckpt)

    work = _work_dir(output, fresh_work_dir)
    scratch = triton_work = None
    try:
        scratch = _work_dir(output, lambda o: fresh_work_dir(o.with_name(o.name + ".scratch")))
        report = _build(
            ckpt,
            work,
            scratch,
            say,
            atol=atol,
            opset=opset,
            max_length=max_length,
            texts=validation_texts,
            optimize=optimize,
            quantize=quantize,
            eval_set=eval_set,
            max_accuracy_drop=max_accuracy_drop,
            keep_fp32=keep_fp32,
        )
        if triton_name is not None:
            from .triton import build_entry

            triton_work = build_entry(
                Path(triton_repo), triton_name, work / "model.onnx", report.manifest["labels"]
            )
        replace_dir(work, output)
        report.bundle_dir = output
        if triton_work is not None:
            report.triton_dir = Path(triton_repo) / triton_name
            replace_dir(triton_work, report.triton_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if triton_work is not None:
            shutil.rmtree(triton_work, ignore_errors=True)
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return report


def _check_options(
    atol: float, opset: int | None, optimize: str | None, quantize: str | None, max_accuracy_drop: float
) -> None:
    if not atol >= 0:
        raise InputError(f"--atol {atol}: must be >= 0")
    if opset is not None and not 11 <= opset <= 25:
        raise InputError(f"--opset {opset}: choose an ONNX opset between 11 and 25")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InputError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if not max_accuracy_drop >= 0:
        raise InputError(f"--max-accuracy-drop {max_accuracy_drop}: must be >= 0 (points)")
    if quantize and optimize == "O4":
        raise InputError("--quantize int8 with --optimize O4: O4 makes an fp16 graph; quantize an O1-O3 one")
    check_optimization_level(optimize)


def _work_dir(output: Path, make: Callable[[Path], Path]) -> Path:
    try:
        return make(output)
    except OSError as e:
        raise InputError(f"--output {output}: cannot write next to it ({e.strerror})") from None


def _build(
    ckpt: Checkpoint,
    work: Path,
    scratch: Path,
    say: Callable[[str], None],
    *,
    atol: float,
    opset: int | None,
    max_length: int,
    texts: list[str] | None,
    optimize: str | None,
    quantize: str | None,
    eval_set,
    max_accuracy_drop: float,
    keep_fp32: bool,
) -> ExportReport:
    from .runners import TorchModel

    task = ckpt.task
    if task == "text2text-generation-with-past":  # three graphs: export/seq2seq.py builds the bundle
        from .seq2seq import build_seq2seq

        return build_seq2seq(
            ckpt,
            work,
            scratch,
            say,
            atol=atol,
            opset=opset,
            max_length=max_length,
            texts=texts,
            optimize=optimize,
            quantize=quantize,
            eval_set=eval_set,
        )
    model_dir = exportable_model_dir(ckpt, scratch, say)
    say(f"exporting {task} with Optimum (opset {opset or 'default'})")
    export_with_optimum(model_dir, scratch / "optimum", task, opset)
    source = scratch / "optimum"
    if optimize:
        say(f"optimizing the graph ({optimize})")
        optimize_graph(source, optimize, scratch / "optimized")
        source = scratch / "optimized"

    fp32 = _variant(scratch / "fp32", source / "model.onnx", model_dir, ckpt, task, max_length)
    reference = TorchModel(model_dir, task, max_length)
    if task == IMAGE_TASK:  # `texts` are images here
        from .vision import validation_images

        texts = validation_images(eval_set)
    else:
        texts = texts or validation_texts(
            model_dir / "tokenizer.json", eval_set.texts if eval_set else None, max_length
        )
    say(f"validating against PyTorch on {len(texts)} {'images' if task == IMAGE_TASK else 'texts'}")
    diffs = _compare(task, reference, fp32, texts)
    check_tolerance(diffs, atol, str(ckpt.path), len(texts))
    validation: dict[str, Any] = {
        "atol": atol,
        "num_samples": len(texts),
        "inputs": "eval-file sample" if eval_set else "generated",
        "max_abs_diff": max(d.max_abs for d in diffs),
        "outputs": {d.name: d.as_dict() for d in diffs},
    }

    final = fp32
    quantization = None
    if quantize:
        isa = cpu_instruction_set()
        say(f"quantizing to int8 (dynamic, per-channel, {isa})")
        quantize_int8(fp32, scratch / "int8-optimum", isa)
        final = _variant(
            scratch / "int8", scratch / "int8-optimum" / "model.onnx", model_dir, ckpt, task, max_length
        )
        quantization = {"dtype": "int8", "method": "dynamic", "per_channel": True, "instruction_set": isa}
        int8_diffs = _compare(task, reference, final, texts)
        validation["int8"] = {
            "max_abs_diff": max(d.max_abs for d in int8_diffs),
            "outputs": {d.name: d.as_dict() for d in int8_diffs},
            "note": "reported, not held to --atol; int8 is judged by the accuracy report",
        }

    models = _model_rows(model_dir, fp32, final if quantize else None, optimize, keep_fp32)
    if eval_set is not None:
        variants = [None, fp32, final] if quantize else [None, fp32]
        _score_models(models, variants, eval_set, reference, say)
        if quantize:
            _check_accuracy_drop(models, eval_set, max_accuracy_drop)

    for name in ("tokenizer.json", "config.json", "generation_config.json", "preprocessor_config.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, work / name)
    shutil.copy2(final / "model.onnx", work / "model.onnx")
    if quantize and keep_fp32:
        shutil.copy2(fp32 / "model.onnx", work / FP32_KEPT_NAME)
    manifest = _manifest(work, ckpt, task, max_length)
    manifest.update(
        optimization={"level": optimize} if optimize else None,
        quantization=quantization,
        validation=validation,
    )
    if eval_set is not None:
        manifest["accuracy"] = {
            "eval_file": str(eval_set.path),
            "metric": eval_set.metric,
            "examples": len(eval_set),
            "models": models,
            "max_accuracy_drop_points": max_accuracy_drop if quantize else None,
        }
    seal(work, manifest)
    return ExportReport(
        work,
        validation["max_abs_diff"],
        len(texts),
        manifest,
        diffs,
        models,
        eval_set.metric if eval_set else None,
    )


def _variant(
    directory: Path, onnx_file: Path, model_dir: Path, ckpt: Checkpoint, task: str, max_length: int
) -> Path:
    """A bundle-shaped directory for one ONNX file, so serve's runtime can load it for validation."""
    directory.mkdir()
    os.replace(onnx_file, directory / "model.onnx")
    for name in ("tokenizer.json", "config.json", "preprocessor_config.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, directory / name)
    manifest = _manifest(directory, ckpt, task, max_length)
    write_json(directory / "manifest.json", {**manifest, "sha256": {}})
    return directory


def _manifest(directory: Path, ckpt: Checkpoint, task: str, max_length: int) -> dict[str, Any]:
    if task == IMAGE_TASK:
        from .vision import image_manifest

        return image_manifest(directory, ckpt)
    if task == "question-answering":
        from .qa import qa_manifest

        return qa_manifest(directory, ckpt, max_length)
    return build_manifest(directory, ckpt, task, max_length)


def _compare(task: str, reference, variant: Path, inputs: list) -> list[OutputDiff]:
    if task == IMAGE_TASK:
        from .vision import compare_images

        return compare_images(reference, variant, inputs)
    if task == "question-answering":
        from .qa import compare_qa

        return compare_qa(reference, variant, inputs)
    return compare(task, reference, variant, inputs)


def _model_rows(
    model_dir: Path, fp32: Path, int8: Path | None, optimize: str | None, keep_fp32: bool
) -> list[dict[str, Any]]:
    """PyTorch, ONNX fp32 (optimized or not) and ONNX int8: the file each lives in and its size."""
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    rows = [
        {
            "model": "PyTorch",
            "file": ", ".join(w.name for w in weights),
            "size_bytes": sum(w.stat().st_size for w in weights),
        },
        {
            "model": "ONNX fp32" + (f" {optimize}" if optimize else ""),
            "file": "model.onnx" if int8 is None else FP32_KEPT_NAME if keep_fp32 else "(not kept)",
            "size_bytes": (fp32 / "model.onnx").stat().st_size,
        },
    ]
    if int8 is not None:
        rows.append(
            {"model": "ONNX int8", "file": "model.onnx", "size_bytes": (int8 / "model.onnx").stat().st_size}
        )
    return rows


def _score_models(
    models: list[dict[str, Any]], variants: list[Path | None], eval_set, reference, say: Callable[[str], None]
) -> None:
    from .accuracy import score_onnx, score_torch

    for row, variant in zip(models, variants, strict=False):
        say(f"scoring {row['model']} on {len(eval_set)} examples of {eval_set.path}")
        row[eval_set.metric] = (
            score_torch(eval_set, reference) if variant is None else score_onnx(eval_set, reference, variant)
        )


def _check_accuracy_drop(models: list[dict[str, Any]], eval_set, max_drop: float) -> None:
    metric = eval_set.metric
    torch_value, int8_value = models[0][metric], models[-1][metric]
    drop = (torch_value - int8_value) * 100
    if drop > max_drop:
        raise ValidationError(
            f"{eval_set.path}: int8 loses {drop:.2f} points of {metric} ({torch_value:.4f} in "
            f"PyTorch, {int8_value:.4f} in int8) > --max-accuracy-drop {max_drop:g}; "
            f"no bundle written"
        )
