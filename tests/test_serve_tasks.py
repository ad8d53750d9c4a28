"""Token classification and text generation through serve, against transformers on the same tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from serve_support import demo_texts

from serve import load_model, predict_file
from serve.generate import GenerationParams, TextGenerator
from serve.tokens import TokenClassifier

pytest_plugins = ["serve_fixtures"]  # cls_bundle, ner_bundle, gen_bundle and their checkpoints

NER_TEXTS = demo_texts()[:5] + ["Alice moved from Paris to Berlin, unbelievably quickly!"]
PROMPTS = ["my parcel is late", "refund please", "the app crashes when i open settings on my phone"]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_entities_match_the_transformers_pipeline(ner_bundle, ner_checkpoint, strategy):
    from transformers import pipeline

    tagger = load_model(ner_bundle)
    assert isinstance(tagger, TokenClassifier)
    reference = pipeline("token-classification", model=str(ner_checkpoint), aggregation_strategy=strategy)
    key = "entity" if strategy == "none" else "entity_group"
    found = 0
    for text, ours in zip(NER_TEXTS, tagger.predict(NER_TEXTS, aggregation_strategy=strategy), strict=False):
        theirs = reference(text)
        assert [(e[key], e["start"], e["end"]) for e in ours] == [
            (e[key], e["start"], e["end"]) for e in theirs
        ]
        assert [e["score"] for e in ours] == pytest.approx([float(e["score"]) for e in theirs], abs=1e-4)
        assert all(e["word"] == text[e["start"] : e["end"]] for e in ours)
        found += len(ours)
    assert found > len(NER_TEXTS)  # the comparison covered real spans, not empty lists


def _hf_greedy(checkpoint, ids: list[int], new_tokens: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=new_tokens,
        )
    return out[0, len(ids) :].tolist()


def test_greedy_generation_matches_transformers(gen_bundle, gen_checkpoint):
    generator = load_model(gen_bundle)
    assert isinstance(generator, TextGenerator)
    params = GenerationParams(max_new_tokens=12)
    batched = generator.generate(PROMPTS, params)  # left-padded together
    for prompt, together in zip(PROMPTS, batched, strict=False):
        ids = generator.encode([prompt])[0].ids
        expected = _hf_greedy(gen_checkpoint, ids, 12)
        alone = generator.generate([prompt], params)[0]
        assert alone["token_ids"] == expected
        assert together["token_ids"] == expected
        assert alone["generated_text"] == generator.encoder.decode(expected)
        assert alone["details"]["finish_reason"] == "length" and alone["details"]["generated_tokens"] == 12


def test_generation_with_io_binding_matches_plain_run(gen_bundle):
    bound = load_model(gen_bundle, io_binding=True).generate(PROMPTS, GenerationParams(max_new_tokens=6))
    plain = load_model(gen_bundle, io_binding=False).generate(PROMPTS, GenerationParams(max_new_tokens=6))
    assert [r["token_ids"] for r in bound] == [r["token_ids"] for r in plain]


def test_sampling_is_seeded_and_bounded(gen_bundle):
    generator = load_model(gen_bundle)
    greedy = generator.generate(PROMPTS, GenerationParams(max_new_tokens=8))
    sample = GenerationParams(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    first, again = generator.generate(PROMPTS, sample), generator.generate(PROMPTS, sample)
    assert [r["token_ids"] for r in first] == [r["token_ids"] for r in again]
    others = [
        generator.generate(
            PROMPTS, GenerationParams(max_new_tokens=8, do_sample=True, temperature=1.5, seed=s)
        )
        for s in range(3)
    ]
    assert len({tuple(r[0]["token_ids"]) for r in others + [first]}) > 1
    assert all(r["token_ids"] != g["token_ids"] for r, g in zip(first, greedy, strict=False))
    # top_p that keeps only the most likely token, or top_k=1, is greedy whatever the temperature
    narrow = generator.generate(
        PROMPTS, GenerationParams(max_new_tokens=8, top_p=1e-6, temperature=3.0, seed=1)
    )
    top1 = generator.generate(PROMPTS, GenerationParams(max_new_tokens=8, top_k=1, temperature=3.0, seed=1))
    ids = [[r["token_ids"] for r in out] for out in (narrow, greedy, top1)]
    assert ids[0] == ids[1] == ids[2]


def test_generation_stops_at_eos_stop_strings_and_the_cap(gen_bundle, tmp_path):
    generator = load_model(gen_bundle, max_new_tokens_cap=5)
    out = generator.generate(PROMPTS[:1], GenerationParams(max_new_tokens=50))[0]
    assert out["details"]["generated_tokens"] == 5 and out["details"]["finish_reason"] == "length"

    free = load_model(gen_bundle).generate(PROMPTS[:1], GenerationParams(max_new_tokens=10))[0]
    word = free["generated_text"].split()[2]
    stopped = generator.generate(PROMPTS[:1], GenerationParams(max_new_tokens=10, stop=[word]))[0]
    assert stopped["details"]["finish_reason"] == "stop_sequence" and word in stopped["generated_text"]
    assert stopped["token_ids"] == free["token_ids"][: len(stopped["token_ids"])]

    # make the first greedy token the EOS token: generation ends right there
    manifest = json.loads((gen_bundle / "manifest.json").read_text())
    manifest["generation"]["eos_token_id"] = free["token_ids"][0]
    import shutil

    shutil.copytree(gen_bundle, tmp_path / "eos")
    (tmp_path / "eos" / "manifest.json").write_text(json.dumps(manifest))
    ended = load_model(tmp_path / "eos").generate(PROMPTS[:1], GenerationParams(max_new_tokens=10))[0]
    assert ended["token_ids"] == free["token_ids"][:1] and ended["details"]["finish_reason"] == "eos_token"


def test_generation_logprobs_are_log_probabilities(gen_bundle):
    details = load_model(gen_bundle).generate(PROMPTS[:1], GenerationParams(max_new_tokens=4))[0]["details"]
    logprobs = np.array([t["logprob"] for t in details["tokens"]])
    assert np.all(logprobs < 0) and np.all(logprobs > -50)


def test_predict_file_for_other_tasks(ner_bundle, gen_bundle, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(NER_TEXTS) + "\n")
    predict_file(load_model(ner_bundle), src, tmp_path / "ner.jsonl", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "ner.jsonl").read_text().splitlines()]
    expected = load_model(ner_bundle).predict(NER_TEXTS)
    assert [r["entities"] for r in rows] == json.loads(json.dumps(expected))

    proc = run_cli(
        "sft-predict",
        str(gen_bundle),
        "-i",
        str(src),
        "-o",
        str(tmp_path / "gen.jsonl"),
        "--max-new-tokens",
        "4",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    generated = load_model(gen_bundle).generate(NER_TEXTS, GenerationParams(max_new_tokens=4))
    assert [r["generated_text"] for r in rows] == [g["generated_text"] for g in generated]
