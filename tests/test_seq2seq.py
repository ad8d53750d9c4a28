"""sft.seq2seq: reading pairs (columns, parallel files), labels, the fused loss against the model's own loss,
metrics through sacreBLEU / rouge-score, and a few training steps of tiny random T5 and BART."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sft.errors import InputError
from sft.seq2seq import Seq2Seq, encode_pairs, read_pairs, seq2seq_loss, text_metrics

WORDS = "a the man woman dog cat runs sits on in red blue green house street ball".split()
GERMAN = "ein der mann frau hund katze läuft sitzt auf in rot blau grün haus straße ball".split()
SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]  # pad 0, eos 1, unk 2, bos 3


def make_tokenizer():
    """A word-level tokenizer that appends </s> (T5 style), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(WORDS + GERMAN + ["translate:", "."])))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        model_input_names=["input_ids", "attention_mask"],
    )


def make_model(kind: str, vocab_size: int, seed: int = 0):
    """Tiny random T5 / BART / Marian built in code."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        MarianConfig,
        MarianMTModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(seed)
    if kind == "t5":
        cfg = T5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
        return T5ForConditionalGeneration(cfg)
    common = {
        "vocab_size": vocab_size,
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 3,
    }
    if kind == "bart":
        model = BartForConditionalGeneration(
            BartConfig(**common, decoder_start_token_id=1, forced_eos_token_id=1)
        )
    else:
        model = MarianMTModel(MarianConfig(**common, decoder_start_token_id=0))
    with torch.no_grad():  # a non-zero final_logits_bias, so the loss test sees it
        model.final_logits_bias.normal_(0, 0.5)
    return model


def write_model(directory: Path, kind: str) -> Path:
    tokenizer = make_tokenizer()
    model = make_model(kind, len(tokenizer))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def copy_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """A word-for-word 'translation' a tiny model learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    table = dict(zip(WORDS, GERMAN, strict=True))
    out = []
    for _ in range(n):
        idx = torch.randint(len(WORDS), (int(torch.randint(2, 5, (1,), generator=g)),), generator=g)
        src = [WORDS[i] for i in idx]
        out.append((" ".join(src), " ".join(table[w] for w in src)))
    return out


def write_jsonl(path: Path, pairs) -> Path:
    path.write_text(
        "".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs), encoding="utf-8"
    )
    return path


# -- reading -----------------------------------------------------------------------------------------------


def test_parallel_files_pair_line_by_line(tmp_path):
    (tmp_path / "a.en").write_text("the dog\na cat\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("der hund\neine katze\n", encoding="utf-8")
    pairs = read_pairs(f"{tmp_path}/a.en:{tmp_path}/a.de", source_column="source", target_column="target")
    assert [(p.source, p.target) for p in pairs] == [("the dog", "der hund"), ("a cat", "eine katze")]
    assert pairs[1].where.endswith("a.de:2")


def test_columns_of_a_csv(tmp_path):
    (tmp_path / "d.csv").write_text("en,de\nthe dog,der hund\n", encoding="utf-8")
    pairs = read_pairs(str(tmp_path / "d.csv"), source_column="en", target_column="de")
    assert [(p.source, p.target) for p in pairs] == [("the dog", "der hund")]


@pytest.mark.parametrize(
    ("files", "columns", "message"),
    [
        ({"d.csv": "en,de\nx,y\n"}, ("en", "fr"), "no column 'fr' for --target-column"),
        ({"d.csv": "en,de\nx,\n"}, ("en", "de"), "line 2: empty target text"),
        ({"a.en": "x\ny\n", "a.de": "x\n"}, None, "2 lines but"),
        ({"a.en": "x\ny\n", "a.de": "x\n\n"}, None, "a.de:2: empty target text"),
        ({"a.en": "x\n"}, None, "a.de: file not found"),
    ],
)
def test_bad_inputs_say_what_is_wrong(tmp_path, files, columns, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    spec = str(tmp_path / "d.csv") if columns else f"{tmp_path}/a.en:{tmp_path}/a.de"
    source, target = columns or ("source", "target")
    with pytest.raises(InputError, match=message):
        read_pairs(spec, source_column=source, target_column=target)


def test_bad_parallel_files_exit_2_with_one_line(tmp_path):
    from conftest import assert_clean_error, run_cli

    (tmp_path / "a.en").write_text("x\ny\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("x\n", encoding="utf-8")
    proc = run_cli("sft-train", "--task", "seq2seq", "--train", f"{tmp_path}/a.en:{tmp_path}/a.de")
    assert_clean_error(proc, "2 lines but")


# -- encoding and loss -------------------------------------------------------------------------------------


def test_labels_end_with_eos_and_padding_is_ignored():
    tokenizer = make_tokenizer()
    task = Seq2Seq(SimpleNamespace(source_prefix="translate:", max_length=16))
    pairs = read_pairs.__globals__["Pair"]
    rows = encode_pairs(
        tokenizer,
        [pairs("the dog", "der hund", "1"), pairs("a cat runs", "ein", "2")],
        prefix="translate: ",
        max_length=16,
    )
    assert tokenizer.convert_ids_to_tokens(rows[0]["input_ids"]) == ["translate:", "the", "dog", "</s>"]
    batch = task.collate(rows, 0, "cpu")
    assert batch["labels"].tolist()[1] == [tokenizer.convert_tokens_to_ids("ein"), 1, -100]
    assert batch["attention_mask"].tolist()[0] == [1, 1, 1, 1, 0]


@pytest.mark.parametrize("kind", ["t5", "bart", "marian"])
@pytest.mark.parametrize("tied", [True, False])
def test_fused_loss_equals_the_models_own_loss(kind, tied):
    tokenizer = make_tokenizer()
    model = make_model(kind, len(tokenizer))
    if not tied:  # an untied head: T5 then skips the d_model**-0.5 scaling
        model.config.tie_word_embeddings = False
        model.get_output_embeddings().weight = torch.nn.Parameter(
            model.get_output_embeddings().weight.clone()
        )
    model.eval()
    pair = read_pairs.__globals__["Pair"]
    rows = encode_pairs(tokenizer, [pair(s, t, "") for s, t in copy_pairs(3, 0)], prefix="", max_length=16)
    batch = Seq2Seq(SimpleNamespace()).collate(rows, 0, "cpu")
    ours = seq2seq_loss(model, batch, backend="torch")
    theirs = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours.backward()
    assert model.get_encoder().embed_tokens.weight.grad.abs().sum() > 0


def test_text_metrics_come_from_sacrebleu_and_rouge_score():
    perfect = text_metrics(["der hund läuft auf der straße"], ["der hund läuft auf der straße"])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert perfect["rouge1"] == pytest.approx(100.0) and perfect["rougeL"] == pytest.approx(100.0)
    half = text_metrics(["der hund"], ["der katze"])
    assert half["rouge1"] == pytest.approx(50.0) and half["rouge2"] == 0.0
    assert half["bleu"] < 50


# -- training ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_a_few_steps_of_sft_train_reduce_the_loss(kind, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from sft import load_config, train

    model_dir = write_model(tmp_path / "model", kind)
    train_file = write_jsonl(tmp_path / "train.jsonl", copy_pairs(64, 1))
    eval_pairs = copy_pairs(16, 2)
    (tmp_path / "e.en").write_text("".join(s + "\n" for s, _ in eval_pairs), encoding="utf-8")
    (tmp_path / "e.de").write_text("".join(t + "\n" for _, t in eval_pairs), encoding="utf-8")
    cfg = load_config(
        overrides={
            "task": "seq2seq",
            "train": str(train_file),
            "eval": f"{tmp_path}/e.en:{tmp_path}/e.de",
            "model": str(model_dir),
            "output": str(tmp_path / "out"),
            "max_steps": 24,
            "batch_size": 16,
            "lr": 3e-3,
            "warmup_ratio": 0.0,
            "schedule": "constant",
            "eval_every": 12,
            "generation_max_length": 8,
            "kernels": "torch",
            "log_every": 1,
            "progress": False,
            "tensorboard": False,
            "plots": False,
        }
    )
    result = train(cfg)
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    evals = [r["loss"] for r in log if r["event"] == "eval"]
    assert len(evals) == 2 and evals[1] < evals[0], evals
    for name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "loss"):
        assert name in result.metrics
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").config.model_type == kind
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text2text-generation" in card and "bleu" in card


@pytest.mark.parametrize(
    "strategy", [{"lora_r": 4}, {"freeze": "bottom:1"}, {"layer_lr_decay": 0.8, "label_smoothing": 0.1}]
)
def test_strategies_apply_to_t5(strategy, tmp_path):
    from sft import load_config, train

    model_dir = write_model(tmp_path / "model", "t5")
    cfg = load_config(
        overrides={
            "task": "seq2seq",
            "train": str(write_jsonl(tmp_path / "train.jsonl", copy_pairs(16, 1))),
            "eval": str(write_jsonl(tmp_path / "eval.jsonl", copy_pairs(4, 2))),
            "model": str(model_dir),
            "output": str(tmp_path / "out"),
            "max_steps": 2,
            "batch_size": 8,
            "generation_max_length": 4,
            "num_beams": 2,
            "kernels": "torch",
            "progress": False,
            "tensorboard": False,
            "plots": False,
            **strategy,
        }
    )
    result = train(cfg)
    assert result.metrics["tokens"] > 0 and 0 <= result.metrics["bleu"] <= 100


# -- export ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["t5", "bart", "marian"])
def test_export_validates_and_loads_in_optimum(kind, tmp_path):
    """The three graphs match PyTorch, and ORTModelForSeq2SeqLM generates what the PyTorch model does."""
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from export.onnx import export_onnx

    model_dir = write_model(tmp_path / "model", kind)
    report = export_onnx(model_dir, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["task"] == "text2text-generation-with-past"
    assert report.max_abs_diff < 1e-4
    assert {"encoder.last_hidden_state", "decoder.logits", "decoder_with_past.logits"} <= set(
        manifest["validation"]["outputs"]
    )
    assert manifest["generation"]["num_layers"] == 2 and manifest["generation"]["head_dim"] == 8
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer([s for s, _ in copy_pairs(4, 3)], return_tensors="pt", padding=True)
    torch_model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    ort_model = ORTModelForSeq2SeqLM.from_pretrained(tmp_path / "bundle", use_cache=True)
    for beams in (1, 3):
        want = torch_model.generate(**batch, max_length=10, num_beams=beams)
        got = ort_model.generate(**batch, max_length=10, num_beams=beams)
        assert got.tolist() == want.tolist()


def test_sft_export_cli_writes_a_seq2seq_bundle(tmp_path):
    from conftest import assert_clean_error, run_cli

    model_dir = write_model(tmp_path / "model", "t5")
    proc = run_cli("sft-export", str(model_dir), "--onnx", "--output", str(tmp_path / "bundle"), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "text2text-generation-with-past" in proc.stdout and "decoder_with_past.logits" in proc.stdout
    bad = run_cli(
        "sft-export", str(model_dir), "--onnx", "--output", str(tmp_path / "b2"), "--quantize", "int8"
    )
    assert_clean_error(bad, "--quantize is not supported for text2text-generation-with-past")
    assert not (tmp_path / "b2").exists()
