"""The README.md model card written into every output checkpoint, so that it explains itself on any hub.

Like `transformers.Trainer.create_model_card`: YAML front matter a hub reads (library, pipeline tag,
base model), then the task and labels, the data, the resolved hyperparameters, the evaluation metrics and
the command that trained it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIPELINE_TAGS = {
    "sequence-classification": "text-classification",
    "token-classification": "token-classification",
    "causal-lm": "text-generation",
    "image-classification": "image-classification",
    "question-answering": "question-answering",
    "seq2seq": "text2text-generation",
}
# Headline metrics, in this order, when present.
HEADLINE = (
    "loss",
    "exact_match",
    "accuracy",
    "f1_macro",
    "f1_micro",
    "f1",
    "precision",
    "recall",
    "perplexity",
    "bleu",
    "chrf",
    "rougeL",
    "rmse",
    "mae",
)


@dataclass
class DataSplit:
    role: str  # "train" | "eval"
    source: str  # the file or hub NAME:SPLIT as given
    rows: int  # rows trained on / evaluated after --max-*-samples and tokenization

    def size(self) -> str:
        path = Path(self.source)
        return _bytes(path.stat().st_size) if path.is_file() else "hub dataset"


def model_card(
    *,
    title: str,
    config: dict[str, Any],
    base_model: str,
    labels: list[str] | None,
    class_weights: list[float] | None,
    data: list[DataSplit],
    metrics: dict[str, Any],
    train_summary: dict[str, Any],
    command: list[str] | None,
) -> str:
    """The card's Markdown text. `metrics` is the evaluation of the saved model ({} without eval data)."""
    import yaml

    task = config["task"]
    front = {
        "library_name": "transformers",
        "pipeline_tag": PIPELINE_TAGS[task],
        "tags": ["sft-toolchain", task],
    }
    if not Path(base_model).exists():  # a hub id; a local path means nothing on a hub
        front["base_model"] = base_model
    parts = [
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---",
        f"# {title}",
        f"This model is `{base_model}` fine-tuned with sft-train for {task} on {_data_sentence(data)}.",
        *_headline(metrics),
        "## Task and labels",
        *_labels(config, labels, class_weights),
        "## Training and evaluation data",
        _table(
            ["split", "source", "rows", "size"], [[d.role, f"`{d.source}`", d.rows, d.size()] for d in data]
        ),
        "## Training hyperparameters",
        _table(["option", "value"], [[f"`{k}`", f"`{v}`"] for k, v in config.items() if v is not None]),
        "## Evaluation results",
        *_results(metrics),
        "## Training",
        _table(
            ["", "value"],
            [[k.replace("_", " "), _number(v)] for k, v in train_summary.items() if v is not None],
        ),
        "## Command",
        *_command(command),
        "The resolved options are in `train_config.yaml`: `sft-train --config train_config.yaml` reruns it.",
    ]
    return "\n\n".join(parts) + "\n"


def _command(command: list[str] | None) -> list[str]:
    if command is None:
        return ["Trained through the Python API (`sft.train`)."]
    return [f"```bash\n{shlex.join(command)}\n```"]


def _data_sentence(data: list[DataSplit]) -> str:
    return " with evaluation on ".join(f"`{d.source}` ({d.rows:,} rows)" for d in data)


def _headline(metrics: dict[str, Any]) -> list[str]:
    shown = [k for k in HEADLINE if isinstance(metrics.get(k), (int, float))]
    if not shown:
        return []
    return ["It achieves on the evaluation set:", "\n".join(f"- {k}: {_number(metrics[k])}" for k in shown)]


def _labels(config: dict[str, Any], labels: list[str] | None, class_weights: list[float] | None) -> list[str]:
    task = config["task"]
    problem = f", {config['problem_type']}" if task == "sequence-classification" else ""
    lines = [f"Task: {task}{problem}."]
    if not labels:
        return lines
    header, rows = ["id", "label"], [[i, name] for i, name in enumerate(labels)]
    if class_weights is not None:
        header.append(f"class weight ({config['class_weights']})")
        rows = [row + [_number(w)] for row, w in zip(rows, class_weights, strict=True)]
    return [*lines, _table(header, rows)]


def _results(metrics: dict[str, Any]) -> list[str]:
    if not metrics:
        return ["No evaluation data was given (`--eval`)."]
    scalars = [[k, _number(v)] for k, v in metrics.items() if isinstance(v, (int, float))]
    out = [_table(["metric", "value"], scalars)]
    per_class = metrics.get("per_class") or metrics.get("per_type")
    if isinstance(per_class, dict) and per_class:
        columns = list(next(iter(per_class.values())))
        rows = [[name, *(_number(stats.get(c)) for c in columns)] for name, stats in per_class.items()]
        out.append(_table(["class", *columns], rows))
    return out


def _table(header: list[Any], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
