"""`sft-train`: a thin typer layer over sft.recipe.train().

Every TrainConfig field is a CLI option (`lora_r` -> `--lora-r`); options given on the command line
override the YAML file given with --config. The options are generated from the dataclass so the CLI,
the YAML keys and the saved train_config.yaml can never drift apart.

`--help` and argument errors must come back at once: this module imports only typer and the dataclass
(torch and transformers are imported when training starts), and the help is click's plain formatter with
the options grouped into panels (rich's formatter alone costs ~0.3 s).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing
from pathlib import Path

import typer
from typer.core import TyperCommand

from .config import TrainConfig
from .errors import report_errors

HELP = {
    "train": "Training data: CSV/TSV/JSON/JSONL/Parquet (CoNLL or JSONL for token-classification; Alpaca "
    "JSON or chat JSONL for causal-lm), or hub NAME:SPLIT.",
    "eval": "Evaluation data, same formats.",
    "model": "Local path or hub id (default: the packaged MiniLM).",
    "task": "sequence-classification | token-classification | causal-lm | image-classification | "
    "question-answering | seq2seq.",
    "problem_type": "Sequence classification: single-label | multi-label | regression.",
    "text_column": "Column holding the text.",
    "text_pair_column": "Optional second text column (sentence pairs).",
    "question_column": "question-answering tables (CSV/JSONL): the question column.",
    "context_column": "question-answering tables: the context column.",
    "answers_column": "question-answering tables: answers as {text, answer_start} (SQuAD JSON needs none).",
    "doc_stride": "question-answering: token overlap of the windows over a long context.",
    "max_answer_length": "question-answering: longest answer span considered, in tokens.",
    "n_best_size": "question-answering: start/end candidates searched per window.",
    "version_2_with_negative": "question-answering: SQuAD v2.0 data, questions may have no answer.",
    "null_score_diff_threshold": "question-answering v2: answer 'no answer' when its score leads by more.",
    "source_column": "seq2seq tables: the source text column (or --train SRC:TGT, two parallel text files).",
    "target_column": "seq2seq tables: the target text column.",
    "source_prefix": "seq2seq: text put before every source (T5 style: 'translate English to German: ').",
    "generation_max_length": "seq2seq evaluation: longest generated output, in tokens.",
    "num_beams": "seq2seq evaluation: beam width of the generation (1 = greedy).",
    "image_column": "image-classification tables (CSV/JSONL): the column holding image paths.",
    "augment": "image-classification training augmentation: none | light (random resized crop, flip).",
    "label_column": "Column holding the label (string or int).",
    "label_separator": "Separator of several labels in one cell (multi-label).",
    "threshold": "Multi-label decision threshold on sigmoid scores.",
    "max_length": "Truncate inputs to this many tokens.",
    "packing": "causal-lm: pack several examples per row (no attention across them).",
    "group_by_length": "Batch rows of similar length together to cut padding.",
    "fsdp": "Under torchrun: shard parameters, gradients and optimizer state across ranks (FSDP2) "
    "instead of DDP.",
    "max_train_samples": "Use only the first N training examples (quick runs, learning curves).",
    "max_eval_samples": "Use only the first N evaluation examples.",
    "output": "Checkpoint directory (written when training ends).",
    "epochs": "Training epochs.",
    "max_steps": "Stop after this many optimizer steps (overrides --epochs).",
    "batch_size": "Examples per micro-batch (per process).",
    "grad_accum": "Micro-batches per optimizer step.",
    "eval_batch_size": "Examples per evaluation batch.",
    "lr": "Peak learning rate (AdamW).",
    "weight_decay": "AdamW weight decay (never on biases and norms).",
    "schedule": "Learning-rate schedule after warmup: linear | cosine | constant.",
    "warmup_ratio": "Fraction of the steps spent in linear warmup.",
    "max_grad_norm": "Clip the gradient norm to this (0: no clipping).",
    "label_smoothing": "Label smoothing of the cross-entropy.",
    "class_weights": "Weight the cross-entropy per class: balanced (n / (k · n_c) from the training labels) "
    "| W1,W2,... in label order. Single-label sequence and token classification; eval loss stays unweighted.",
    "dropout": "Override every dropout probability of the model.",
    "precision": "fp32 | bf16 | fp16 (autocast; fp16 with loss scaling).",
    "gradient_checkpointing": "Recompute activations in backward to save memory.",
    "seed": "Random seed (data order, initialization, dropout).",
    "unpad": "Encoders (BERT, RoBERTa, XLM-R, DistilBERT) train on real tokens only: padding is dropped "
    "inside every layer (others keep the padded path, with a note). --no-unpad: the padded path.",
    "kernels": "auto (Triton on CUDA) | triton | torch: loss and attention kernels.",
    "freeze": "Freeze embeddings | bottom:K | all-but-head | a regex over parameter names.",
    "unfreeze_every": "Gradual unfreezing: start with the head, unfreeze one layer group every N steps.",
    "layer_lr_decay": "Layer-wise LR decay factor from the top layer down (1 = none).",
    "head_lr": "Learning rate of the head (default: --lr).",
    "embedding_lr": "Learning rate of the embeddings (default: from --layer-lr-decay).",
    "lora_r": "LoRA rank (0 = full fine-tuning); adapters are merged on save.",
    "lora_alpha": "LoRA alpha.",
    "lora_dropout": "LoRA dropout.",
    "lora_targets": "Comma-separated module names for LoRA (default: all linear layers).",
    "unsup_weight": "λ of the joint loss L_sup + λ·L_unsup (MLM for encoders, prompt LM for decoders).",
    "eval_every": "Evaluate every N steps (0 = every epoch).",
    "best_metric": "Keep the best checkpoint by this eval metric (e.g. accuracy, f1_macro, f1, loss).",
    "patience": "Early stopping after N evaluations without improvement of --best-metric.",
    "save_every": "Save a resumable state every N steps (0 = at each evaluation).",
    "keep_last": "Resumable states kept on disk.",
    "resume": "Continue an interrupted run of the same command from its last state.",
    "log_every": "Log training loss every N steps.",
    "tensorboard": "Also write TensorBoard event files (when tensorboard is installed).",
    "plots": "Write PNG plots (curves, confusion matrix) at the end.",
    "progress": "Show a progress bar.",
}


# The help panels, in the order shown; every TrainConfig field is in exactly one.
PANELS = {
    "Data": [
        "train",
        "eval",
        "text_column",
        "text_pair_column",
        "question_column",
        "context_column",
        "answers_column",
        "doc_stride",
        "max_answer_length",
        "n_best_size",
        "version_2_with_negative",
        "null_score_diff_threshold",
        "source_column",
        "target_column",
        "source_prefix",
        "generation_max_length",
        "num_beams",
        "image_column",
        "augment",
        "label_column",
        "label_separator",
        "max_length",
        "packing",
        "group_by_length",
        "max_train_samples",
        "max_eval_samples",
    ],
    "Model": ["model", "task", "problem_type", "threshold", "dropout", "output"],
    "Optimisation": [
        "epochs",
        "max_steps",
        "batch_size",
        "grad_accum",
        "lr",
        "weight_decay",
        "schedule",
        "warmup_ratio",
        "max_grad_norm",
        "label_smoothing",
        "class_weights",
        "seed",
    ],
    "Strategies": [
        "freeze",
        "unfreeze_every",
        "layer_lr_decay",
        "head_lr",
        "embedding_lr",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_targets",
        "unsup_weight",
    ],
    "Evaluation and checkpoints": [
        "eval_batch_size",
        "eval_every",
        "best_metric",
        "patience",
        "save_every",
        "keep_last",
        "resume",
    ],
    "Kernels and hardware": ["kernels", "unpad", "precision", "gradient_checkpointing", "fsdp"],
    "Logging": ["log_every", "tensorboard", "plots", "progress"],
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


class GroupedHelp(TyperCommand):
    """Click's plain help, with the options in sections named by their rich_help_panel: the ungrouped ones
    (--config, --help) first, then the PANELS in order."""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Options": [], **{name: [] for name in PANELS}}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        for name, records in sections.items():
            if not records:
                continue
            with formatter.section(name):
                formatter.write_dl(records)


def _option(field: dataclasses.Field, hints: dict[str, typing.Any]) -> inspect.Parameter:
    hint = hints[field.name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    flag = field.name.replace("_", "-")
    if base is bool:
        decl = [f"--{flag}/--no-{flag}"]
    else:
        decl = [f"--{flag}"] + (["-o"] if field.name == "output" else [])
    if typing.get_origin(base) is list:
        base = str  # comma-separated on the command line
    default = field.default if field.default is not dataclasses.MISSING else None
    shown = (
        f" (default: {default})" if default not in (None, "") and "(default" not in HELP[field.name] else ""
    )
    option = typer.Option(
        None, *decl, help=HELP[field.name] + shown, show_default=False, rich_help_panel=PANEL_OF[field.name]
    )
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=base | None
    )


def train_command(config: Path | None = None, **options) -> None:
    from .config import load_config
    from .recipe import train as run_train

    if isinstance(options.get("lora_targets"), str):
        options["lora_targets"] = [t.strip() for t in options["lora_targets"].split(",") if t.strip()]
    cfg = load_config(config, options)
    result = run_train(cfg, command=["sft-train", *sys.argv[1:]])  # argv[0] differs under torchrun
    summary = f"saved {result.output_dir} after {result.steps} steps in {result.train_seconds:.1f}s"
    m = result.metrics
    shown = [k for k in ("accuracy", "f1_macro", "f1", "perplexity", "rmse") if k in m]
    summary += "".join(f"; eval {k} {m[k]:.4f}" for k in shown)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        typer.echo(summary)


_HINTS = typing.get_type_hints(TrainConfig)  # once: it resolves every field's annotation
train_command.__signature__ = inspect.Signature(
    [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Path | None,
            default=typer.Option(None, "--config", help="YAML file of options; CLI options override it."),
        )
    ]
    + [_option(f, _HINTS) for f in dataclasses.fields(TrainConfig)]
)

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    help="Fine-tune a pretrained Hugging Face model on labeled text.",
)
app.command(cls=GroupedHelp)(train_command)


@report_errors
def main() -> None:
    app()


if __name__ == "__main__":
    main()
