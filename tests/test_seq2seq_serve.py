"""serve.seq2seq: numpy greedy / beam / sampling over exported T5, BART and Marian bundles, token for token
equal to transformers' model.generate (with the generation-config rules it applies), without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_seq2seq import copy_pairs, make_model, make_tokenizer

from serve.seq2seq import Seq2SeqGenerator, Seq2SeqParams

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("t5", "bart", "marian")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Random models with large weights (so greedy and beam outputs vary and stop at different lengths),
    saved and exported once."""
    from export.onnx import export_onnx

    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(kind)
        tokenizer, model = make_tokenizer(), make_model(kind, len(make_tokenizer()))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.5)
        model.save_pretrained(root / "model")
        tokenizer.save_pretrained(root / "model")
        export_onnx(root / "model", root / "bundle", atol=1e-3)  # activations in the tens: rel. diff ~1e-5
        out[kind] = (root / "model", root / "bundle")
    return out


def _hf_tokens(row: list[int], eos: int) -> list[int]:
    """model.generate's row without the decoder start, cut after EOS (what follows is fill)."""
    row = row[1:]
    return row[: row.index(eos) + 1] if eos in row else row


def _compare(model_dir, generator, texts, **kwargs):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    want = model.generate(**batch, **kwargs).tolist()
    params = Seq2SeqParams(
        max_new_tokens=kwargs["max_new_tokens"],
        num_beams=kwargs.get("num_beams", 1),
        length_penalty=kwargs.get("length_penalty"),
        early_stopping=kwargs.get("early_stopping"),
    )
    got = generator.generate(texts, params)
    eos = model.generation_config.eos_token_id
    assert [g["token_ids"] for g in got] == [_hf_tokens(w, eos) for w in want]
    assert [g["generated_text"] for g in got] == [
        tokenizer.decode(_hf_tokens(w, eos), skip_special_tokens=True).strip() for w in want
    ]
    return got


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beams", [1, 3, 4])
def test_greedy_and_beam_equal_model_generate(bundles, kind, beams):
    model_dir, bundle = bundles[kind]
    texts = [s for s, _ in copy_pairs(7, 3)]
    got = _compare(model_dir, Seq2SeqGenerator(bundle), texts, max_new_tokens=9, num_beams=beams)
    assert {g["finish_reason"] for g in got} <= {"eos_token", "length"}


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_generation_config_rules_match_too(bundles, kind, tmp_path):
    """no_repeat_ngram_size, min_length, length_penalty and early_stopping as transformers applies them."""
    model_dir, bundle = bundles[kind]
    rules = {"no_repeat_ngram_size": 2, "min_length": 5}
    for d in (tmp_path / "model", tmp_path / "bundle"):
        shutil.copytree(model_dir if d.name == "model" else bundle, d)
        config = json.loads((d / "generation_config.json").read_text())
        (d / "generation_config.json").write_text(json.dumps({**config, **rules}))
    generator = Seq2SeqGenerator(tmp_path / "bundle", verify=False)
    texts = [s for s, _ in copy_pairs(6, 4)]
    for extra in ({"num_beams": 1}, {"num_beams": 3, "length_penalty": 2.0, "early_stopping": True}):
        got = _compare(tmp_path / "model", generator, texts, max_new_tokens=8, **extra)
        assert all(len(g["token_ids"]) >= 4 for g in got)


def test_sampling_is_seeded_and_pipeline_shapes(bundles):
    generator = Seq2SeqGenerator(bundles["t5"][1])
    texts = ["the dog runs", "a cat sits on the ball"]
    params = Seq2SeqParams(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=10, seed=7)
    first, again = generator.generate(texts, params), generator.generate(texts, params)
    assert first == again
    vocab = generator.tokenizer.get_vocab_size()
    assert all(0 <= t < vocab for r in first for t in r["token_ids"])
    other = generator.generate(
        texts, Seq2SeqParams(max_new_tokens=6, do_sample=True, temperature=1.5, seed=8)
    )
    greedy = generator.generate(texts, Seq2SeqParams(max_new_tokens=6))
    assert first != greedy or other != greedy  # sampling at temperature 1.5 departs from greedy
    assert generator.pipeline_outputs(texts, "translation_text", Seq2SeqParams(max_new_tokens=6)) == [
        {"translation_text": r["generated_text"]} for r in greedy
    ]


def test_a_modified_bundle_is_refused(bundles, tmp_path):
    from serve.errors import ServeError

    shutil.copytree(bundles["t5"][1], tmp_path / "b")
    with (tmp_path / "b" / "decoder_model.onnx").open("ab") as f:
        f.write(b"x")
    with pytest.raises(ServeError, match="sha256"):
        Seq2SeqGenerator(tmp_path / "b")


def test_serve_seq2seq_imports_no_torch():
    code = (
        "import sys, serve.seq2seq; "
        "print(sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_train_export_serve_with_a_source_prefix(tmp_path):
    """sft-train (T5, --source-prefix) -> sft-export -> serve: the bundle carries the prefix and generates
    what the trained PyTorch model generates for prefix + text, one output line per input line."""
    from test_seq2seq import write_jsonl, write_model
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from export.onnx import export_onnx
    from serve.seq2seq import generate_lines
    from sft import load_config, train

    prefix = "translate: "
    cfg = load_config(
        overrides={
            "task": "seq2seq",
            "train": str(write_jsonl(tmp_path / "train.jsonl", copy_pairs(32, 1))),
            "model": str(write_model(tmp_path / "model", "t5")),
            "output": str(tmp_path / "out"),
            "source_prefix": prefix,
            "max_steps": 6,
            "batch_size": 16,
            "lr": 1e-2,
            "kernels": "torch",
            "progress": False,
            "tensorboard": False,
            "plots": False,
        }
    )
    train(cfg)
    export_onnx(tmp_path / "out", tmp_path / "bundle")
    generator = Seq2SeqGenerator(tmp_path / "bundle")
    assert generator.prefix == prefix
    assert generator.manifest["inference_api_key"] == "translation_text"  # a "translate" prefix
    lines = [s for s, _ in copy_pairs(5, 9)]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    batch = tokenizer([prefix + s for s in lines], return_tensors="pt", padding=True)
    want = tokenizer.batch_decode(model.generate(**batch, max_new_tokens=6), skip_special_tokens=True)
    got = list(generate_lines(generator, lines, Seq2SeqParams(max_new_tokens=6), batch_size=2))
    assert got == [w.strip() for w in want]


def test_sft_predict_and_the_daemon_equal_model_generate(bundles, tmp_path):
    """sft-predict (greedy and --num-beams 3) on a text file, and sft-serve's POST /generate and POST /,
    give model.generate's texts on the T5 bundle."""
    import httpx
    from conftest import run_cli
    from serve_support import Daemon
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model_dir, bundle = bundles["t5"]
    texts = [s for s, _ in copy_pairs(7, 3)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    eos = model.generation_config.eos_token_id

    def want(**kwargs) -> list[str]:
        rows = model.generate(**batch, max_new_tokens=9, **kwargs).tolist()
        return [tokenizer.decode(_hf_tokens(r, eos), skip_special_tokens=True).strip() for r in rows]

    greedy, beams = want(num_beams=1), want(num_beams=3)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    for flags, expected in (([], greedy), (["--num-beams", "3"], beams)):
        out = tmp_path / f"out{len(flags)}.jsonl"
        proc = run_cli(
            "sft-predict",
            str(bundle),
            "-i",
            str(tmp_path / "in.txt"),
            "-o",
            str(out),
            "--max-new-tokens",
            "9",
            *flags,
        )
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["index"] for r in rows] == list(range(len(texts)))
        assert [r["generated_text"] for r in rows] == expected

    key = json.loads((bundle / "manifest.json").read_text()).get("inference_api_key") or "generated_text"
    daemon = Daemon(bundle)
    try:
        r = httpx.post(daemon.url + "/generate", json={"inputs": texts, "parameters": {"max_new_tokens": 9}})
        assert r.status_code == 200, r.text
        assert [x["generated_text"] for x in r.json()] == greedy
        r = httpx.post(
            daemon.url + "/generate",
            json={"inputs": texts[0], "parameters": {"max_new_tokens": 9, "num_beams": 3}},
        )
        assert r.status_code == 200 and r.json() == {"generated_text": beams[0]}, r.text
        r = httpx.post(daemon.url + "/", json={"inputs": texts[1], "parameters": {"max_new_tokens": 9}})
        assert r.status_code == 200 and r.json() == [{key: greedy[1]}], r.text
        r = httpx.post(daemon.url + "/generate", json={"inputs": "x", "parameters": {"num_beams": 0}})
        assert r.status_code == 422 and set(r.json()) == {"error", "error_type"}
    finally:
        daemon.stop()
