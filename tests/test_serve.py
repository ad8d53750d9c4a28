from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import BIN, DEMO, assert_clean_error, run_cli
from serve import ServeError, TextClassifier, load_bundle, predict_file
from serve.batcher import Batcher


def _torch_logits(checkpoint, texts, max_length):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return model(**tok(texts, padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")).logits.numpy()


def test_runtime_matches_pytorch(tiny_bundle, tiny_checkpoint):
    texts = [line for line in (DEMO / "predict.txt").read_text().splitlines()]
    clf = TextClassifier.from_bundle(tiny_bundle)
    np.testing.assert_allclose(clf.logits(texts), _torch_logits(tiny_checkpoint, texts, 48), atol=1e-4)
    probs = clf.predict(texts)
    assert all(abs(sum(s["score"] for s in p) - 1) < 1e-5 for p in probs)
    assert all(p[0]["score"] >= p[-1]["score"] for p in probs)


def test_predict_file_keeps_input_order(tiny_bundle, tiny_checkpoint, tmp_path):
    texts = [f"{'very ' * (i % 7)}long message {i} about my parcel and my bill" for i in range(50)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    summary = predict_file(TextClassifier.from_bundle(tiny_bundle), src, out, batch_size=8,
                           text_column="body", chunk_rows=16)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.rows == 50 and [r["index"] for r in rows] == list(range(50))
    labels = ["billing", "shipping", "technical"]
    expected = _torch_logits(tiny_checkpoint, texts, 48).argmax(-1)
    assert [r["label"] for r in rows] == [labels[i] for i in expected]


@pytest.mark.parametrize("name,content,fragments", [
    ("in.jsonl", '{"text": "ok"}\n{"text": \n', ["in.jsonl line 2", "malformed JSON"]),
    ("in.txt", "fine\n\nalso fine\n", ["in.txt line 2", "empty text"]),
    ("in.csv", "body\nhello\n", ["no column 'text'"]),
])
def test_predict_bad_input(tiny_bundle, tmp_path, name, content, fragments):
    src = tmp_path / name
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    assert_clean_error(run_cli("sft-predict", str(tiny_bundle), "-i", str(src), "-o", str(out)), *fragments)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_bad_bundles(tiny_bundle, tmp_path):
    with pytest.raises(ServeError, match="no manifest.json"):
        load_bundle(tmp_path)
    broken = tmp_path / "b"
    shutil.copytree(tiny_bundle, broken)
    with (broken / "tokenizer.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ServeError, match="sha256 does not match"):
        load_bundle(broken)
    assert_clean_error(run_cli("sft-serve", str(broken), "--port", "0"), "tokenizer.json", "sha256")


def test_batcher_groups_concurrent_requests():
    calls = []

    def run(items):
        calls.append(len(items))
        time.sleep(0.02)
        return [x * 10 for x in items]

    async def main():
        b = Batcher(run, max_batch_size=8, max_wait_ms=20)
        b.start()
        results = await asyncio.gather(*(b.submit([i]) for i in range(20)))
        await b.stop()
        return results

    results = asyncio.run(main())
    assert results == [[i * 10] for i in range(20)]
    assert sum(calls) == 20 and max(calls) <= 8 and len(calls) < 20, calls


@pytest.fixture
def server(tiny_bundle):
    proc = subprocess.Popen([str(BIN / "sft-serve"), str(tiny_bundle), "--port", "0", "--max-wait-ms", "10"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    match = re.search(r"http://127.0.0.1:(\d+)", line)
    assert match, line
    yield proc, f"http://127.0.0.1:{match.group(1)}"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _call(url, payload=None, method=None, raw=None):
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_http_daemon(server, tiny_bundle):
    proc, base = server
    assert _call(base + "/health") == (200, {"status": "ok"})
    status, one = _call(base + "/predict", {"inputs": "my parcel is late"})
    assert status == 200 and [r["label"] for r in one] and abs(sum(r["score"] for r in one) - 1) < 1e-5
    status, many = _call(base + "/predict", {"inputs": ["my parcel is late", "refund please"]})
    assert status == 200 and len(many) == 2 and many[0] == one
    expected = TextClassifier.from_bundle(tiny_bundle).predict(["refund please"])[0]
    assert [r["label"] for r in many[1]] == [r["label"] for r in expected]
    assert _call(base + "/predict", {"inputs": ""})[0] == 422
    assert _call(base + "/predict", {"inputs": [1, 2]})[0] == 422
    assert _call(base + "/predict", raw=b"{not json")[0] == 422
    assert _call(base + "/nope")[0] == 404
    assert _call(base + "/predict", method="GET")[0] == 405
    status, info = _call(base + "/info")
    assert status == 200 and info["labels"] == ["billing", "shipping", "technical"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
