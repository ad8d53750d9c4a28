"""--class-weights: balanced = n / (k · n_c) from the training labels, or given; the training loss is torch's
class-weighted cross-entropy; recorded in train_config.yaml and the model card; refused where it makes no
sense."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import assert_clean_error, run_cli

from sft import InputError, load_config, train
from sft.recipe import load_model
from sft.tasks import make_task, resolve_class_weights


def _imbalanced(path, ham=30, spam=6):
    rows = [{"text": f"see you at lunch on day {i}", "label": "ham"} for i in range(ham)]
    rows += [{"text": f"win a free prize now call {i}", "label": "spam"} for i in range(spam)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _conll(path):
    sentences = [[("Maria", "I-PER"), ("visited", "O"), ("Paris", "I-LOC"), (".", "O")]] * 5
    sentences += [[("Reuters", "I-ORG"), ("said", "O"), ("so", "O"), ("today", "O"), (".", "O")]] * 3
    path.write_text("\n\n".join("\n".join(f"{w} X X {t}" for w, t in s) for s in sentences) + "\n")
    return path


def _task_model_rows(tiny_bert, **overrides):
    cfg = load_config(overrides={"model": str(tiny_bert), "max_length": 32, **overrides})
    task = make_task(cfg)
    task.load()
    tokenizer, model = load_model(str(tiny_bert), task)
    rows, _ = task.encode(tokenizer)
    model.eval()  # dropout off, so the reference sees the same logits
    return cfg, task, tokenizer, model, rows


def test_balanced_weights_and_the_loss_of_a_sequence_batch(tiny_bert, tmp_path):
    cfg, task, tokenizer, model, rows = _task_model_rows(
        tiny_bert, train=str(_imbalanced(tmp_path / "spam.jsonl")), class_weights="balanced"
    )
    assert task.labels.names == ["ham", "spam"]
    weights = resolve_class_weights(cfg, task, rows)
    assert weights == pytest.approx([36 / (2 * 30), 36 / (2 * 6)])  # [0.6, 3.0]

    batch = task.collate(rows[20:], tokenizer.pad_token_id, "cpu")  # 10 ham, 6 spam
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    unweighted = task.loss(model, batch, "torch")
    task.class_weight = torch.tensor(weights)
    weighted = task.loss(model, batch, "torch")
    expected = F.cross_entropy(logits, batch["labels"], weight=torch.tensor(weights))
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)
    assert abs(weighted.item() - unweighted.item()) > 1e-4  # the weights change the loss


def test_given_weights_and_the_loss_of_a_token_batch(tiny_bert, tmp_path):
    cfg, task, tokenizer, model, rows = _task_model_rows(
        tiny_bert,
        task="token-classification",
        train=str(_conll(tmp_path / "ner.txt")),
        class_weights="0.5,2,3,1",
    )
    names = task.labels.names
    assert names == ["O", "B-LOC", "B-ORG", "B-PER"]  # IOB1 tags read as IOB2
    weights = torch.tensor(resolve_class_weights(cfg, task, rows))
    task.class_weight = weights
    batch = task.collate(rows, tokenizer.pad_token_id, "cpu")
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    expected = F.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), weight=weights, ignore_index=-100
    )
    assert task.loss(model, batch, "torch").item() == pytest.approx(expected.item(), rel=1e-6)

    balanced = load_config(overrides={**cfg.to_dict(), "class_weights": "balanced"})
    # Counted over the labeled first sub-tokens, one per word: 5 sentences of 4 words and 3 of 5.
    assert task.label_counts(rows) == [5 * 2 + 3 * 4, 5, 3, 5]
    assert resolve_class_weights(balanced, task, rows) == pytest.approx([35 / (4 * c) for c in (22, 5, 3, 5)])

    wrong = load_config(overrides={**cfg.to_dict(), "class_weights": "1,2"})
    with pytest.raises(InputError, match="2 weights for 4 labels"):
        resolve_class_weights(wrong, task, rows)


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"problem_type": "regression"}, "not --problem-type regression"),
        ({"problem_type": "multi-label"}, "not --problem-type multi-label"),
        ({"task": "causal-lm"}, "not causal-lm"),
        ({"class_weights": "heavy"}, "must be 'balanced' or comma-separated"),
        ({"class_weights": "1,-2"}, "non-negative"),
        ({"class_weights": "0,0"}, "non-negative"),
    ],
)
def test_class_weights_refused_where_they_make_no_sense(overrides, fragment):
    with pytest.raises(InputError, match=fragment):
        load_config(overrides={"train": "x.csv", "class_weights": "balanced", **overrides})


def test_cli_records_weights_in_config_and_card(tiny_bert, tmp_path):
    data = _imbalanced(tmp_path / "spam.jsonl")
    bad = run_cli(
        "sft-train",
        "--train",
        str(data),
        "--model",
        str(tiny_bert),
        "--output",
        str(tmp_path / "x"),
        "--class-weights",
        "1,2,3",
        "--max-steps",
        "1",
        "--no-progress",
    )
    assert_clean_error(bad, "--class-weights: 3 weights for 2 labels (in order: ham, spam)")

    out = tmp_path / "weighted"
    r = train(
        load_config(
            overrides={
                "train": str(data),
                "eval": str(data),
                "model": str(tiny_bert),
                "output": str(out),
                "class_weights": "balanced",
                "max_steps": 2,
                "max_length": 32,
                "progress": False,
                "tensorboard": False,
                "plots": False,
            }
        )
    )
    assert r.steps == 2
    assert yaml.safe_load((out / "train_config.yaml").read_text())["class_weights"] == "balanced"
    card = (out / "README.md").read_text()
    assert "| id | label | class weight (balanced) |" in card
    assert "| 0 | ham | 0.6000 |" in card and "| 1 | spam | 3.0000 |" in card
    start = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert start["class_weights"] == pytest.approx([0.6, 3.0])
