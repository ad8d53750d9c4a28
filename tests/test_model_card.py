"""The README.md model card in every checkpoint: front matter a hub reads, task and labels, data, resolved
hyperparameters, the eval metrics of the saved model and the exact command."""

from __future__ import annotations

import json
import shlex

import yaml
from conftest import DEMO, run_cli

from sft.model_card import DataSplit, model_card


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_checkpoint_card_holds_the_metrics_and_the_command(tiny_bert, tmp_path):
    out = tmp_path / "ckpt"
    args = [
        "--train",
        str(DEMO / "train.csv"),
        "--eval",
        str(DEMO / "eval.csv"),
        "--model",
        str(tiny_bert),
        "--output",
        str(out),
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        "--best-metric",
        "loss",
        "--max-length",
        "32",
        "--lr",
        "2e-3",
        "--no-progress",
        "--no-plots",
        "--no-tensorboard",
    ]
    proc = run_cli("sft-train", *args)
    assert proc.returncode == 0, proc.stderr
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())

    front = _front_matter(card)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-classification"
    assert "base_model" not in front  # a local path is no hub id
    # The metrics of the saved (best-by-loss) model, headline and table, as in metrics.json.
    assert f"- loss: {metrics['eval']['loss']:.4f}" in card
    assert f"| accuracy | {metrics['eval']['accuracy']:.4f} |" in card
    assert f"| f1_macro | {metrics['eval']['f1_macro']:.4f} |" in card
    for name in ("billing", "shipping", "technical"):
        support = metrics["eval"]["per_class"][name]["support"]
        assert f"| {name} | " in card and f" | {support} |" in card
    # Data files with their row counts, the resolved hyperparameters, the command as typed.
    assert (
        f"| train | `{DEMO / 'train.csv'}` | 300 |" in card
        and f"| eval | `{DEMO / 'eval.csv'}` | 90 |" in card
    )
    assert (
        "| `best_metric` | `loss` |" in card and "| `lr` | `0.002` |" in card and "| `seed` | `42` |" in card
    )
    assert f"```bash\nsft-train {shlex.join(args)}\n```" in card
    assert f"| best step | {metrics['train']['best_step']} |" in card


def test_card_for_a_hub_base_model_without_labels_or_eval():
    card = model_card(
        title="alpaca-lora",
        config={"task": "causal-lm", "problem_type": "single-label", "lr": 1e-4, "eval": None},
        base_model="Qwen/Qwen2.5-0.5B",
        labels=None,
        class_weights=None,
        data=[DataSplit("train", "tatsu-lab/alpaca:train", 5000)],
        metrics={},
        train_summary={"steps": 10, "final_train_loss": 1.23456, "best_step": None},
        command=None,  # called from Python, not the command line
    )
    front = _front_matter(card)
    assert front["base_model"] == "Qwen/Qwen2.5-0.5B" and front["pipeline_tag"] == "text-generation"
    assert "| train | `tatsu-lab/alpaca:train` | 5000 | hub dataset |" in card
    assert "No evaluation data was given" in card and "| label |" not in card
    assert "`eval`" not in card  # unset options are left out
    assert "| final train loss | 1.2346 |" in card and "best step" not in card
    assert "Trained through the Python API" in card and "```bash" not in card
