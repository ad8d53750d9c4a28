"""The training configuration: one dataclass, filled from a YAML file and then from CLI overrides.

Every field is a plain value so the resolved configuration can be saved next to the checkpoint
(`train_config.yaml`) and read back to rerun the same training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

KERNEL_CHOICES = ("auto", "triton", "torch")


@dataclass
class TrainConfig:
    train: str = ""
    eval: str | None = None
    model: str | None = None  # None: the packaged MiniLM
    task: str = "sequence-classification"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    output: str = "runs/model"
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 42
    kernels: str = "auto"
    log_every: int = 10
    progress: bool = True

    def validate(self) -> "TrainConfig":
        if not self.train:
            raise InputError("--train is required (a CSV/TSV/JSON/JSONL/Parquet file or a hub dataset name)")
        positive = {"batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "max_length": self.max_length, "lr": self.lr}
        for name, value in positive.items():
            if not value > 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.epochs <= 0 and not self.max_steps:
            raise InputError("--epochs must be > 0 (or give --max-steps)")
        if self.max_steps is not None and self.max_steps <= 0:
            raise InputError(f"--max-steps must be > 0, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.kernels not in KERNEL_CHOICES:
            raise InputError(f"--kernels must be one of {', '.join(KERNEL_CHOICES)}, got {self.kernels!r}")
        if self.task != "sequence-classification":
            raise InputError(f"--task {self.task!r} is not supported yet (sequence-classification)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build a TrainConfig from an optional YAML file, then apply non-None CLI overrides."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(_read_yaml(Path(yaml_path)))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig(**values).validate()


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of option: value at the top level")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(k, FIELDS, n=1) for k in unknown]
        named = ", ".join(k + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in zip(unknown, hints))
        raise InputError(f"{path}: unknown key {named}")
    return data
