"""Token classification and causal-LM SFT through the training loop, on tiny random models."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import SHARED_DATA

from sft import load_config, train

PEOPLE, PLACES, ORGS = ["John Smith", "Maria", "Chen Wei"], ["Paris", "New York", "Kenya"], ["Reuters", "UN"]


def _conll(path, n, seed):
    """IOB1 file: entities start with I- unless they follow one of the same type (as in CoNLL-2003)."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        who, where, org = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(ORGS)
        words = (
            [(w, "I-PER") for w in who.split()]
            + [("visited", "O")]
            + [(w, "I-LOC") for w in where.split()]
            + [("for", "O")]
            + [(w, "I-ORG") for w in org.split()]
            + [(".", "O")]
        )
        lines += [f"{w} X X {t}" for w, t in words] + [""]
    path.write_text("\n".join(lines))
    return path


def test_token_classification_learns_entities(tiny_bert, tmp_path):
    cfg = load_config(
        overrides={
            "task": "token-classification",
            "train": str(_conll(tmp_path / "t.txt", 60, 0)),
            "eval": str(_conll(tmp_path / "e.txt", 20, 1)),
            "model": str(tiny_bert),
            "output": str(tmp_path / "ner"),
            "epochs": 6,
            "batch_size": 8,
            "lr": 5e-3,
            "progress": False,
            "tensorboard": False,
        }
    )
    r = train(cfg)
    config = json.loads((tmp_path / "ner" / "config.json").read_text())
    assert config["id2label"]["0"] == "O" and "B-PER" in config["label2id"] and "I-LOC" in config["label2id"]
    assert set(r.metrics["per_type"]) == {"PER", "LOC", "ORG"}
    assert r.metrics["f1"] > 0.5, r.metrics  # entity-level F1; the pattern is simple and fully regular


def _alpaca(path, n, seed):
    rng = random.Random(seed)
    records = [
        {"instruction": f"Say the color of the {t}.", "input": "" if i % 2 else "Be brief.", "output": c}
        for i in range(n)
        for t, c in [rng.choice([("sky", "Blue."), ("grass", "Green."), ("snow", "White.")])]
    ]
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("packing", [False, True])
def test_causal_sft_loss_falls(tiny_llama, tmp_path, packing):
    cfg = load_config(
        overrides={
            "task": "causal-lm",
            "train": str(_alpaca(tmp_path / "a.json", 48, 0)),
            "eval": str(_alpaca(tmp_path / "b.json", 12, 1)),
            "model": str(tiny_llama),
            "output": str(tmp_path / "lm"),
            "epochs": 8,
            "batch_size": 8,
            "lr": 3e-3,
            "max_length": 64,
            "packing": packing,
            "progress": False,
            "tensorboard": False,
            "log_every": 1,
        }
    )
    r = train(cfg)
    log = [json.loads(x) for x in (tmp_path / "lm" / "train_log.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in log if x["event"] == "train"]
    evals = [x for x in log if x["event"] == "eval"]
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    assert evals[-1]["perplexity"] < evals[0]["perplexity"]
    assert r.metrics["perplexity"] == pytest.approx(torch.tensor(r.metrics["loss"]).exp().item(), rel=1e-5)


def test_packed_rows_do_not_attend_across_sequences(tiny_llama):
    """The CPU fallback for packing (a block-diagonal causal 4-D mask) gives each packed sequence exactly
    the logits it has alone."""
    from transformers import AutoModelForCausalLM

    from sft.config import TrainConfig
    from sft.tasks import CausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    torch.manual_seed(0)
    a, b = torch.randint(5, 300, (7,)), torch.randint(5, 300, (5,))
    alone = [model(input_ids=x[None]).logits[0] for x in (a, b)]
    packed = {
        "input_ids": torch.cat([a, b, torch.zeros(2, dtype=torch.long)])[None],
        "attention_mask": torch.tensor([[1] * 12 + [0, 0]]),
        "position_ids": torch.tensor([list(range(7)) + list(range(5)) + [5, 6]]),
    }
    task = CausalLM(TrainConfig(train="x", task="causal-lm", packing=True))
    logits = model(
        input_ids=packed["input_ids"],
        position_ids=packed["position_ids"],
        attention_mask=task.attention_mask(packed),
    ).logits[0]
    torch.testing.assert_close(logits[:7], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[7:12], alone[1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    not (SHARED_DATA / "alpaca" / "alpaca_data.json").exists(), reason="../shared/data absent"
)
def test_alpaca_records_train_a_tiny_llama(tiny_llama, tmp_path):
    """2,000 real Alpaca records (prompt masked, packed) for a few steps: the loss falls."""
    records = json.loads((SHARED_DATA / "alpaca" / "alpaca_data.json").read_text())[:2000]
    data = tmp_path / "alpaca2k.json"
    data.write_text(json.dumps(records))
    r = train(
        load_config(
            overrides={
                "task": "causal-lm",
                "train": str(data),
                "model": str(tiny_llama),
                "output": str(tmp_path / "lm"),
                "max_steps": 30,
                "batch_size": 8,
                "lr": 3e-3,
                "max_length": 128,
                "packing": True,
                "progress": False,
                "tensorboard": False,
                "log_every": 1,
            }
        )
    )
    losses = [
        json.loads(x)["loss"]
        for x in (r.output_dir / "train_log.jsonl").read_text().splitlines()
        if json.loads(x)["event"] == "train"
    ]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, (losses[:5], losses[-5:])


def test_decoder_joint_loss_adds_the_prompt_lm_term(tiny_llama, tmp_path):
    data = _alpaca(tmp_path / "a.json", 8, 0)

    def first_loss(weight):
        r = train(
            load_config(
                overrides={
                    "task": "causal-lm",
                    "train": str(data),
                    "model": str(tiny_llama),
                    "output": str(tmp_path / f"u{weight}"),
                    "max_steps": 1,
                    "batch_size": 8,
                    "max_length": 64,
                    "unsup_weight": weight,
                    "log_every": 1,
                    "progress": False,
                    "tensorboard": False,
                    "plots": False,
                }
            )
        )
        return r.final_train_loss

    # Untrained, the prompt LM term is about as large as the response term: λ = 1 roughly doubles the loss.
    plain, joint = first_loss(0.0), first_loss(1.0)
    assert 1.5 * plain < joint < 2.5 * plain
