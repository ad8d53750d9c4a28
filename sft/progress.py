"""Where a training run stands, and where that is reported: the JSONL log, TensorBoard, the progress bar.

`TrainingProgress` is the whole of the loop's bookkeeping; it is saved in every resumable state and
restored on resume, so a resumed run carries on with the same counters, best model and patience.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainingProgress:
    step: int = 0  # optimizer steps done
    running_loss: float | None = None  # exponential moving average of the step losses (progress bar)
    last_loss: float | None = None  # the last step's training loss
    seen_examples: int = 0  # over all processes
    seen_tokens: int = 0  # non-padding tokens, over all processes
    train_seconds: float = 0.0  # wall time in the loop, summed over resumes
    last_eval: dict[str, Any] = field(default_factory=dict)
    best: float | None = None  # the best value of --best-metric so far
    best_step: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    bad_evals: int = 0  # evaluations since the best one (early stopping)

    def record_step(self, step: int, loss: float, train_seconds: float) -> None:
        self.step = step
        self.last_loss = loss
        self.running_loss = loss if self.running_loss is None else 0.9 * self.running_loss + 0.1 * loss
        self.train_seconds = train_seconds

    def examples_per_s(self) -> float:
        return self.seen_examples / max(self.train_seconds, 1e-9)

    def tokens_per_s(self) -> float:
        return self.seen_tokens / max(self.train_seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainingProgress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})


class RunLog:
    """`train_log.jsonl` (one JSON record per line) and, if asked for and installed, TensorBoard events.
    Only the main process writes."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool):
        self._jsonl = (run_dir / "train_log.jsonl").open("a", encoding="utf-8") if enabled else None
        self._tb = _summary_writer(run_dir / "tensorboard") if enabled and tensorboard else None

    def event(self, name: str, **fields: Any) -> None:
        if self._jsonl is not None:
            record = {"time": round(time.time(), 3), "event": name, **fields}
            self._jsonl.write(json.dumps(record, default=float) + "\n")
            self._jsonl.flush()

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        if self._jsonl is not None and not self._jsonl.closed:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _summary_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is optional
        return None
    return SummaryWriter(str(directory))


class ProgressBar:
    """A rich progress bar over the optimizer steps (loss, examples/s, time left); prints above it."""

    def __init__(self, *, enabled: bool, total: int, progress: TrainingProgress):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.1f} ex/s"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        loss = progress.running_loss if progress.running_loss is not None else float("nan")
        self._task = self._bar.add_task("train", total=total, completed=progress.step, loss=loss, rate=0.0)

    def update(self, progress: TrainingProgress) -> None:
        self._bar.update(
            self._task, completed=progress.step, loss=progress.running_loss, rate=progress.examples_per_s()
        )

    def print(self, line: str) -> None:
        self._bar.console.print(line)

    def __enter__(self) -> ProgressBar:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)
