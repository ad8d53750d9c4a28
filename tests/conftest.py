"""Shared fixtures: tiny random-weight models built in code (no downloads) and their artifacts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
SHARED_DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def write_tiny_bert(directory: Path, *, hidden: int = 32, layers: int = 2, heads: int = 2) -> Path:
    """A random-weight BERT sequence classifier with a WordPiece vocabulary made from the demo texts."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = set()
    for line in (DEMO / "train.csv").read_text(encoding="utf-8").lower().splitlines():
        words.update(re.findall(r"[a-z]+", line))
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = list(
        dict.fromkeys(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            + list(chars)
            + [f"##{c}" for c in chars]
            + list(".,!?'\"-:;#@()")
            + sorted(words)
        )
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(
        vocab_file=str(directory / "vocab.txt"), do_lower_case=True, model_max_length=128
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model")


def tiny_bert_for_qa(vocab_size: int):
    """A random 2-layer BertForQuestionAnswering (hidden 32, seed 0) in eval mode."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertForQuestionAnswering(config).eval()


def demo_config(model: Path, out: Path, **overrides):
    """sft-train's config on the demo data (train.csv, eval.csv), max_length 48, no progress bar, with
    `overrides` on top."""
    from sft import load_config

    base = {
        "train": str(DEMO / "train.csv"),
        "eval": str(DEMO / "eval.csv"),
        "model": str(model),
        "output": str(out),
        "max_length": 48,
        "progress": False,
    }
    return load_config(overrides={**base, **overrides})


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT fine-tuned a few steps on the demo data by sft.recipe."""
    from sft import train

    out = tmp_path_factory.mktemp("tiny-ckpt") / "ckpt"
    train(demo_config(tiny_bert, out, max_steps=12, batch_size=16, lr=1e-3))
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from export import export_onnx

    out = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
    export_onnx(tiny_checkpoint, out, atol=1e-4)
    return out


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the console scripts as a user would, capturing output."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    """A user error: the given exit code, one line on stderr naming what is wrong, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def save_tiny_llama(directory: Path, *, vocab_size: int, bos: int, eos: int, pad: int, seed: int, **extra):
    """A random 2-layer Llama (hidden 32, 4 query heads, 2 KV heads) saved to `directory`; `extra` goes to
    LlamaConfig."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        **extra,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)


def write_tiny_llama(directory: Path, *, texts: list[str] | None = None) -> Path:
    """A random-weight Llama (GQA: 4 query heads, 2 KV heads) with a byte-level BPE trained in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = texts or (DEMO / "train.csv").read_text(encoding="utf-8").splitlines()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus + ["### Instruction:", "### Input:", "### Response:"], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|eos|>", pad_token="<|pad|>", bos_token="<|bos|>"
    )
    directory.mkdir(parents=True, exist_ok=True)
    save_tiny_llama(
        directory,
        vocab_size=len(tokenizer),
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        seed=0,
        tie_word_embeddings=False,
    )
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


def interpreter_ready() -> bool:
    """True when the Triton kernels can run on CPU here (the attention tests' skip condition).

    ``triton.jit`` picks interpreter vs compiler when a function is decorated, so triton itself (and our
    kernel modules) must have been imported with TRITON_INTERPRET=1 set. If another module imported our kernel
    modules earlier without it, re-import them; return False if triton's own library functions are
    compiled-mode (run pytest with TRITON_INTERPRET=1 in the environment).
    """
    import importlib

    from kernels._backend import triton_available

    if not triton_available() or os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.cdiv, InterpretedFunction):
        return False
    from kernels import attention_bwd, attention_fwd

    if not isinstance(attention_fwd._attn_fwd_kernel, InterpretedFunction):
        importlib.reload(attention_fwd)
        importlib.reload(attention_bwd)
    return True
