"""Resumable states are read with torch.load(weights_only=True): a state file holding a pickled object, or one
written by an older sft-train, is refused in one line with exit 2, and nothing in it runs."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from conftest import DEMO, assert_clean_error, run_cli

from sft import InputError
from sft.checkpointing import STATE_FORMAT, load_latest, load_state, rng_state, save_state, set_rng_state


class _RunsACommand:
    """What an attacker would drop in: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_rng_states_round_trip_through_the_weights_only_loader(tmp_path):
    random.random(), np.random.randn(), torch.rand(3)  # np.random.randn leaves a cached gaussian behind
    save_state(tmp_path, 5, {"rng_per_rank": [rng_state()], "progress": {"step": 5}}, keep_last=2)
    expected = (random.random(), np.random.randn(), np.random.randn(), torch.rand(3))
    state = load_latest(tmp_path)
    assert state["format"] == STATE_FORMAT and state["step"] == 5
    set_rng_state(state["rng_per_rank"][0])
    again = (random.random(), np.random.randn(), np.random.randn(), torch.rand(3))
    assert again[:3] == expected[:3] and torch.equal(again[3], expected[3])


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "state.pt"
    torch.save({"format": STATE_FORMAT, "x": _RunsACommand(marker)}, path)
    with pytest.raises(InputError, match=r"not a resumable state saved by sft-train \(it holds posix.system"):
        load_state(path)
    assert not marker.exists()


def test_older_and_unreadable_states_are_named(tmp_path):
    old = tmp_path / "old.pt"  # before the format version: the numpy RNG state pickled as an ndarray
    torch.save({"rng_per_rank": [{"numpy": np.random.get_state()}]}, old)
    with pytest.raises(InputError, match="a state saved by an older sft-train .*; pass --no-resume"):
        load_state(old)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}}, plain)
    with pytest.raises(InputError, match="a state saved by an older sft-train; pass --no-resume"):
        load_state(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(InputError, match=r"not a resumable state saved by sft-train \(unreadable"):
        load_state(garbage)


def test_cli_refuses_a_tampered_run_directory_with_exit_2(tiny_bert, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "ran"
    step = tmp_path / ".out.run" / "step-00000004"
    step.mkdir(parents=True)
    torch.save({"format": STATE_FORMAT, "config": _RunsACommand(marker)}, step / "state.pt")
    proc = run_cli(
        "sft-train",
        "--train",
        str(DEMO / "train.csv"),
        "--model",
        str(tiny_bert),
        "--output",
        str(out),
        "--max-steps",
        "2",
        "--max-length",
        "32",
        "--no-progress",
    )
    assert_clean_error(
        proc, f"{step / 'state.pt'}: not a resumable state saved by sft-train (", "--no-resume"
    )
    assert not marker.exists() and not out.exists()
