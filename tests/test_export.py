from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_clean_error, run_cli
from export import ValidationError, export_onnx
from serve.bundle import sha256_file


def test_bundle_contents(tiny_bundle, tiny_checkpoint):
    files = sorted(p.name for p in tiny_bundle.iterdir())
    assert files == ["config.json", "manifest.json", "model.onnx", "tokenizer.json"]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["task"] == "text-classification"
    assert manifest["labels"] == ["billing", "shipping", "technical"]
    assert manifest["max_length"] == 48  # the training max_length
    assert isinstance(manifest["opset"], int) and manifest["opset"] >= 14
    assert manifest["versions"]["optimum-onnx"] == "0.1.0"
    for name, digest in manifest["sha256"].items():
        assert sha256_file(tiny_bundle / name) == digest
    assert manifest["validation"]["max_abs_diff"] <= 1e-4


def test_disagreement_beyond_atol_fails_and_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from serve.runtime import TextClassifier

    real = TextClassifier.logits
    monkeypatch.setattr(TextClassifier, "logits", lambda self, texts: real(self, texts) + 0.01)
    out = tmp_path / "bundle"
    with pytest.raises(ValidationError, match=r"differ by 0.01"):
        export_onnx(tiny_checkpoint, out, atol=1e-3)
    assert not out.exists() and not list(tmp_path.iterdir())


def _copy_without(checkpoint, tmp_path, *names):
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint, dst)
    for n in names:
        (dst / n).unlink()
    return dst


def test_bad_checkpoints_exit_2(tiny_checkpoint, tmp_path):
    assert_clean_error(run_cli("sft-export", str(tmp_path / "nope"), "--onnx", "-o", str(tmp_path / "b")),
                       "checkpoint directory not found")
    no_tok = _copy_without(tiny_checkpoint, tmp_path, "tokenizer.json")
    assert_clean_error(run_cli("sft-export", str(no_tok), "--onnx", "-o", str(tmp_path / "b")), "no tokenizer.json")
    config = json.loads((no_tok / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (no_tok / "config.json").write_text(json.dumps(config))
    (no_tok / "tokenizer.json").write_text("{}")
    assert_clean_error(run_cli("sft-export", str(no_tok), "--onnx", "-o", str(tmp_path / "b")), "not supported")
    assert not (tmp_path / "b").exists()
