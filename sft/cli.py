"""`sft-train`: a thin typer layer over sft.train.train()."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import report_errors

app = typer.Typer(add_completion=False, help="Fine-tune a pretrained Hugging Face model on labeled text.")


@app.command()
def train_command(
    train: Optional[str] = typer.Option(None, "--train", help="Training data: CSV/TSV/JSON/JSONL/Parquet, or hub NAME:SPLIT."),
    eval: Optional[str] = typer.Option(None, "--eval", help="Evaluation data, same formats (evaluated every epoch)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of options; CLI options override it."),
    model: Optional[str] = typer.Option(None, "--model", help="Local path or hub id [default: the packaged MiniLM]."),
    text_column: Optional[str] = typer.Option(None, help="Column holding the text [default: text]."),
    text_pair_column: Optional[str] = typer.Option(None, help="Optional second text column (sentence pairs)."),
    label_column: Optional[str] = typer.Option(None, help="Column holding the label (string or int) [default: label]."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint directory [default: runs/model]."),
    epochs: Optional[float] = typer.Option(None, help="Training epochs [default: 3]."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps (overrides epochs)."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per step [default: 16]."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate for AdamW [default: 5e-5]."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay, not on biases/norms [default: 0.01]."),
    warmup_ratio: Optional[float] = typer.Option(None, help="Fraction of steps of linear warmup [default: 0.1]."),
    max_length: Optional[int] = typer.Option(None, help="Truncate inputs to this many tokens [default: 128]."),
    seed: Optional[int] = typer.Option(None, help="Random seed [default: 42]."),
    kernels: Optional[str] = typer.Option(None, help="auto | triton | torch: loss/attention kernels [default: auto]."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    from .config import load_config
    from .train import train as run_train

    overrides = {k: v for k, v in locals().items() if k not in ("config", "load_config", "run_train")}
    cfg = load_config(config, overrides)
    result = run_train(cfg)
    m = result.metrics
    summary = f"saved {result.output_dir} after {result.steps} steps in {result.train_seconds:.1f}s"
    if m:
        summary += f"; eval accuracy {m['accuracy']:.4f}, macro-F1 {m['f1_macro']:.4f}"
    typer.echo(summary)


@report_errors
def main() -> None:
    app()
