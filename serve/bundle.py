"""A serving bundle on disk: manifest.json, model.onnx, tokenizer.json, config.json."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ServeError

SUPPORTED_FORMAT = 1
SUPPORTED_TASKS = ("text-classification",)


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def model_file(self) -> Path:
        return self.path / "model.onnx"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and check a bundle; with verify, every file's sha256 must match the manifest."""
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
    for key in ("format", "task", "labels", "max_length", "sha256"):
        if key not in manifest:
            raise ServeError(f"{manifest_path}: missing field {key!r}")
    if manifest["format"] != SUPPORTED_FORMAT:
        raise ServeError(f"{manifest_path}: bundle format {manifest['format']!r} is not supported "
                         f"(this version reads format {SUPPORTED_FORMAT})")
    if manifest["task"] not in SUPPORTED_TASKS:
        raise ServeError(f"{manifest_path}: task {manifest['task']!r} is not supported ({', '.join(SUPPORTED_TASKS)})")
    for name, digest in manifest["sha256"].items():
        f = path / name
        if not f.is_file():
            raise ServeError(f"{f}: listed in manifest.json but missing")
        if verify and sha256_file(f) != digest:
            raise ServeError(f"{f}: sha256 does not match manifest.json (file changed or corrupted)")
    return Bundle(path, manifest)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
