"""Helpers of the serve tests: tiny random-weight bundles, one per task, built in code without the
exporter, and a running daemon.

Each builder makes a checkpoint with transformers, exports it with Optimum's `main_export`, and writes
the manifest the way the bundle contract describes it; built once per test session (cached by path).
The fixtures wrapping them are in serve_fixtures.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

from conftest import BIN, DEMO, save_tiny_llama, write_tiny_bert

CLS_LABELS = ["billing", "shipping", "technical"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_bundle(checkpoint: Path, out: Path, task: str, max_length: int, **manifest) -> Path:
    from optimum.exporters.onnx import main_export

    if (out / "manifest.json").is_file():
        return out
    work = out.with_name(out.name + "-optimum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(
            str(checkpoint),
            output=work,
            task=task,
            local_files_only=True,
            do_validation=False,
            library_name="transformers",
        )
    out.mkdir(parents=True)
    for name in ("model.onnx", "config.json"):
        shutil.copy2(work / name, out / name)
    shutil.copy2(checkpoint / "tokenizer.json", out / "tokenizer.json")
    shutil.rmtree(work)
    import onnx

    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    record = {
        "format": 1,
        "task": task,
        "max_length": max_length,
        "pad_token": "[PAD]",
        "inputs": [i.name for i in graph.input],
        "outputs": [o.name for o in graph.output],
        **manifest,
        "sha256": {n: _sha(out / n) for n in ("model.onnx", "tokenizer.json", "config.json")},
    }
    (out / "manifest.json").write_text(json.dumps(record, indent=2))
    return out


@functools.cache
def classifier_checkpoint(base: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    if (base / "cls-ckpt" / "model.safetensors").is_file():
        return base / "cls-ckpt"
    d = write_tiny_bert(base / "cls-ckpt")
    config = BertConfig.from_pretrained(d)
    config.id2label = dict(enumerate(CLS_LABELS))
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(d)
    return d


@functools.cache
def classifier_bundle(base: Path) -> Path:
    return export_bundle(
        classifier_checkpoint(base),
        base / "cls-bundle",
        "text-classification",
        32,
        labels=CLS_LABELS,
        problem_type="single_label_classification",
    )


@functools.cache
def token_checkpoint(base: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForTokenClassification

    d = classifier_checkpoint(base)
    out = base / "ner-ckpt"
    if (out / "config.json").is_file():
        return out
    shutil.copytree(d, out, dirs_exist_ok=True)
    config = BertConfig.from_pretrained(out)
    config.id2label = dict(enumerate(NER_LABELS))
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.architectures = ["BertForTokenClassification"]
    torch.manual_seed(2)
    model = BertForTokenClassification(config)
    with torch.no_grad():  # louder entity logits, so the random model predicts varied spans
        model.classifier.weight.mul_(8)
    model.save_pretrained(out)
    return out


@functools.cache
def token_bundle(base: Path) -> Path:
    return export_bundle(
        token_checkpoint(base), base / "ner-bundle", "token-classification", 64, labels=NER_LABELS
    )


@functools.cache
def llama_checkpoint(base: Path) -> Path:
    """A tiny Llama on the WordPiece vocabulary; prompts get [CLS] as BOS and no [SEP]."""
    vocab_dir = classifier_checkpoint(base)
    out = base / "llama-ckpt"
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(exist_ok=True)
    return write_wordpiece_llama(vocab_dir, out)


def write_wordpiece_llama(vocab_dir: Path, out: Path, *, chat_template: str | None = None) -> Path:
    """A tiny random Llama (seed 3) on `vocab_dir`'s WordPiece vocabulary: [CLS] as BOS (prompts get no
    [SEP]), [SEP] as EOS."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(vocab_dir / "tokenizer.json"))
    bos, eos, pad = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("[PAD]")
    tok.post_processor = TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", bos)])
    tok.no_padding()
    tok.no_truncation()
    template = {"chat_template": chat_template} if chat_template is not None else {}
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[CLS]",
        eos_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        **template,
    ).save_pretrained(out)
    save_tiny_llama(out, vocab_size=tok.get_vocab_size(), bos=bos, eos=eos, pad=pad, seed=3)
    return out


@functools.cache
def llama_bundle(base: Path) -> Path:
    ckpt = llama_checkpoint(base)
    config = json.loads((ckpt / "config.json").read_text())
    generation = {
        "eos_token_id": config["eos_token_id"],
        "bos_token_id": config["bos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "num_layers": config["num_hidden_layers"],
        "num_key_value_heads": config["num_key_value_heads"],
        "head_dim": config["hidden_size"] // config["num_attention_heads"],
        "chat_template": None,
    }
    return export_bundle(ckpt, base / "llama-bundle", "text-generation-with-past", 64, generation=generation)


class Daemon:
    """A running sft-serve process on a free loopback port."""

    def __init__(self, bundle: Path, *args: str, env: dict | None = None):
        import os

        self.proc = subprocess.Popen(
            [str(BIN / "sft-serve"), str(bundle), "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.log = []
        for line in self.proc.stderr:
            self.log.append(line)
            match = re.search(r"listening on (https?)://127\.0\.0\.1:(\d+)", line)
            if match:
                self.url = f"{match.group(1)}://127.0.0.1:{match.group(2)}"
                self.port = int(match.group(2))
                break
        else:
            raise AssertionError("sft-serve did not start:\n" + "".join(self.log))
        import threading

        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


def demo_texts() -> list[str]:
    return [line for line in (DEMO / "predict.txt").read_text().splitlines() if line.strip()]
