"""Quality parity: sft-train against `transformers.Trainer` with the same data, model and hyper-parameters.

Both arms: the same train rows (the first --rows of the file), the same eval file, AdamW at the same
peak learning rate with linear warmup/decay, the same weight decay (no decay on biases and norms),
batch size, epochs, max_length, gradient clipping and seed; the new head starts from the same random init,
and by default the Trainer is fed sft-train's exact batches in sft-train's order (`--trainer-order own`
lets it shuffle with its own sampler), so what differs is the training loop itself and the dropout masks.
Reports the eval metric of each and the training time (the optimizer loop only, both arms). Sequence
classification (accuracy) or token classification (entity F1, our own seqeval-compatible scorer applied to
both arms' predictions).

    python -m bench.trainer_compare --task sequence-classification \
        --train ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv --text-column sentence \
        --rows 5000 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from .common import print_table, write_json
from .plots import draw


def _subset(path: str, rows: int | None, out_dir: Path) -> str:
    """The first `rows` data rows of a TSV/CSV (header kept) or CoNLL file (sentences)."""
    if not rows:
        return path
    src = Path(path)
    dst = out_dir / f"subset{src.suffix}"
    lines = src.read_text(encoding="utf-8").splitlines()
    if src.suffix in (".tsv", ".csv"):
        dst.write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    else:  # CoNLL: count sentences
        out, n = [], 0
        for line in lines:
            out.append(line)
            if not line.strip() and out[:-1] and out[-2].strip() and not out[-2].startswith("-DOCSTART-"):
                n += 1
                if n >= rows:
                    break
        dst.write_text("\n".join(out) + "\n", encoding="utf-8")
    return str(dst)


def run_ours(cfg_overrides: dict) -> dict:
    from sft import load_config, train

    t0 = time.perf_counter()
    result = train(load_config(overrides=cfg_overrides))
    return {
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "wall_seconds": time.perf_counter() - t0,
        "train_seconds": result.train_seconds,
    }


def run_trainer(cfg_overrides: dict, same_order: bool = True) -> dict:
    """The same run through transformers.Trainer, built from the same task object (same data, labels)."""
    import torch
    from torch.utils.data import Sampler
    from transformers import (
        AutoTokenizer,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from sft import load_config
    from sft.models import default_model_path
    from sft.recipe import BatchOrder, _set_dropout
    from sft.tasks import make_task

    cfg = load_config(overrides=cfg_overrides)
    task = make_task(cfg)
    task.load()
    model_path = cfg.model or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    set_seed(cfg.seed)  # the new head starts from the same random init as sft-train's (seeded before loading)
    model = task.auto_class().from_pretrained(model_path, ignore_mismatched_sizes=True, **task.model_kwargs())
    if cfg.dropout is not None:
        _set_dropout(model, cfg.dropout)
    train_rows, eval_rows = task.encode(tokenizer)

    class SftOrder(Sampler):
        """sft-train's batches, flattened: the Trainer's DataLoader cuts them back into the same batches."""

        def __init__(self, n: int):
            self.n, self.epoch, self.order = n, 0, BatchOrder(n, cfg.batch_size, cfg.seed)

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return self.n

        def __iter__(self):
            batches = self.order.epoch_batches(self.epoch)
            self.epoch += 1  # for loaders that do not call set_epoch
            return iter([i for b in batches for i in b])

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SftOrder(len(train_dataset if train_dataset is not None else self.train_dataset))

    def as_hf(rows):
        return [
            {
                **{k: v for k, v in r.items() if k != "label"},
                **({"labels": r["label"]} if "label" in r else {}),
            }
            for r in rows
        ]

    token_task = cfg.task == "token-classification"
    collator = (DataCollatorForTokenClassification if token_task else DataCollatorWithPadding)(tokenizer)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-trainer-"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type="linear",
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    t0 = time.perf_counter()
    trainer = (SameOrderTrainer if same_order else Trainer)(
        model=model, args=args, train_dataset=as_hf(train_rows), data_collator=collator
    )
    train_seconds = trainer.train().metrics["train_runtime"]
    wall = time.perf_counter() - t0
    metrics = task.evaluate(
        trainer.model.eval(),
        eval_rows,
        tokenizer.pad_token_id or 0,
        trainer.model.device,
        cfg.eval_batch_size,
        "torch",
    )
    return {
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "wall_seconds": wall,
        "train_seconds": train_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--task",
        default="sequence-classification",
        choices=["sequence-classification", "token-classification"],
    )
    p.add_argument("--train", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--model")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--rows", type=int, help="use only the first N training rows (sentences for CoNLL)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--dropout", type=float, help="override the model's dropout in both arms")
    p.add_argument(
        "--trainer-order",
        choices=["sft", "own"],
        default="sft",
        help="sft: the Trainer gets sft-train's batches in its order; own: its own shuffling",
    )
    p.add_argument("--arms", default="ours,trainer")
    p.add_argument("--out", help="directory for the JSON [default: bench/results]")
    a = p.parse_args(argv)
    for path in (a.train, a.eval):
        if not Path(path).exists():
            print(f"skipping: {path} not found (the shared datasets live in ../shared/data)", file=sys.stderr)
            raise SystemExit(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="trainer-compare-"))
    base = {
        "task": a.task,
        "train": _subset(a.train, a.rows, work),
        "eval": a.eval,
        "model": a.model,
        "text_column": a.text_column,
        "label_column": a.label_column,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "max_length": a.max_length,
        "seed": a.seed,
        "warmup_ratio": a.warmup_ratio,
        "dropout": a.dropout,
        "progress": False,
        "tensorboard": False,
        "plots": False,
        "kernels": "auto",
    }
    results = {}
    for arm in a.arms.split(","):
        if arm == "ours":
            results[arm] = run_ours({**base, "output": str(work / "ours")})
        elif arm == "trainer":
            results[arm] = run_trainer(
                {**base, "output": str(work / "trainer")}, same_order=a.trainer_order == "sft"
            )
        print(arm, results[arm], flush=True)
    metric = "accuracy" if a.task == "sequence-classification" else "f1"
    rows = [
        {
            "arm": arm,
            metric: r["metrics"].get(metric),
            "eval_loss": r["metrics"].get("loss"),
            "train_s": r["train_seconds"],
        }
        for arm, r in results.items()
    ]
    print_table(rows, ["arm", metric, "eval_loss", "train_s"])
    if len(results) == 2:
        diff = abs(results["ours"]["metrics"][metric] - results["trainer"]["metrics"][metric]) * 100
        print(f"|ours - trainer| = {diff:.2f} points of {metric}")
    path = write_json(
        f"trainer_compare_{a.task}",
        {"args": vars(a), "results": results, "table": rows},
        Path(a.out) if a.out else None,
    )
    print(f"wrote {path} and {draw(path)}")


if __name__ == "__main__":
    main()
