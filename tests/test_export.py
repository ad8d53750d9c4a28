"""sft-export: every task exports and validates, LoRA merges, bad inputs fail cleanly with nothing left
behind.

Checkpoints are tiny models built here (the classifier and the tagger trained a few dozen steps so their
accuracy means something); builders are cached per test session and shared with tests/test_export_*.py.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, write_tiny_bert
from serve_support import write_wordpiece_llama

from export import ValidationError, export_onnx
from serve.bundle import sha256_file

CLS_LABELS = ["billing", "shipping", "technical"]
NER_LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
NAMES = ["ann", "bob", "carla", "dev", "eve"]
PLACES = ["paris", "lima", "oslo", "rome", "kyiv"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def _write_train_config(directory: Path, **settings) -> None:
    import yaml

    (directory / "train_config.yaml").write_text(yaml.safe_dump(settings))


def _train(model, batches, steps: int, lr: float = 3e-3) -> None:
    import torch

    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@functools.cache
def classifier_checkpoint(base: Path) -> Path:
    """Tiny BERT trained 60 steps on the demo tickets: well above chance, as a fine-tuned model would be."""
    import csv

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    d = write_tiny_bert(base / "export-cls")
    config = BertConfig.from_pretrained(d)
    config.id2label = dict(enumerate(CLS_LABELS))
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    tok = BertTokenizerFast.from_pretrained(d)
    rows = list(csv.DictReader((DEMO / "train.csv").open()))
    batches = []
    for i in range(0, len(rows), 32):
        chunk = rows[i : i + 32]
        enc = tok(
            [r["text"] for r in chunk], padding=True, truncation=True, max_length=48, return_tensors="pt"
        )
        enc["labels"] = torch.tensor([CLS_LABELS.index(r["label"]) for r in chunk])
        batches.append(dict(enc))
    _train(model, batches, steps=60)
    model.save_pretrained(d)
    _write_train_config(d, max_length=48, text_column="text", label_column="label")
    return d


def ner_sentences(seed: int, count: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        name, place = rng.choice(NAMES), rng.choice(PLACES)
        if rng.random() < 0.5:
            out.append(([name, "lives", "in", place], ["B-PER", "O", "O", "B-LOC"]))
        else:
            out.append((["why", "did", place, "bill", name, "twice"], ["O", "O", "B-LOC", "O", "B-PER", "O"]))
    return out


def write_conll(path: Path, sentences) -> Path:
    path.write_text(
        "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(*s, strict=False)) for s in sentences) + "\n"
    )
    return path


@functools.cache
def tagger_checkpoint(base: Path) -> Path:
    """Tiny BertForTokenClassification trained on generated PER/LOC sentences."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    cls = classifier_checkpoint(base)
    d = base / "export-ner"
    d.mkdir()
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(cls / f, d / f)
    config = BertConfig.from_pretrained(cls)
    config.id2label = dict(enumerate(NER_LABELS))
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.architectures = ["BertForTokenClassification"]
    config.problem_type = None
    torch.manual_seed(0)
    model = BertForTokenClassification(config)
    tok = BertTokenizerFast.from_pretrained(d)
    sentences = ner_sentences(1, 64)
    batches = []
    for i in range(0, len(sentences), 16):
        chunk = sentences[i : i + 16]
        enc = tok([s[0] for s in chunk], is_split_into_words=True, padding=True, return_tensors="pt")
        labels = torch.full(enc["input_ids"].shape, -100)
        for row, (_, tags) in enumerate(chunk):
            previous = None
            for pos, word in enumerate(enc.word_ids(row)):
                if word is not None and word != previous:
                    labels[row, pos] = NER_LABELS.index(tags[word])
                previous = word
        batches.append({**enc, "labels": labels})
    _train(model, batches, steps=80)
    model.save_pretrained(d)
    _write_train_config(d, max_length=64)
    return d


@functools.cache
def llama_checkpoint(base: Path) -> Path:
    """A tiny random Llama on the WordPiece vocabulary ([CLS] as BOS, [SEP] as EOS), with a chat template."""
    d = base / "export-llama"
    d.mkdir()
    write_wordpiece_llama(classifier_checkpoint(base), d, chat_template=CHAT_TEMPLATE)
    _write_train_config(d, max_length=64)
    return d


@functools.cache
def exported(base: Path, name: str, checkpoint: Path, **options) -> Path:
    """One export per (name, options) per session, in-process."""
    out = base / "bundles" / name
    export_onnx(checkpoint, out, **options)
    return out


def run_export_cli(monkeypatch, capsys, *args: str):
    """sft-export's entry point in-process (the console script minus interpreter start-up):
    (exit code, stdout, stderr)."""
    from export.cli import main

    monkeypatch.setattr(sys, "argv", ["sft-export", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def assert_one_line_error(code: int, err: str, *fragments: str, expected_code: int = 2) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("... ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(autouse=True)
def single_threaded(monkeypatch):
    """One thread for torch and onnxruntime: tiny models gain nothing from more, and on shared cores
    spinning thread pools are many times slower."""
    import torch

    import serve.session

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(serve.session, "usable_cores", lambda: 1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- every task


def test_text_classification_bundle(base):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from serve.bundle import load_bundle
    from serve.runtime import TextClassifier

    ckpt = classifier_checkpoint(base)
    bundle = exported(base, "cls", ckpt)
    assert sorted(p.name for p in bundle.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["task"] == "text-classification"
    assert manifest["labels"] == CLS_LABELS
    assert manifest["max_length"] == 48 and manifest["pad_token"] == "[PAD]"
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["outputs"] == ["logits"]
    assert manifest["optimization"] is None and manifest["quantization"] is None
    assert manifest["versions"]["optimum-onnx"] and manifest["versions"]["onnxruntime"]
    assert set(manifest["sha256"]) == {"config.json", "model.onnx", "tokenizer.json"}
    for name, digest in manifest["sha256"].items():
        assert sha256_file(bundle / name) == digest
    validation = manifest["validation"]
    assert validation["inputs"] == "generated" and validation["num_samples"] >= 16
    assert set(validation["outputs"]) == {"logits"} and validation["max_abs_diff"] <= 1e-4
    assert 0 <= validation["outputs"]["logits"]["max_rel_diff"] < 1e-4
    load_bundle(bundle)  # serve accepts it, sha256 included

    texts = (DEMO / "predict.txt").read_text().splitlines()[:6]
    tok = AutoTokenizer.from_pretrained(ckpt)
    batch = tok(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    expected = AutoModelForSequenceClassification.from_pretrained(ckpt)(**batch).logits.detach().numpy()
    np.testing.assert_allclose(TextClassifier.from_bundle(bundle).logits(texts), expected, atol=1e-4)
    ort_model = ORTModelForSequenceClassification.from_pretrained(bundle)  # Optimum loads it unchanged
    np.testing.assert_allclose(ort_model(**batch).logits.numpy(), expected, atol=1e-4)


def test_token_classification_bundle(base):
    from optimum.onnxruntime import ORTModelForTokenClassification
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    ckpt = tagger_checkpoint(base)
    bundle = exported(base, "ner", ckpt)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "token-classification" and manifest["labels"] == NER_LABELS
    assert manifest["max_length"] == 64 and manifest["outputs"] == ["logits"]
    assert manifest["validation"]["max_abs_diff"] <= 1e-4

    tok = AutoTokenizer.from_pretrained(ckpt)
    batch = tok(
        ["ann lives in paris", "why did rome bill eve twice again"], padding=True, return_tensors="pt"
    )
    expected = AutoModelForTokenClassification.from_pretrained(ckpt)(**batch).logits.detach().numpy()
    got = ORTModelForTokenClassification.from_pretrained(bundle)(**batch).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    first_subtokens = [batch.word_ids(0).index(w) for w in range(4)]
    assert [NER_LABELS[i] for i in expected[0, first_subtokens].argmax(-1)] == ["B-PER", "O", "O", "B-LOC"]


def test_generation_bundle_matches_pytorch_greedy_decoding(base):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.runners import OrtSession, present_to_past

    ckpt = llama_checkpoint(base)
    bundle = exported(base, "llama", ckpt)
    manifest = json.loads((bundle / "manifest.json").read_text())
    config = json.loads((ckpt / "config.json").read_text())
    assert manifest["task"] == "text-generation-with-past" and manifest["labels"] == []
    assert manifest["generation"] == {
        "eos_token_id": config["eos_token_id"],
        "bos_token_id": config["bos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "num_layers": 2,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "chat_template": CHAT_TEMPLATE,
    }
    assert "past_key_values.1.value" in manifest["inputs"] and "present.1.value" in manifest["outputs"]
    outputs = manifest["validation"]["outputs"]
    assert set(outputs) == {"logits"} | {f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")}
    assert manifest["validation"]["max_abs_diff"] <= 1e-4
    assert "generation_config.json" in manifest["sha256"]

    # Greedy decoding through the bundle's graph, step by step with its own cache, against transformers.
    tok = AutoTokenizer.from_pretrained(ckpt)
    prompt = tok("where is my parcel", return_tensors="np")["input_ids"].astype(np.int64)
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    expected = greedy_tokens(model, prompt, 6)
    session = OrtSession(bundle / "model.onnx")
    ids, past, got = prompt, None, []
    for _ in range(6):
        length = prompt.shape[1] + len(got)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones((1, length), dtype=np.int64),
            "position_ids": np.arange(length - ids.shape[1], length, dtype=np.int64)[None],
        }
        out = session.run(feeds, past=past)
        got.append(int(out["logits"][0, -1].argmax()))
        ids, past = np.array([[got[-1]]], dtype=np.int64), present_to_past(out)
    assert got == expected
    assert (
        greedy_tokens(ORTModelForCausalLM.from_pretrained(bundle), prompt, 6) == expected
    )  # Optimum loads it


def greedy_tokens(model, prompt: np.ndarray, count: int) -> list[int]:
    import torch

    ids = torch.from_numpy(prompt)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=count,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, prompt.shape[1] :].tolist()


def test_serve_runs_every_exported_task(base):
    """The bundle contract, end to end: serve's runner for each task reads what export wrote."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serve.runtime import load_model

    classifier = load_model(exported(base, "cls", classifier_checkpoint(base)))
    assert classifier.predict(["my invoice shows a double charge"])[0][0]["label"] == "billing"
    tagger = load_model(exported(base, "ner", tagger_checkpoint(base)))
    entities = tagger.predict(["ann lives in paris"], aggregation_strategy="first")[0]  # as it was trained
    assert [(e["entity_group"], e["word"]) for e in entities] == [("PER", "ann"), ("LOC", "paris")]
    ckpt = llama_checkpoint(base)
    generator = load_model(exported(base, "llama", ckpt))
    prompt = AutoTokenizer.from_pretrained(ckpt)("where is my parcel", return_tensors="np")["input_ids"]
    expected = greedy_tokens(AutoModelForCausalLM.from_pretrained(ckpt), prompt, 5)
    assert generator.generate(["where is my parcel"])[0]["token_ids"][:5] == expected


# ------------------------------------------------------------------------------------- validation failure


def test_disagreement_beyond_atol_fails_and_leaves_nothing(base, tmp_path, monkeypatch, capsys):
    from serve.runtime import TextClassifier

    real = TextClassifier.logits
    monkeypatch.setattr(TextClassifier, "logits", lambda self, texts: real(self, texts) + 0.01)
    out = tmp_path / "bundle"
    with pytest.raises(ValidationError, match=r"differ by 0.01\d* on output 'logits' > --atol 0.001"):
        export_onnx(classifier_checkpoint(base), out, atol=1e-3)
    assert not list(tmp_path.iterdir())

    code, _, err = run_export_cli(
        monkeypatch, capsys, classifier_checkpoint(base), "--onnx", "-o", out, "--atol", "1e-3"
    )
    assert_one_line_error(code, err, "differ by", "no bundle written", expected_code=1)
    assert not list(tmp_path.iterdir())


def test_nan_outputs_fail_any_tolerance(base, tmp_path, monkeypatch):
    from export.runners import OrtSession

    ckpt = tagger_checkpoint(base)
    real = OrtSession.logits
    monkeypatch.setattr(OrtSession, "logits", lambda self, feeds: real(self, feeds) * np.nan)
    with pytest.raises(ValidationError, match="differ by nan"):
        export_onnx(ckpt, tmp_path / "bundle", atol=1e9)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------- LoRA


def test_lora_adapter_is_merged_before_export(base, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from serve.runtime import TextClassifier

    ckpt = classifier_checkpoint(base)
    model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(ckpt),
        LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]),
    )
    torch.manual_seed(5)
    with torch.no_grad():  # a trained adapter: B is no longer zero, so the merge changes the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(ckpt).save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(ckpt)

    report = export_onnx(adapter, tmp_path / "bundle")
    assert report.manifest["lora"]["merged"] and report.manifest["lora"]["base"] == str(ckpt.resolve())
    assert (
        report.manifest["labels"] == CLS_LABELS and report.manifest["max_length"] == 48
    )  # the base's training

    texts = (DEMO / "predict.txt").read_text().splitlines()[:6]
    batch = AutoTokenizer.from_pretrained(ckpt)(
        texts, padding=True, truncation=True, max_length=48, return_tensors="pt"
    )
    with torch.no_grad():
        adapted = model.eval()(**batch).logits.numpy()
        plain = AutoModelForSequenceClassification.from_pretrained(ckpt)(**batch).logits.numpy()
    got = TextClassifier.from_bundle(tmp_path / "bundle").logits(texts)
    np.testing.assert_allclose(got, adapted, atol=1e-4)
    assert np.abs(got - plain).max() > 1e-2
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------- bad input


def _broken_copies(ckpt: Path, tmp_path: Path) -> dict[str, Path]:
    def copy(name):
        return Path(shutil.copytree(ckpt, tmp_path / name))

    no_config = copy("no-config")
    (no_config / "config.json").unlink()
    masked_lm = copy("masked-lm")
    config = json.loads((masked_lm / "config.json").read_text())
    (masked_lm / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    no_tokenizer = copy("no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    truncated = copy("truncated")
    weights = truncated / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    (tmp_path / "a-file").write_text("x")
    return {
        "no-config": no_config,
        "masked-lm": masked_lm,
        "no-tokenizer": no_tokenizer,
        "truncated": truncated,
        "file": tmp_path / "a-file",
    }


def test_bad_inputs_exit_2_with_one_line_and_leave_nothing(base, tmp_path, monkeypatch, capsys):
    import os

    from export.convert import cuda_available

    ckpt = classifier_checkpoint(base)
    bad = _broken_copies(ckpt, tmp_path)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    out = out_parent / "bundle"
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing; /proc/self takes no new entries
        unwritable = Path("/proc/self/bundle")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        unwritable = locked / "bundle"
    cases = [
        ((tmp_path / "nope", "--onnx", "-o", out), ["checkpoint directory not found"]),
        ((bad["file"], "--onnx", "-o", out), ["not a directory"]),
        ((bad["no-config"], "--onnx", "-o", out), ["no-config: not a checkpoint (no config.json)"]),
        (
            (bad["masked-lm"], "--onnx", "-o", out),
            ["masked-lm/config.json", "BertForMaskedLM", "not supported"],
        ),
        ((bad["no-tokenizer"], "--onnx", "-o", out), ["no-tokenizer: no tokenizer.json"]),
        ((bad["truncated"], "--onnx", "-o", out), ["truncated/model.safetensors: truncated or corrupt"]),
        ((ckpt, "--onnx", "-o", unwritable), ["--output", "not writable"]),
        ((ckpt, "--onnx", "-o", out, "--optimize", "O5"), ["--optimize 'O5'"]),
        ((ckpt, "--onnx", "-o", out, "--optimize", "O4", "--quantize", "int8"), ["O4"]),
        ((ckpt, "--onnx", "-o", out, "--quantize", "int4"), ["--quantize 'int4'"]),
        ((ckpt, "--onnx", "-o", out, "--task", "summarization"), ["--task 'summarization'"]),
        (
            (ckpt, "--onnx", "-o", out, "--eval-file", tmp_path / "missing.csv"),
            ["missing.csv: file not found"],
        ),
        (
            (ckpt, "--onnx", "-o", out, "--eval-file", DEMO / "eval.csv", "--label-column", "topic"),
            ["eval.csv: no column 'topic'"],
        ),
        ((ckpt, "--onnx", "-o", out, "--triton-repo", bad["file"]), ["--triton-repo", "not a directory"]),
        ((ckpt, "-o", out), ["--onnx"]),
    ]
    if not cuda_available():  # O4 is fp16 for CUDA only: refused on CPU before anything runs
        cases.append(((ckpt, "--onnx", "-o", out, "--optimize", "O4"), ["--optimize O4", "CUDA"]))
    for args, fragments in cases:
        code, _, err = run_export_cli(monkeypatch, capsys, *args)
        assert_one_line_error(code, err, *fragments)
        assert not out.exists() and not unwritable.exists()
        assert leftovers(out_parent) == [] and leftovers(tmp_path) == []


def test_truncated_weights_through_the_console_script(base, tmp_path):
    from conftest import assert_clean_error, run_cli

    truncated = _broken_copies(classifier_checkpoint(base), tmp_path)["truncated"]
    proc = run_cli("sft-export", str(truncated), "--onnx", "-o", str(tmp_path / "bundle"))
    assert_clean_error(proc, "model.safetensors: truncated or corrupt safetensors file")
    assert not (tmp_path / "bundle").exists() and leftovers(tmp_path) == []


def test_lora_adapter_whose_base_is_missing(base, tmp_path, monkeypatch, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "task_type": "SEQ_CLS", "base_model_name_or_path": "org/not-here"})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    code, _, err = run_export_cli(monkeypatch, capsys, adapter, "--onnx", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "base_model_name_or_path 'org/not-here' is not a local checkpoint")


def test_a_model_type_optimum_cannot_export_for_the_task(base, tmp_path, monkeypatch, capsys):
    ckpt = Path(shutil.copytree(llama_checkpoint(base), tmp_path / "llama"))
    code, _, err = run_export_cli(
        monkeypatch, capsys, ckpt, "--onnx", "-o", tmp_path / "b", "--task", "token-classification"
    )
    assert_one_line_error(code, err, "cannot export model_type 'llama' for token-classification")
    assert leftovers(tmp_path) == [] and not (tmp_path / "b").exists()
