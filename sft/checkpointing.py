"""Resumable training state: everything needed to continue a run bit for bit.

A run keeps its state in `<output>.run/` next to the output: `step-00000123/state.pt` holds the model,
optimizer, scheduler and loss-scaler state, every RNG state of every rank, the step reached and the
early-stopping
bookkeeping. Each checkpoint is written to a temporary directory and renamed, so a kill -9 at any
moment leaves either the previous checkpoint or the new one, never half of one. The data position is
the step count: the batch order is a pure function of the seed.

States are read back with `torch.load(weights_only=True)`: a run directory is a place anyone could drop a
file into, and a full unpickler would run whatever it names. So a state holds only tensors and plain
Python values (the numpy RNG state is kept as a list of ints), and anything else is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError

_STEP_DIR = re.compile(r"^step-(\d+)$")
# The name the weights-only unpickler refused ("Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y").
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# Version of the state layout; a state without it (or with another) was written by an older sft-train.
STATE_FORMAT = 2


def run_dir_for(output: Path) -> Path:
    return output.resolve().parent / f".{output.name}.run"


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),  # (version, tuple of ints, gauss_next)
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({**state, "step": step, "format": STATE_FORMAT}, tmp / "state.pt")
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
    return load_state(states[-1] / "state.pt") if states else None


def load_state(path: Path) -> dict[str, Any]:
    """Read one resumable state with the weights-only unpickler; anything else is an InputError."""
    start_over = "pass --no-resume to start over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _REFUSED_GLOBAL.search(str(e))
        if found is None:  # not a pickle at all (e.g. "Unsupported operand 110")
            reason = str(e).partition("WeightsUnpickler error:")[2].strip().split("\n")[0] or "not torch.save"
            raise InputError(
                f"{path}: not a resumable state saved by sft-train (unreadable: {reason}); {start_over}"
            ) from None
        if found.group(1).startswith("numpy."):  # states before STATE_FORMAT 2 pickled the numpy RNG state
            raise InputError(
                f"{path}: a state saved by an older sft-train (it holds {found.group(1)}); {start_over}"
            ) from None
        raise InputError(
            f"{path}: not a resumable state saved by sft-train (it holds {found.group(1)}, which is not "
            f"loaded); {start_over}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(
            f"{path}: not a resumable state saved by sft-train (unreadable: {reason}); {start_over}"
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a resumable state saved by sft-train (no state dict); {start_over}")
    if state.get("format") != STATE_FORMAT:
        raise InputError(f"{path}: a state saved by an older sft-train; {start_over}")
    return state
