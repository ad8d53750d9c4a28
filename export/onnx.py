"""Checkpoint -> ONNX serving bundle, through Optimum, validated against PyTorch.

Steps: check the checkpoint -> `optimum.exporters.onnx.main_export` into a temporary directory ->
assemble the bundle (model.onnx, tokenizer.json, config.json, manifest.json) -> run the bundle exactly
as `serve` runs it (onnxruntime + tokenizers) and the checkpoint in PyTorch on the same texts -> fail if
the largest |logit difference| exceeds `atol` (Optimum itself only warns) -> rename into place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.atomic import check_output_dir, fresh_work_dir, replace_dir, write_json
from serve.bundle import sha256_file
from sft.errors import InputError

BUNDLE_FORMAT = 1
SUPPORTED_ARCHITECTURE_SUFFIXES = {"ForSequenceClassification": "text-classification"}

# Texts of varied length and content used for validation when no eval file is given.
VALIDATION_TEXTS = [
    "ok",
    "The package arrived two days late and the box was damaged.",
    "I was charged twice this month, please refund one of the payments!",
    "After the last update the app crashes whenever I open the settings screen on my phone.",
    "Great service, thanks a lot.",
    "Why?",
    "Numbers 12345 and symbols #@! mixed with UPPER and lower case words, plus émojis 🙂 and accents.",
    " ".join(["a long input that must be truncated at the bundle's maximum length"] * 40),
]


class ValidationError(InputError):
    """The exported model disagrees with PyTorch beyond the tolerance."""

    exit_code = 1


@dataclass
class ExportReport:
    bundle_dir: Path
    max_abs_diff: float
    num_samples: int
    manifest: dict[str, Any]


def export_onnx(checkpoint: str | Path, output: str | Path, *, atol: float = 1e-4, opset: int | None = None,
                max_length: int | None = None, validation_texts: list[str] | None = None) -> ExportReport:
    checkpoint, output = Path(checkpoint), Path(output)
    config = read_checkpoint(checkpoint)
    task = checkpoint_task(checkpoint, config)
    max_length = max_length or checkpoint_max_length(checkpoint)
    check_output_dir(output, marker="manifest.json")
    work = fresh_work_dir(output)
    try:
        onnx_path = _run_optimum(checkpoint, work / "optimum", task, opset)
        os.replace(onnx_path, work / "model.onnx")
        shutil.rmtree(work / "optimum")
        shutil.copy2(checkpoint / "tokenizer.json", work / "tokenizer.json")
        shutil.copy2(checkpoint / "config.json", work / "config.json")
        manifest = build_manifest(work, checkpoint, config, task, max_length)
        write_json(work / "manifest.json", manifest)

        texts = validation_texts or VALIDATION_TEXTS
        max_diff = max_abs_logit_diff(checkpoint, work, texts, max_length)
        manifest["validation"] = {"max_abs_diff": max_diff, "atol": atol, "num_samples": len(texts)}
        write_json(work / "manifest.json", manifest)
        if not max_diff <= atol:  # NaN fails too
            raise ValidationError(f"{checkpoint}: ONNX and PyTorch logits differ by {max_diff:.3g} "
                                  f"> --atol {atol:g} on {len(texts)} texts; no bundle written")
        replace_dir(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportReport(output, max_diff, len(texts), manifest)


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    if not checkpoint.exists():
        raise InputError(f"{checkpoint}: checkpoint directory not found")
    if not checkpoint.is_dir():
        raise InputError(f"{checkpoint}: not a directory (expected an sft-train / Hugging Face checkpoint)")
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        raise InputError(f"{checkpoint}: not a checkpoint (no config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{config_path}: malformed JSON ({e})") from None
    if not any((checkpoint / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                      "pytorch_model.bin")):
        raise InputError(f"{checkpoint}: no model weights (model.safetensors)")
    if not (checkpoint / "tokenizer.json").is_file():
        raise InputError(f"{checkpoint}: no tokenizer.json (a fast tokenizer is needed for serving)")
    return config


def checkpoint_task(checkpoint: Path, config: dict[str, Any]) -> str:
    for arch in config.get("architectures") or []:
        for suffix, task in SUPPORTED_ARCHITECTURE_SUFFIXES.items():
            if arch.endswith(suffix):
                return task
    raise InputError(f"{checkpoint}/config.json: architectures {config.get('architectures')} are not supported "
                     f"(supported: *{', *'.join(SUPPORTED_ARCHITECTURE_SUFFIXES)})")


def checkpoint_max_length(checkpoint: Path) -> int:
    """The max_length the model was trained with (train_config.yaml), else the tokenizer's, capped at 512."""
    import yaml

    train_cfg = checkpoint / "train_config.yaml"
    if train_cfg.is_file():
        value = (yaml.safe_load(train_cfg.read_text()) or {}).get("max_length")
        if isinstance(value, int) and value > 0:
            return value
    tok_cfg = checkpoint / "tokenizer_config.json"
    if tok_cfg.is_file():
        value = json.loads(tok_cfg.read_text()).get("model_max_length")
        if isinstance(value, int) and value > 0:
            return min(value, 512)
    return 512


def _run_optimum(checkpoint: Path, out_dir: Path, task: str, opset: int | None) -> Path:
    import logging
    import warnings

    from optimum.exporters.onnx import main_export

    logging.getLogger("optimum").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about constants are expected for these graphs
            main_export(str(checkpoint), output=out_dir, task=task, opset=opset, do_validation=False,
                        local_files_only=True, library_name="transformers")
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{checkpoint}: Optimum could not export it ({str(e).splitlines()[0]})") from None
    onnx_path = out_dir / "model.onnx"
    if not onnx_path.is_file():
        raise InputError(f"{checkpoint}: Optimum wrote no model.onnx")
    return onnx_path


def build_manifest(bundle: Path, checkpoint: Path, config: dict[str, Any], task: str, max_length: int) -> dict:
    import onnx

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    tokenizer = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
    pad = (tokenizer.get("padding") or {})
    tok_cfg_path = checkpoint / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return {
        "format": BUNDLE_FORMAT,
        "task": task,
        "problem_type": config.get("problem_type") or "single_label_classification",
        "model_type": config.get("model_type"),
        "labels": [id2label[i] for i in sorted(id2label)],
        "max_length": max_length,
        "pad_token": tok_cfg.get("pad_token") or pad.get("pad_token") or "[PAD]",
        "opset": opset,
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "source_checkpoint": str(checkpoint.resolve()),
        "versions": _versions(),
        "sha256": {name: sha256_file(bundle / name) for name in ("model.onnx", "tokenizer.json", "config.json")},
    }


def max_abs_logit_diff(checkpoint: Path, bundle: Path, texts: list[str], max_length: int) -> float:
    """Largest |ORT - PyTorch| logit over `texts`: ORT through serve's own runtime (tokenizers library),
    PyTorch through the transformers tokenizer and model, so the whole serving path is checked."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from serve.runtime import TextClassifier

    classifier = TextClassifier.from_bundle(bundle)
    ort_logits = classifier.logits(texts)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        torch_logits = model(**batch).logits.float().numpy()
    if ort_logits.shape != torch_logits.shape:
        raise ValidationError(f"ONNX logits shape {ort_logits.shape} != PyTorch {torch_logits.shape}")
    return float(np.max(np.abs(ort_logits - torch_logits)))


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sft-toolchain", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
                 "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
