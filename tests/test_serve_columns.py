"""A bundle remembers the input columns it was trained on: sft-predict reads them without --text-column."""

from __future__ import annotations

import csv
import json

from conftest import DEMO, run_cli

from serve import load_model


def _demo_rows() -> list[dict[str, str]]:
    with (DEMO / "train.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_trained_columns_are_the_prediction_defaults(tiny_bert, tmp_path):
    from export import export_onnx
    from sft import load_config, train

    rows = _demo_rows()
    train_tsv = tmp_path / "train.tsv"
    train_tsv.write_text(
        "sentence\tquestion\tlabel\n"
        + "".join(f"{r['text']}\tis this about {r['label']}?\t{r['label']}\n" for r in rows)
    )
    ckpt = tmp_path / "ckpt"
    cfg = load_config(
        overrides={
            "train": str(train_tsv),
            "model": str(tiny_bert),
            "output": str(ckpt),
            "text_column": "sentence",
            "text_pair_column": "question",
            "max_steps": 2,
            "batch_size": 8,
            "max_length": 48,
            "progress": False,
        }
    )
    train(cfg)
    bundle = tmp_path / "bundle"
    export_onnx(ckpt, bundle, atol=1e-4)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (manifest["text_column"], manifest["text_pair_column"]) == ("sentence", "question")

    dev = tmp_path / "dev.tsv"
    texts = [(r["text"], "is this about billing?") for r in rows[:7]]
    dev.write_text("sentence\tquestion\n" + "".join(f"{a}\t{b}\n" for a, b in texts))
    out = tmp_path / "out.jsonl"
    proc = run_cli("sft-predict", str(bundle), "--input", str(dev), "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    expected = load_model(bundle).predict(texts)
    assert [g["label"] for g in got] == [e[0]["label"] for e in expected]
    assert [g["score"] for g in got] == [e[0]["score"] for e in expected]

    # an explicit --text-column still wins (and without a pair column the texts are read alone)
    (tmp_path / "plain.tsv").write_text("body\n" + "".join(f"{a}\n" for a, _ in texts))
    proc = run_cli(
        "sft-predict",
        str(bundle),
        "-i",
        str(tmp_path / "plain.tsv"),
        "-o",
        str(out),
        "--text-column",
        "body",
    )
    assert proc.returncode == 0, proc.stderr
    singles = load_model(bundle).predict([a for a, _ in texts])
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == [
        e[0]["label"] for e in singles
    ]
