"""serve's runtime, bundle checks, batcher and sft-predict (the daemon is in test_serve_http.py)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time

import numpy as np
import pytest
from conftest import DEMO, assert_clean_error, run_cli
from serve_support import CLS_LABELS, demo_texts

from serve import ServeError, TextClassifier, load_bundle, load_model, predict_file
from serve.batcher import Batcher, split_by_length
from serve.encoding import InputTooLong
from serve.session import choose_providers

pytest_plugins = ["serve_fixtures"]  # cls_bundle, ner_bundle, gen_bundle and their checkpoints


def _torch_logits(checkpoint, texts, max_length):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return model(
            **tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        ).logits.numpy()


def test_runtime_matches_pytorch(cls_bundle, cls_checkpoint):
    texts = demo_texts() + [" ".join(["a long text that gets truncated"] * 20)]
    clf = load_model(cls_bundle)
    assert isinstance(clf, TextClassifier)
    np.testing.assert_allclose(clf.logits(texts), _torch_logits(cls_checkpoint, texts, 32), atol=1e-4)
    probs = clf.predict(texts)
    assert all(abs(sum(s["score"] for s in p) - 1) < 1e-5 for p in probs)
    assert all([s["score"] for s in p] == sorted((s["score"] for s in p), reverse=True) for p in probs)
    raw = clf.predict(texts[:3], raw_scores=True)
    logits = clf.logits(texts[:3])
    for row, out in zip(logits, raw, strict=False):
        assert {s["label"]: s["score"] for s in out} == pytest.approx(
            dict(zip(CLS_LABELS, row.tolist(), strict=False)), abs=1e-6
        )
    assert [len(p) for p in clf.predict(texts[:2], top_k=1)] == [1, 1]


def test_exported_bundle_is_served(tiny_bundle, tiny_checkpoint):
    """A bundle written by sft-export (export/onnx.py) runs here exactly like PyTorch."""
    texts = demo_texts()
    np.testing.assert_allclose(
        load_model(tiny_bundle).logits(texts), _torch_logits(tiny_checkpoint, texts, 48), atol=1e-4
    )


def test_multi_label_bundle_uses_sigmoid(cls_bundle, tmp_path):
    bundle = tmp_path / "multi"
    shutil.copytree(cls_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["problem_type"] = "multi_label_classification"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    clf = load_model(bundle)
    texts = demo_texts()[:4]
    logits = clf.logits(texts)
    for row, out in zip(logits, clf.predict(texts), strict=False):
        assert {s["label"]: s["score"] for s in out} == pytest.approx(
            dict(zip(CLS_LABELS, (1 / (1 + np.exp(-row))).tolist(), strict=False)), abs=1e-6
        )
    softmax = clf.predict(texts, function_to_apply="softmax")
    assert all(abs(sum(s["score"] for s in p) - 1) < 1e-5 for p in softmax)


def test_io_binding_path_gives_the_same_logits(cls_bundle):
    texts = demo_texts()
    plain = load_model(cls_bundle, io_binding=False).logits(texts)
    bound = load_model(cls_bundle, io_binding=True).logits(texts)
    np.testing.assert_allclose(bound, plain, atol=1e-6)


def test_providers_and_threads(cls_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert choose_providers("auto")[0] == "CUDAExecutionProvider"
    else:
        assert choose_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ServeError, match="no CUDA provider"):
            choose_providers("cuda")
    with pytest.raises(ServeError, match="--device must be one of"):
        choose_providers("tpu")
    assert load_model(cls_bundle, threads=1).model.threads == 1


def test_too_long_input_without_truncation(cls_bundle):
    clf = load_model(cls_bundle)
    long_text = " ".join(["parcel"] * 100)
    with pytest.raises(InputTooLong, match=r"inputs\[1\] has 102 tokens, more than the limit of 32"):
        clf.encode(["short", long_text], truncate=False)
    assert len(clf.encode([long_text])[0].ids) == 32


@pytest.mark.parametrize(
    "change,message",
    [
        ({"task": "translation"}, "field 'task': 'translation' is not supported"),
        ({"labels": []}, "field 'labels' must be a non-empty list"),
        ({"max_length": "64"}, "field 'max_length' must be a positive integer"),
        ({"format": 9}, "bundle format 9 is not supported"),
        ({"task": "text-generation-with-past"}, "field 'generation' (an object) is required"),
        (
            {
                "task": "text-generation-with-past",
                "generation": {"eos_token_id": 2, "num_layers": 2, "num_key_value_heads": "2", "head_dim": 8},
            },
            "field 'generation.num_key_value_heads' must be a non-negative integer",
        ),
    ],
)
def test_bad_manifests(cls_bundle, tmp_path, change, message):
    bundle = tmp_path / "b"
    shutil.copytree(cls_bundle, bundle)
    manifest = {**json.loads((bundle / "manifest.json").read_text()), **change}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ServeError, match="manifest.json: " + message.replace("(", r"\(").replace(")", r"\)")):
        load_bundle(bundle)


def test_bad_bundles(cls_bundle, tmp_path):
    with pytest.raises(ServeError, match="no manifest.json"):
        load_bundle(tmp_path)
    broken = tmp_path / "b"
    shutil.copytree(cls_bundle, broken)
    with (broken / "tokenizer.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ServeError, match="sha256 does not match"):
        load_bundle(broken)
    assert_clean_error(run_cli("sft-serve", str(broken), "--port", "0"), "tokenizer.json", "sha256")
    assert_clean_error(
        run_cli("sft-serve", str(cls_bundle), "--port", "-1"), "--port must be between 0 and 65535"
    )
    assert_clean_error(
        run_cli("sft-serve", str(cls_bundle), "--max-batch-tokens", "0"), "--max-batch-tokens must be > 0"
    )
    (broken / "model.onnx").write_bytes(b"not a model")
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "sha256": {}}))
    assert_clean_error(
        run_cli("sft-serve", str(broken), "--port", "0"), "model.onnx", "onnxruntime cannot load it"
    )


def test_split_by_length_partitions_and_respects_the_budget():
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 80) for _ in range(rng.randint(1, 90))]
        budget = rng.choice([64, 256, 4096])
        calls = split_by_length(lengths, budget)
        assert sorted(i for c in calls for i in c) == list(range(len(lengths)))
        assert all(len(c) == 1 or len(c) * max(lengths[i] for i in c) <= budget for c in calls)
        assert all(lengths[c[0]] == min(lengths[i] for i in c) for c in calls)  # sorted inside a call
    assert split_by_length([10] * 8, 16384) == [list(range(8))]
    mixed = split_by_length([4] * 30 + [500] * 2, 16384)  # padding 30 short inputs to 500 costs too much
    assert sorted(map(len, mixed)) == [2, 30]


def _run_batcher(run, submissions, **kwargs):
    async def main():
        b = Batcher(run, **kwargs)
        b.start()
        results = await asyncio.gather(
            *(b.submit(items, [None] * len(items), tokens) for items, tokens in submissions)
        )
        await b.stop()
        return results

    return asyncio.run(main())


def test_batcher_groups_concurrent_requests_within_limits():
    calls = []

    def run(items, options):
        calls.append(list(items))
        time.sleep(0.01)
        return [x * 10 for x in items]

    submissions = [([i], [5]) for i in range(20)] + [([100, 101, 102], [5, 5, 5])]
    results = _run_batcher(
        run, submissions, max_batch_requests=8, max_batch_tokens=1000, max_queue_delay_ms=30
    )
    assert results == [[i * 10] for i in range(20)] + [[1000, 1010, 1020]]
    assert sum(map(len, calls)) == 23 and max(map(len, calls)) <= 8 and len(calls) < 23, calls

    calls.clear()  # the token budget: 10 inputs of 40 tokens, at most 100 tokens a batch
    _run_batcher(
        run,
        [([i], [40]) for i in range(10)],
        max_batch_requests=64,
        max_batch_tokens=100,
        max_queue_delay_ms=30,
    )
    assert max(map(len, calls)) == 2 and sum(map(len, calls)) == 10, calls


def test_batcher_waits_at_most_the_queue_delay_and_reports_failures():
    def run(items, options):
        if "boom" in items:
            raise RuntimeError("model failed")
        return items

    async def timings():
        b = Batcher(run, max_batch_requests=64, max_queue_delay_ms=50)
        b.start()
        t0 = time.perf_counter()
        await b.submit(["alone"], [None], [3])  # a lone client is not held back
        alone = time.perf_counter() - t0
        await asyncio.gather(*(b.submit([i], [None], [3]) for i in range(4)))
        t0 = time.perf_counter()
        await b.submit(["after a crowd"], [None], [3])  # waits for company, at most the queue delay
        waited = time.perf_counter() - t0
        await b.stop()
        return alone, waited

    alone, waited = asyncio.run(timings())
    assert alone < 0.04 and 0.045 < waited < 1.0, (alone, waited)
    with pytest.raises(RuntimeError, match="model failed"):
        _run_batcher(run, [(["boom"], [3])], max_queue_delay_ms=1)


def test_predict_file_keeps_input_order(cls_bundle, cls_checkpoint, tmp_path):
    texts = [f"{'very ' * (i % 7)}long message {i} about my parcel and my bill" for i in range(50)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    summary = predict_file(load_model(cls_bundle), src, out, batch_size=8, text_column="body", chunk_rows=16)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.rows == 50 and [r["index"] for r in rows] == list(range(50))
    expected = _torch_logits(cls_checkpoint, texts, 32).argmax(-1)
    assert [r["label"] for r in rows] == [CLS_LABELS[i] for i in expected]


def test_predict_file_formats_and_pairs(cls_bundle, tmp_path):
    clf = load_model(cls_bundle)
    texts = demo_texts()[:6]
    expected = [p[0]["label"] for p in clf.predict(texts)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "in.tsv").write_text("text\tother\n" + "".join(f"{t}\tx\n" for t in texts))
    (tmp_path / "in.csv").write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    for name in ("in.txt", "in.tsv", "in.csv"):
        out = tmp_path / f"{name}.out.jsonl"
        predict_file(clf, tmp_path / name, out, progress=False)
        assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == expected, name
    (tmp_path / "pairs.jsonl").write_text(
        "".join(json.dumps({"text": t, "pair": "refund"}) + "\n" for t in texts)
    )
    predict_file(clf, tmp_path / "pairs.jsonl", tmp_path / "pairs.out", pair_column="pair", progress=False)
    paired = [p[0]["label"] for p in clf.predict([(t, "refund") for t in texts])]
    assert [json.loads(line)["label"] for line in (tmp_path / "pairs.out").read_text().splitlines()] == paired


def test_predict_resume_appends_after_complete_rows(cls_bundle, tmp_path):
    clf = load_model(cls_bundle)
    texts = [f"message {i} about my {'bill' if i % 2 else 'parcel'}" for i in range(30)]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    full = tmp_path / "full.jsonl"
    predict_file(clf, src, full, chunk_rows=7, progress=False)
    lines = full.read_text().splitlines(keepends=True)

    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:11]) + lines[11][:9])  # a run killed in the middle of line 12
    summary = predict_file(clf, src, partial, chunk_rows=7, resume=True, progress=False)
    assert (summary.skipped, summary.rows) == (11, 19)
    assert partial.read_text() == full.read_text()
    assert predict_file(clf, src, partial, resume=True, progress=False).rows == 0  # already complete

    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("not ours\n")
    with pytest.raises(ServeError, match="cannot resume"):
        predict_file(clf, src, foreign, resume=True, progress=False)
    assert foreign.read_text() == "not ours\n"


def test_predict_resume_keeps_whole_lines_when_the_input_breaks(cls_bundle, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(10)) + '{"text": \n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(ServeError, match="in.jsonl line 11: malformed JSON"):
        predict_file(load_model(cls_bundle), src, out, chunk_rows=4, resume=True, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(8)) and out.read_text().endswith("\n")


@pytest.mark.parametrize(
    "name,content,fragments",
    [
        ("in.jsonl", '{"text": "ok"}\n{"text": \n', ["in.jsonl line 2", "malformed JSON"]),
        ("in.txt", "fine\n\nalso fine\n", ["in.txt line 2", "empty text"]),
        ("in.csv", "body\nhello\n", ["no column 'text'"]),
        ("in.jsonl", '{"text": "ok"}\n{"body": "x"}\n', ["in.jsonl line 2", "missing text in field 'text'"]),
    ],
)
def test_predict_bad_input(cls_bundle, tmp_path, name, content, fragments):
    src = tmp_path / name
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    assert_clean_error(run_cli("sft-predict", str(cls_bundle), "-i", str(src), "-o", str(out)), *fragments)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_predict_progress_bar(cls_bundle, tmp_path, capfd):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(demo_texts()) + "\n")
    predict_file(load_model(cls_bundle), src, tmp_path / "out.jsonl", progress=True)
    err = capfd.readouterr().err
    assert "in.txt" in err and f"{len(demo_texts())} rows" in err and "rows/s" in err


def test_predict_cli_and_environment(cls_bundle, tmp_path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text((DEMO / "predict.txt").read_text())
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("SFT_PREDICT_INPUT", str(src))
    monkeypatch.setenv("SFT_PREDICT_BATCH_SIZE", "3")
    proc = run_cli("sft-predict", str(cls_bundle), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""  # no progress bar when not on a terminal
    n = len(demo_texts())
    assert f"wrote {n} predictions" in proc.stdout and len(out.read_text().splitlines()) == n
    assert_clean_error(
        run_cli("sft-predict", str(cls_bundle), "-i", str(src), "-o", str(out), "--batch-size", "0"),
        "--batch-size must be > 0",
    )
