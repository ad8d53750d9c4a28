"""A serving bundle on disk: manifest.json, model.onnx, tokenizer.json, config.json.

The manifest says which task the graph does: "text-classification", "token-classification",
"question-answering", "text-generation-with-past" (a causal LM whose graph takes and returns past
key/values), "text2text-generation-with-past" (encoder and decoder graphs listed in manifest["files"], no
model.onnx) or "image-classification" (preprocessor_config.json instead of tokenizer.json, no max_length).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ServeError

SUPPORTED_FORMAT = 1
CLASSIFICATION_TASKS = ("text-classification", "token-classification")
GENERATION_TASK = "text-generation-with-past"
IMAGE_TASK = "image-classification"
QA_TASK = "question-answering"
SEQ2SEQ_TASK = "text2text-generation-with-past"  # encoder + decoder (+ with-past) graphs, no model.onnx
SUPPORTED_TASKS = (*CLASSIFICATION_TASKS, GENERATION_TASK, QA_TASK, SEQ2SEQ_TASK, IMAGE_TASK)
GENERATION_INT_FIELDS = ("eos_token_id", "num_layers", "num_key_value_heads", "head_dim")


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def labels(self) -> list[str]:
        return self.manifest.get("labels") or []

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def text_column(self) -> str:
        """The column the model was trained on (sft-predict's default), "text" when unknown."""
        value = self.manifest.get("text_column")
        return value if isinstance(value, str) and value else "text"

    @property
    def text_pair_column(self) -> str | None:
        value = self.manifest.get("text_pair_column")
        return value if isinstance(value, str) and value else None

    @property
    def multi_label(self) -> bool:
        return self.manifest.get("problem_type") == "multi_label_classification"

    @property
    def pad_token(self) -> str | None:
        return self.manifest.get("pad_token")

    @property
    def generation(self) -> dict[str, Any]:
        return self.manifest.get("generation") or {}

    @property
    def model_file(self) -> Path:
        return self.path / "model.onnx"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and check a bundle; with verify, every file's sha256 must match the manifest."""
    bundle = read_manifest(path)
    if verify:
        verify_files(bundle)
    return bundle


def read_manifest(path: str | Path) -> Bundle:
    """Parse and check manifest.json and that the files it lists exist (no hashing)."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not path.is_dir():
        raise ServeError(f"{path}: bundle directory not found")
    if not manifest_path.is_file():
        raise ServeError(f"{path}: not a bundle (no manifest.json; make one with sft-export --onnx)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServeError(f"{manifest_path}: malformed JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ServeError(f"{manifest_path}: expected a JSON object")
    _check_manifest(manifest_path, manifest)
    for name in manifest["sha256"]:
        if not (path / name).is_file():
            raise ServeError(f"{path / name}: listed in manifest.json but missing")
    if manifest["task"] == SEQ2SEQ_TASK:
        needed = [*manifest["files"].values(), "tokenizer.json"]
    elif manifest["task"] == IMAGE_TASK:  # pixels in: no tokenizer (serve.images reads the bundle)
        needed = ["model.onnx", "preprocessor_config.json"]
    else:
        needed = ["model.onnx", "tokenizer.json"]
    for name in needed:
        if not (path / name).is_file():
            raise ServeError(f"{path / name}: missing from the bundle")
    return Bundle(path, manifest)


def _check_manifest(where: Path, m: dict[str, Any]) -> None:
    for key in ("format", "task", "sha256"):
        if key not in m:
            raise ServeError(f"{where}: missing field {key!r}")
    if m.get("task") != IMAGE_TASK and "max_length" not in m:
        raise ServeError(f"{where}: missing field 'max_length'")
    if m["format"] != SUPPORTED_FORMAT:
        raise ServeError(
            f"{where}: bundle format {m['format']!r} is not supported "
            f"(this version reads format {SUPPORTED_FORMAT})"
        )
    if m["task"] not in SUPPORTED_TASKS:
        raise ServeError(
            f"{where}: field 'task': {m['task']!r} is not supported ({', '.join(SUPPORTED_TASKS)})"
        )
    if m["task"] != IMAGE_TASK and not _positive_int(m["max_length"]):
        raise ServeError(f"{where}: field 'max_length' must be a positive integer, got {m['max_length']!r}")
    if not isinstance(m["sha256"], dict) or not all(isinstance(v, str) for v in m["sha256"].values()):
        raise ServeError(f"{where}: field 'sha256' must map file names to hex digests")
    if m["task"] in (*CLASSIFICATION_TASKS, IMAGE_TASK):
        labels = m.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ServeError(f"{where}: field 'labels' must be a non-empty list of strings for {m['task']}")
    if m["task"] == SEQ2SEQ_TASK:
        files, gen = m.get("files"), m.get("generation")
        if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
            raise ServeError(f"{where}: field 'files' must map graph names to file names for {SEQ2SEQ_TASK}")
        for key in ("decoder_start_token_id", "eos_token_id"):
            value = gen.get(key) if isinstance(gen, dict) else None
            if not (type(value) is int and value >= 0):
                raise ServeError(f"{where}: field 'generation.{key}' must be a non-negative integer")
    if m["task"] == GENERATION_TASK:
        gen = m.get("generation")
        if not isinstance(gen, dict):
            raise ServeError(f"{where}: field 'generation' (an object) is required for {GENERATION_TASK}")
        for key in GENERATION_INT_FIELDS:
            if not isinstance(gen.get(key), int) or isinstance(gen.get(key), bool) or gen[key] < 0:
                raise ServeError(
                    f"{where}: field 'generation.{key}' must be a non-negative integer, got {gen.get(key)!r}"
                )
        for key in ("bos_token_id", "pad_token_id"):
            value = gen.get(key)
            if value is not None and not (type(value) is int and value >= 0):
                raise ServeError(f"{where}: field 'generation.{key}' must be a non-negative integer or null")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def verify_files(bundle: Bundle) -> None:
    for name, digest in bundle.manifest["sha256"].items():
        f = bundle.path / name
        if sha256_file(f) != digest:
            raise ServeError(f"{f}: sha256 does not match manifest.json (file changed or corrupted)")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
