from __future__ import annotations

import json

import pytest
from conftest import DEMO, assert_clean_error, demo_config, run_cli

from sft import InputError, load_config, train


def test_checkpoint_is_hf_compatible_and_reports_metrics(tiny_checkpoint):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(tiny_checkpoint), tokenizer=str(tiny_checkpoint))
    out = clf(["my parcel never arrived", "I was charged twice"])
    assert {o["label"] for o in out} <= {"billing", "shipping", "technical"}

    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["id2label"] == {"0": "billing", "1": "shipping", "2": "technical"}
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())["eval"]
    assert set(metrics) >= {"accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class"}
    assert metrics["num_examples"] == 90
    assert sum(c["support"] for c in metrics["per_class"].values()) == 90
    log = [json.loads(line) for line in (tiny_checkpoint / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["event"] == "end"
    assert any(r["event"] == "eval" for r in log) and any(r["event"] == "train" for r in log)
    assert (tiny_checkpoint / "train_config.yaml").is_file()
    assert not list(tiny_checkpoint.parent.glob(".*partial*")), "temporary work directory left behind"


def test_training_learns_and_is_reproducible(tiny_bert, tmp_path):
    def run(out):
        cfg = demo_config(tiny_bert, out, epochs=5, batch_size=16, lr=5e-3, seed=7)
        return train(cfg)

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    # 3 balanced classes: chance is 1/3; a 2-layer random-init BERT learns the topic words well above it.
    assert a.metrics["accuracy"] > 0.6, a.metrics["accuracy"]
    assert a.metrics == b.metrics  # same seed, same data: same numbers (CPU is deterministic)


def test_integer_labels_and_text_pairs(tiny_bert, tmp_path):
    rows = [{"q": f"question {i}", "a": "yes" if i % 2 else "no", "y": i % 2} for i in range(24)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(
        overrides={
            "train": str(data),
            "model": str(tiny_bert),
            "output": str(tmp_path / "o"),
            "text_column": "q",
            "text_pair_column": "a",
            "label_column": "y",
            "max_steps": 2,
            "progress": False,
        }
    )
    train(cfg)
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"}


def test_unknown_eval_label_fails_before_training(tiny_bert, tmp_path):
    bad_eval = tmp_path / "eval.csv"
    bad_eval.write_text("text,label\nhello there,billing\nsomething else,refunds\n")
    cfg = load_config(
        overrides={
            "train": str(DEMO / "train.csv"),
            "eval": str(bad_eval),
            "model": str(tiny_bert),
            "output": str(tmp_path / "o"),
            "progress": False,
        }
    )
    with pytest.raises(InputError, match=r"eval.csv line 3: label 'refunds'"):
        train(cfg)
    assert not (tmp_path / "o").exists()


def test_yaml_config_with_unknown_key(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train: x.csv\nlearning_rat: 0.1\n")
    with pytest.raises(InputError, match=r"c.yaml: unknown key learning_rat"):
        load_config(cfg_file)


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--train", "missing.csv"], ["missing.csv", "file not found"]),
        (
            ["--train", str(DEMO / "train.csv"), "--text-column", "body"],
            ["no column 'body'", "--text-column"],
        ),
        (["--train", str(DEMO / "train.csv"), "--batch-size", "0"], ["--batch-size must be > 0"]),
    ],
)
def test_cli_bad_input_exits_2_without_traceback(tmp_path, args, fragments):
    out = tmp_path / "never"
    proc = run_cli("sft-train", *args, "--output", str(out), "--no-progress")
    assert_clean_error(proc, *fragments)
    assert not out.exists()


def test_example_configs_are_valid():
    from conftest import ROOT

    for path in sorted((ROOT / "examples" / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.train and cfg.output


def test_yaml_values_are_coerced_or_named(tmp_path):
    good = tmp_path / "g.yaml"
    good.write_text("train: x.csv\nlr: 1e-4\nepochs: 2\nlora_targets: q_proj, v_proj\n")
    cfg = load_config(good)
    assert cfg.lr == 1e-4 and cfg.epochs == 2.0 and cfg.lora_targets == ["q_proj", "v_proj"]
    bad = tmp_path / "b.yaml"
    bad.write_text("train: x.csv\nbatch_size: 2.5\n")
    with pytest.raises(InputError, match=r"b.yaml: batch_size: expected int, got 2.5"):
        load_config(bad)


def test_evaluation_runs_with_dropout_off(tiny_bert, tmp_path):
    """The eval numbers are those of the saved model in eval mode, even with heavy dropout in training."""
    import csv

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "o"
    r = train(demo_config(tiny_bert, out, max_steps=6, dropout=0.5, seed=3))
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = list(csv.DictReader((DEMO / "eval.csv").open(encoding="utf-8")))
    with torch.no_grad():
        enc = tokenizer(
            [row["text"] for row in rows], truncation=True, max_length=48, padding=True, return_tensors="pt"
        )
        logits = model(**enc).logits
    y = torch.tensor([model.config.label2id[row["label"]] for row in rows])
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    assert r.metrics["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    assert r.metrics["accuracy"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())


def test_max_samples_keep_the_leading_examples():
    from sft.tasks import make_task

    task = make_task(
        load_config(
            overrides={
                "train": str(DEMO / "train.csv"),
                "eval": str(DEMO / "eval.csv"),
                "max_train_samples": 7,
                "max_eval_samples": 5,
            }
        )
    )
    task.load()
    assert (len(task.train_ex), len(task.train_y), len(task.eval_ex), len(task.eval_y)) == (7, 7, 5, 5)
    assert task.train_ex.where[-1].endswith("train.csv line 8")
