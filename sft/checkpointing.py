"""Resumable training state: everything needed to continue a run bit for bit.

A run keeps its state in `<output>.run/` next to the output: `step-00000123/state.pt` holds the model,
optimizer, scheduler and loss-scaler state, every RNG state of every rank, the step reached and the
early-stopping
bookkeeping. Each checkpoint is written to a temporary directory and renamed, so a kill -9 at any
moment leaves either the previous checkpoint or the new one, never half of one. The data position is
the step count: the batch order is a pure function of the seed.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")


def run_dir_for(output: Path) -> Path:
    return output.resolve().parent / f".{output.name}.run"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({**state, "step": step}, tmp / "state.pt")
    with open(tmp / "state.pt", "rb") as f:
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_states(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_states(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "state.pt").is_file()]


def load_latest(run_dir: Path) -> dict[str, Any] | None:
    states = list_states(run_dir)
    if not states:
        return None
    return torch.load(states[-1] / "state.pt", map_location="cpu", weights_only=False)
