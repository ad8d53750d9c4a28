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

TASKS = (
    "sequence-classification",
    "token-classification",
    "causal-lm",
    "image-classification",
    "question-answering",
    "seq2seq",
)
PROBLEM_TYPES = ("single-label", "multi-label", "regression")
KERNEL_CHOICES = ("auto", "triton", "torch")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    # data and task
    train: str = ""
    eval: str | None = None
    model: str | None = None  # None: the packaged MiniLM
    task: str = "sequence-classification"
    problem_type: str = "single-label"  # sequence classification: single-label | multi-label | regression
    text_column: str = "text"
    question_column: str = "question"  # question-answering tables (SQuAD JSON needs no column names)
    context_column: str = "context"
    answers_column: str = "answers"  # {text: [...], answer_start: [...]} or a list of {text, answer_start}
    source_column: str = "source"  # seq2seq tables: the input text (or --train SRC:TGT parallel files)
    target_column: str = "target"  # seq2seq tables: the output text
    source_prefix: str | None = None  # seq2seq: put before every source (T5: "translate English to German: ")
    generation_max_length: int = 128  # seq2seq evaluation: longest generated output (tokens)
    num_beams: int = 1  # seq2seq evaluation: beam width (1 = greedy)
    image_column: str = "image"  # image-classification tables: the column holding image paths
    text_pair_column: str | None = None
    label_column: str = "label"
    label_separator: str = "|"  # multi-label labels written as "a|b" in CSV/TSV
    threshold: float = 0.5  # multi-label decision threshold on sigmoid scores
    max_length: int = 128
    packing: bool = False  # causal-lm: pack several examples into each row
    group_by_length: bool = False
    doc_stride: int = 128  # question-answering: overlap of the windows over a long context (tokens)
    max_answer_length: int = 30  # question-answering: longest answer span considered (tokens)
    n_best_size: int = 20  # question-answering: start/end candidates searched per window
    version_2_with_negative: bool = False  # SQuAD v2.0: questions may have no answer
    null_score_diff_threshold: float = 0.0  # SQuAD v2.0: answer "no answer" above this margin
    augment: str = "light"  # image-classification: none | light (random resized crop, horizontal flip)
    max_train_samples: int | None = None  # use only the first N training examples (quick runs)
    max_eval_samples: int | None = None  # use only the first N evaluation examples
    output: str = "runs/model"
    # optimization
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    schedule: str = "linear"
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    class_weights: str | None = None  # balanced | W1,W2,... (per class, in label order)
    dropout: float | None = None
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    unpad: bool = True  # encoders train on real tokens only (padding dropped inside every layer)
    seed: int = 42
    kernels: str = "auto"
    fsdp: bool = (
        False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    )
    # strategies
    freeze: str | None = None
    unfreeze_every: int = 0  # gradual unfreezing: one more layer group from the top every N steps
    layer_lr_decay: float = 1.0
    head_lr: float | None = None
    embedding_lr: float | None = None
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None
    unsup_weight: float = 0.0  # joint loss L_sup + λ·L_unsup (MLM for encoders, prompt LM for decoders)
    # evaluation, checkpoints, logs
    eval_every: int = 0  # steps; 0 = at the end of each epoch
    best_metric: str | None = None  # keep the best checkpoint by this eval metric
    patience: int = 0  # early stopping: evaluations without improvement of best_metric
    save_every: int = 0  # steps between resumable checkpoints; 0 = at each evaluation
    keep_last: int = 2
    resume: bool = True
    log_every: int = 10
    tensorboard: bool = True
    plots: bool = True
    progress: bool = True

    def validate(self) -> TrainConfig:
        if not self.train:
            raise InputError("--train is required (a data file or a hub dataset NAME:SPLIT)")
        for name, choices in (
            ("task", TASKS),
            ("problem_type", PROBLEM_TYPES),
            ("kernels", KERNEL_CHOICES),
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in choices:
                raise InputError(
                    f"--{_flag(name)} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        for name in (
            "batch_size",
            "eval_batch_size",
            "max_length",
            "lr",
            "grad_accum",
            "keep_last",
            "generation_max_length",
            "num_beams",
        ):
            if not getattr(self, name) > 0:
                raise InputError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        for name in (
            "weight_decay",
            "max_grad_norm",
            "unfreeze_every",
            "eval_every",
            "save_every",
            "patience",
            "lora_r",
            "unsup_weight",
            "label_smoothing",
        ):
            if getattr(self, name) < 0:
                raise InputError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.epochs <= 0 and not self.max_steps:
            raise InputError("--epochs must be > 0 (or give --max-steps)")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise InputError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        if self.fsdp and self.lora_r:
            raise InputError(
                "--fsdp with --lora-r is not supported: LoRA already keeps the trainable state small; "
                "use DDP (drop --fsdp)"
            )
        if self.fsdp and self.unsup_weight and self.task != "causal-lm":
            raise InputError(
                "--fsdp with --unsup-weight is not supported for encoders (the masked-LM head lives "
                "outside the sharded model); use DDP (drop --fsdp)"
            )
        if self.max_steps is not None and self.max_steps <= 0:
            raise InputError(f"--max-steps must be > 0, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 < self.layer_lr_decay <= 1:
            raise InputError(f"--layer-lr-decay must be in (0, 1], got {self.layer_lr_decay}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise InputError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.label_smoothing >= 1:
            raise InputError(f"--label-smoothing must be < 1, got {self.label_smoothing}")
        if self.patience and not self.best_metric:
            raise InputError("--patience needs --best-metric (the metric early stopping watches)")
        if (self.best_metric or self.patience) and not self.eval:
            raise InputError("--best-metric / --patience need --eval data")
        if self.packing and self.task != "causal-lm":
            raise InputError("--packing applies to --task causal-lm only")
        if self.class_weights is not None:
            parse_class_weights(self.class_weights)
            if self.task in ("causal-lm", "question-answering", "seq2seq") or (
                self.task == "sequence-classification" and self.problem_type != "single-label"
            ):
                what = (
                    self.task
                    if self.task != "sequence-classification"
                    else f"--problem-type {self.problem_type}"
                )
                raise InputError(
                    f"--class-weights applies to single-label sequence classification and token "
                    f"classification, not {what}"
                )
        if self.lora_r and self.freeze:
            raise InputError("--lora-r and --freeze do not combine: LoRA already freezes the base model")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
# Options that change nothing about the result: a resumed run may differ in these.
COSMETIC = {"progress", "log_every", "plots", "tensorboard", "resume"}


def parse_class_weights(spec: str) -> str | list[float]:
    """--class-weights: "balanced", or one positive weight per class ("1,4.5"); InputError otherwise."""
    spec = spec.strip()
    if spec == "balanced":
        return spec
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        weights = []
    if not weights or not all(w >= 0 and w < float("inf") for w in weights) or not any(weights):
        raise InputError(
            f"--class-weights must be 'balanced' or comma-separated non-negative numbers (W1,W2,...), "
            f"got {spec!r}"
        )
    return weights


def _flag(name: str) -> str:
    return name.replace("_", "-")


def load_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build a TrainConfig from an optional YAML file, then apply non-None CLI overrides."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(_read_yaml(Path(yaml_path)))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig(**values).validate()
    except TypeError as e:  # a YAML value of the wrong shape
        raise InputError(f"{yaml_path or 'config'}: {e}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of option: value at the top level")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(k, FIELDS, n=1) for k in unknown]
        named = ", ".join(
            k + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in zip(unknown, hints, strict=False)
        )
        raise InputError(f"{path}: unknown key {named}")
    return {k: _coerce(path, k, v) for k, v in data.items()}


def _coerce(path: Path, key: str, value: Any) -> Any:
    """YAML reads `1e-4` as a string and `3` as an int: convert to the field's type, or name the key."""
    import typing

    hint = typing.get_type_hints(TrainConfig)[key]
    types = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    if value is None:
        return None
    plain = not isinstance(value, bool)
    for t in types:
        if typing.get_origin(t) is list:
            if isinstance(value, list):
                return [str(v) for v in value]
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
        elif t is bool and isinstance(value, bool):
            return value
        elif t is float and plain and isinstance(value, (int, float, str)):
            try:
                return float(value)
            except ValueError:
                pass
        elif t is int and plain and isinstance(value, int):
            return value
        elif t is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        elif t is str and plain and isinstance(value, (str, int, float)):
            return str(value)
    names = " or ".join("list" if typing.get_origin(t) is list else t.__name__ for t in types)
    raise InputError(f"{path}: {key}: expected {names}, got {value!r}")
