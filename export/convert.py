"""The model-changing steps: LoRA merge, Optimum's ONNX export, ORT graph optimization, int8 quantization."""

from __future__ import annotations

import logging
import platform
import shutil
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from sft.errors import InputError

from .checkpoint import Checkpoint

OPTIMIZATION_LEVELS = ("O1", "O2", "O3", "O4")
QUANTIZATIONS = ("int8",)
AUTO_MODEL_BY_TASK = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "text-generation-with-past": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "text2text-generation-with-past": "AutoModelForSeq2SeqLM",
}
# Tokenizer and generation files that travel with a merged LoRA model (whichever exist).
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
    "train_config.yaml",
    "preprocessor_config.json",
)


@contextmanager
def quiet():
    """Optimum and onnxruntime's tooling log and warn a lot about expected things (tracer constants,
    shape inference notes); our own report says what matters."""
    loggers = [logging.getLogger(n) for n in ("optimum", "onnxruntime", "transformers", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=False):
            lg.setLevel(level)


def auto_model_class(task: str):
    import transformers

    return getattr(transformers, AUTO_MODEL_BY_TASK[task])


def merge_lora(checkpoint: Checkpoint, out_dir: Path) -> Path:
    """Base + adapter -> one plain checkpoint (merge_and_unload) in out_dir, with the tokenizer files."""
    from peft import PeftModel
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint.base)
    if (checkpoint.path / "config.json").is_file():
        config = AutoConfig.from_pretrained(checkpoint.path)
    try:
        with quiet():
            base = auto_model_class(checkpoint.task).from_pretrained(checkpoint.base, config=config)
            model = PeftModel.from_pretrained(base, checkpoint.path).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(
            f"{checkpoint.path}: cannot apply the LoRA adapter to {checkpoint.base} "
            f"({str(e).strip().splitlines()[0]})"
        ) from None
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in SIDE_FILES:
        for d in (checkpoint.tokenizer_dir, checkpoint.path, checkpoint.base):
            if (d / name).is_file():
                shutil.copy2(d / name, out_dir / name)
                break
    return out_dir


def exportable_model_dir(checkpoint: Checkpoint, scratch: Path, say: Callable[[str], None]) -> Path:
    """The directory Optimum exports from: the checkpoint itself, or its LoRA adapter merged into the base."""
    if not checkpoint.is_lora:
        return checkpoint.path
    say(f"merging LoRA adapter {checkpoint.path} into {checkpoint.base}")
    return merge_lora(checkpoint, scratch / "merged")


def export_with_optimum(
    model_dir: Path,
    out_dir: Path,
    task: str,
    opset: int | None,
    *,
    graphs: Sequence[str] = ("model.onnx",),
    post_process: bool = True,
) -> Path:
    """`optimum.exporters.onnx.main_export` with dynamic batch and sequence axes; its own validation is off
    because ours (validate.py) fails instead of warning. Returns the path of the first of `graphs`, the
    files the export must write."""
    from optimum.exporters.onnx import main_export

    try:
        with quiet():
            main_export(
                str(model_dir),
                output=out_dir,
                task=task,
                opset=opset,
                do_validation=False,
                no_post_process=not post_process,
                local_files_only=True,
                library_name="transformers",
            )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(
            f"{model_dir}: Optimum could not export it ({str(e).strip().splitlines()[0]})"
        ) from None
    missing = [g for g in graphs if not (out_dir / g).is_file()]
    if missing:
        raise InputError(f"{model_dir}: Optimum wrote no {', '.join(missing)} for {task}")
    return out_dir / graphs[0]


def check_optimization_level(level: str | None) -> None:
    """O1-O3 run anywhere; O4 (fp16) needs a CUDA device, for the optimizer and for validation alike."""
    if level is None:
        return
    if level not in OPTIMIZATION_LEVELS:
        raise InputError(f"--optimize {level!r}: choose one of {', '.join(OPTIMIZATION_LEVELS)}")
    if level == "O4" and not cuda_available():
        raise InputError(
            "--optimize O4 converts the model to fp16, which needs a CUDA GPU and onnxruntime-gpu; "
            "this machine has none (use O1, O2 or O3 on CPU)"
        )


def cuda_available() -> bool:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def optimize_graph(model_dir: Path, level: str, out_dir: Path) -> Path:
    """ORTOptimizer with AutoOptimizationConfig's preset for `level`; reads config.json next to model.onnx."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=level == "O4")
    try:
        with quiet():
            ORTOptimizer.from_pretrained(model_dir).optimize(config, out_dir, file_suffix=None)
    except (NotImplementedError, KeyError) as e:
        raise InputError(
            f"--optimize {level}: onnxruntime's optimizer does not support this model "
            f"({str(e).strip().splitlines()[0]})"
        ) from None
    return out_dir / "model.onnx"


def cpu_instruction_set(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None) -> str:
    """The AutoQuantizationConfig preset for this CPU: arm64, avx512_vnni, avx512 or avx2 (x86 fallback)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    except OSError:
        pass
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def quantize_int8(model_dir: Path, out_dir: Path, instruction_set: str) -> Path:
    """Dynamic int8 quantization with per-channel weights (ORTQuantizer + AutoQuantizationConfig).

    A graph that ORTOptimizer fused holds com.microsoft operators that onnx's shape inference cannot type,
    which the quantizer needs; onnxruntime's symbolic shape inference annotates those first."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if _has_contrib_ops(model_dir / "model.onnx"):
        model_dir = _annotated_copy(model_dir, out_dir.with_name(out_dir.name + "-annotated"))
    qconfig = getattr(AutoQuantizationConfig, instruction_set)(is_static=False, per_channel=True)
    with quiet():
        ORTQuantizer.from_pretrained(model_dir, file_name="model.onnx").quantize(
            qconfig, out_dir, file_suffix=None
        )
    return out_dir / "model.onnx"


def _has_contrib_ops(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.domain == "com.microsoft" for node in graph.node)


def _annotated_copy(model_dir: Path, out_dir: Path) -> Path:
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    out_dir.mkdir()
    model = SymbolicShapeInference.infer_shapes(onnx.load(str(model_dir / "model.onnx")), auto_merge=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    shutil.copy2(model_dir / "config.json", out_dir / "config.json")
    return out_dir
