"""The training loop with our Triton kernels switched on (--kernels triton), run through the Triton
interpreter on CPU: same losses as the torch path, for an encoder and for a packed decoder."""

from __future__ import annotations

import json
import os

import pytest
from conftest import DEMO

from sft import load_config, train

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs TRITON_INTERPRET=1 (scripts/test.sh sets it on machines without a GPU)",
)


def _losses(out):
    return [
        json.loads(x)["loss"]
        for x in (out / "train_log.jsonl").read_text().splitlines()
        if json.loads(x)["event"] == "train"
    ]


def test_encoder_with_triton_kernels_matches_torch(tiny_bert, tmp_path):
    runs = {}
    for backend in ("torch", "triton"):
        r = train(
            load_config(
                overrides={
                    "train": str(DEMO / "eval.csv"),
                    "model": str(tiny_bert),
                    "output": str(tmp_path / backend),
                    "max_steps": 2,
                    "batch_size": 4,
                    "max_length": 24,
                    "kernels": backend,
                    "dropout": 0.0,
                    "log_every": 1,
                    "progress": False,
                    "tensorboard": False,
                    "plots": False,
                }
            )
        )
        runs[backend] = _losses(r.output_dir)
    assert runs["triton"] == pytest.approx(runs["torch"], rel=1e-4, abs=1e-5)


def test_packed_decoder_with_triton_kernels_matches_torch(tiny_llama, tmp_path):
    records = [
        {"instruction": f"Name a color number {i}.", "input": "", "output": "Blue." * (1 + i % 3)}
        for i in range(8)
    ]
    data = tmp_path / "a.json"
    data.write_text(json.dumps(records))
    runs = {}
    for backend in ("torch", "triton"):
        r = train(
            load_config(
                overrides={
                    "task": "causal-lm",
                    "train": str(data),
                    "model": str(tiny_llama),
                    "output": str(tmp_path / backend),
                    "max_steps": 2,
                    "batch_size": 4,
                    "max_length": 64,
                    "packing": True,
                    "kernels": backend,
                    "log_every": 1,
                    "progress": False,
                    "tensorboard": False,
                    "plots": False,
                }
            )
        )
        runs[backend] = _losses(r.output_dir)
    assert runs["triton"] == pytest.approx(runs["torch"], rel=1e-4, abs=1e-5)
