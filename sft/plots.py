"""PNG plots written at the end of training: loss and eval-metric curves, and a confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path


def write_plots(directory: Path, label_names: list[str] | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines() if line]
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
        for key in ("accuracy", "f1_macro", "f1", "perplexity", "rmse"):
            if key in evals[0]:
                axes[1].plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=key)
        axes[1].legend()
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("step")
    axes[0].legend()
    axes[0].set_title("loss")
    axes[1].set_title("eval metrics")
    fig.tight_layout()
    fig.savefig(directory / "curves.png", dpi=100)
    plt.close(fig)
    written.append(directory / "curves.png")

    metrics = json.loads((directory / "metrics.json").read_text()).get("eval") or {}
    cm = metrics.get("confusion_matrix")
    if cm and label_names:
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(label_names), 1 + 0.6 * len(label_names)))
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
        ax.set_yticks(range(len(label_names)), label_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / "confusion_matrix.png", dpi=100)
        plt.close(fig)
        written.append(directory / "confusion_matrix.png")
    return written
