"""sft-export --optimize / --quantize: fused graphs still validate, int8 comes with an accuracy report and a
gate."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO
from test_export import (
    assert_one_line_error,
    classifier_checkpoint,
    exported,  # noqa: F401
    leftovers,
    llama_checkpoint,
    ner_sentences,
    run_export_cli,
    tagger_checkpoint,
    write_conll,
)

from export import ValidationError, export_onnx
from export.convert import cpu_instruction_set


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


def op_counts(onnx_file: Path) -> collections.Counter:
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(onnx_file)).graph.node)


def torch_accuracy(checkpoint: Path, eval_csv: Path) -> float:
    """The eval accuracy computed independently of export/, with transformers' pipeline."""
    import csv

    from transformers import pipeline

    rows = list(csv.DictReader(eval_csv.open()))
    classify = pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint))
    predictions = classify([r["text"] for r in rows], truncation=True, max_length=48)
    return float(np.mean([p["label"] == r["label"] for p, r in zip(predictions, rows, strict=False)]))


@pytest.mark.parametrize("level, fused_op", [("O1", None), ("O2", "Attention")])
def test_optimized_graph_validates(base, level, fused_op):
    plain = op_counts(exported(base, "cls", classifier_checkpoint(base)) / "model.onnx")
    bundle = exported(base, f"cls-{level}", classifier_checkpoint(base), optimize=level)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["optimization"] == {"level": level}
    assert manifest["validation"]["max_abs_diff"] <= 1e-4
    ops = op_counts(bundle / "model.onnx")
    assert sum(ops.values()) < sum(plain.values())  # the optimizer really rewrote the graph
    if fused_op:
        assert ops[fused_op] == 2 and plain[fused_op] == 0  # one fused attention per layer


def test_int8_with_accuracy_report(base):
    from optimum.onnxruntime import ORTModelForSequenceClassification

    ckpt = classifier_checkpoint(base)
    eval_csv = DEMO / "eval.csv"
    report = export_onnx(
        ckpt, base / "bundles" / "cls-int8", quantize="int8", eval_file=eval_csv, keep_fp32=True
    )
    manifest = report.manifest
    assert manifest["quantization"] == {
        "dtype": "int8",
        "method": "dynamic",
        "per_channel": True,
        "instruction_set": cpu_instruction_set(),
    }
    pytorch, fp32, int8 = report.models
    assert [m["model"] for m in report.models] == ["PyTorch", "ONNX fp32", "ONNX int8"]
    assert [m["file"] for m in report.models] == ["model.safetensors", "model_fp32.onnx", "model.onnx"]
    assert pytorch["accuracy"] == pytest.approx(torch_accuracy(ckpt, eval_csv), abs=1e-9)
    assert pytorch["accuracy"] > 0.6  # a trained model, so the comparison means something
    assert fp32["accuracy"] == pytorch["accuracy"]
    assert (pytorch["accuracy"] - int8["accuracy"]) * 100 <= 1.0
    assert manifest["accuracy"]["metric"] == "accuracy" and manifest["accuracy"]["examples"] == 90

    bundle = report.bundle_dir
    assert int8["size_bytes"] == (bundle / "model.onnx").stat().st_size < fp32["size_bytes"]
    assert fp32["size_bytes"] == (bundle / "model_fp32.onnx").stat().st_size
    assert op_counts(bundle / "model.onnx")["MatMulInteger"] > 0
    assert op_counts(bundle / "model_fp32.onnx")["MatMulInteger"] == 0
    assert set(manifest["sha256"]) == {"config.json", "model.onnx", "model_fp32.onnx", "tokenizer.json"}
    # validation: fp32 held to --atol; int8 differences are reported, and are larger
    assert manifest["validation"]["max_abs_diff"] <= 1e-4 < manifest["validation"]["int8"]["max_abs_diff"]
    ORTModelForSequenceClassification.from_pretrained(bundle)  # model.onnx, next to model_fp32.onnx


def test_int8_without_keep_fp32_holds_only_the_int8_graph(base):
    bundle = exported(base, "cls-O2-int8", classifier_checkpoint(base), optimize="O2", quantize="int8")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sorted(p.name for p in bundle.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]
    assert manifest["optimization"] == {"level": "O2"} and manifest["quantization"]["dtype"] == "int8"
    assert "accuracy" not in manifest  # no eval file: nothing measured, nothing claimed
    assert op_counts(bundle / "model.onnx")["MatMulInteger"] > 0


def test_token_classification_int8_reports_entity_f1(base, tmp_path):
    eval_file = write_conll(tmp_path / "eval.conll", ner_sentences(seed=7, count=24))
    report = export_onnx(tagger_checkpoint(base), tmp_path / "bundle", quantize="int8", eval_file=eval_file)
    assert report.metric == "entity_f1"
    pytorch, fp32, int8 = (m["entity_f1"] for m in report.models)
    assert pytorch > 0.5 and fp32 == pytorch and pytorch - int8 <= 0.01
    assert report.manifest["validation"]["inputs"] == "eval-file sample"


def test_generation_int8_reports_next_token_accuracy(base, tmp_path):
    records = [{"instruction": f"where is parcel {i}", "output": "it ships today"} for i in range(6)]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = export_onnx(
        llama_checkpoint(base),
        tmp_path / "bundle",
        quantize="int8",
        eval_file=eval_file,
        max_accuracy_drop=100,
    )
    assert report.metric == "next_token_accuracy"
    pytorch, fp32, _ = (m["next_token_accuracy"] for m in report.models)
    assert 0 <= pytorch <= 1 and fp32 == pytorch
    assert op_counts(report.bundle_dir / "model.onnx")["MatMulInteger"] > 0


def test_int8_losing_too_much_accuracy_fails_and_leaves_nothing(base, tmp_path, monkeypatch, capsys):
    import export.accuracy

    real = export.accuracy.score_onnx

    def int8_worse(eval_set, reference, variant):
        value = real(eval_set, reference, variant)
        return value - 0.05 if variant.name == "int8" else value

    monkeypatch.setattr(export.accuracy, "score_onnx", int8_worse)
    out, repo = tmp_path / "bundle", tmp_path / "triton"
    code, _, err = run_export_cli(
        monkeypatch,
        capsys,
        classifier_checkpoint(base),
        "--onnx",
        "-o",
        out,
        "--quantize",
        "int8",
        "--eval-file",
        DEMO / "eval.csv",
        "--triton-repo",
        repo,
    )
    assert_one_line_error(
        code, err, "int8 loses 5.00 points of accuracy", "--max-accuracy-drop 1", expected_code=1
    )
    assert not out.exists() and not repo.exists() and leftovers(tmp_path) == []
    with pytest.raises(ValidationError):
        export_onnx(
            classifier_checkpoint(base),
            out,
            quantize="int8",
            eval_file=DEMO / "eval.csv",
            max_accuracy_drop=4.9,
        )
    report = export_onnx(
        classifier_checkpoint(base), out, quantize="int8", eval_file=DEMO / "eval.csv", max_accuracy_drop=5.1
    )
    assert report.manifest["accuracy"]["max_accuracy_drop_points"] == 5.1


def test_cli_prints_the_side_by_side_table(base, tmp_path, monkeypatch, capsys):
    code, out, err = run_export_cli(
        monkeypatch,
        capsys,
        classifier_checkpoint(base),
        "--onnx",
        "-o",
        tmp_path / "bundle",
        "--optimize",
        "O2",
        "--quantize",
        "int8",
        "--eval-file",
        DEMO / "eval.csv",
        "--keep-fp32",
        "--opset",
        "17",
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["opset"] == 17
    lines = out.splitlines()
    header = next(line for line in lines if line.strip().startswith("model "))
    assert header.split() == ["model", "file", "size", "MB", "accuracy"]
    for row, entry in zip(lines[lines.index(header) + 1 :], manifest["accuracy"]["models"], strict=False):
        assert row.split()[-1] == f"{entry['accuracy'] * 100:.2f}%"
        assert f"{entry['size_bytes'] / 1e6:.1f}" in row and entry["file"] in row
    assert any(line.strip().startswith("logits ") for line in lines)
    assert "... validating against PyTorch" in err


@pytest.mark.parametrize(
    "flags, machine, expected",
    [
        ("fpu sse avx2 avx512f avx512bw avx512_vnni", "x86_64", "avx512_vnni"),
        ("fpu sse avx2 avx512f avx512bw", "x86_64", "avx512"),
        ("fpu sse avx avx2 fma", "x86_64", "avx2"),
        ("fp asimd evtstrm", "aarch64", "arm64"),
    ],
)
def test_cpu_instruction_set_from_cpuinfo(tmp_path, flags, machine, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_instruction_set(cpuinfo, machine) == expected
