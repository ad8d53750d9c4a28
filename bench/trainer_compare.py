"""Quality and speed: sft-train against `transformers.Trainer` with the same data, model and hyper-parameters.

Both arms: the same train rows (the first --rows of the file), the same eval file, AdamW at the same
peak learning rate with linear warmup/decay, the same weight decay (no decay on biases and norms),
batch size, epochs, max_length, gradient clipping and seed; the new head starts from the same random init.
Sequence classification (accuracy) or token classification (entity F1, our own seqeval-compatible scorer
applied to both arms' predictions). Each arm runs in its own process, so its peak RSS is its own (read from
the process's rusage when it exits, as `/usr/bin/time -v` does). Evaluation runs once, after training, in
every arm (the Trainer's eval_strategy="no"), so training time is the optimizer loop only.

Arms: ours (sft-train on its defaults: padding-free encoder), ours-padded (the same with unpad off),
trainer (the Trainer with its default collator: DataCollatorWithPadding / DataCollatorForTokenClassification).

By default the Trainer is fed sft-train's exact batches in sft-train's order, so what differs is the
training loop itself and the dropout masks (a parity check). `--defaults` is the speed comparison of issue 15:
each side on its own defaults, the Trainer shuffling with its own sampler (`--trainer-order own`).

    python -m bench.trainer_compare --defaults --tag 10k_seed1 \
        --train ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv --text-column sentence \
        --rows 10000 --epochs 1 --lr 1e-4 --batch-size 32 --max-length 64 --seed 1

Per arm: the eval metric and loss, train and wall seconds, train samples/s, real (non-pad) tokens/s, the
padding fraction of its batches (1 - real tokens / padded positions, batches padded to their longest row)
and peak RSS; the speed ratio of each of ours to the Trainer. `--join-sentences 2-7` builds the training
rows from 2..7 consecutive source sentences joined into one text (a stand-in for longer documents).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import print_table, write_json
from .hf_trainer import same_order_trainer, timed_run_args
from .plots import draw

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "ours": {},  # sft-train's defaults
    "ours-padded": {"unpad": False},
    "trainer": None,
}
NO_MID_EVAL = 10**9  # eval_every: evaluate after the last step only (the step count is not known up front)


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


def _joined(path: str, rows: int, span: tuple[int, int], text_column: str, label_column: str, out_dir: Path):
    """`rows` texts of a TSV, each 2..7 (span) consecutive sentences joined with a space, labelled with the
    majority label of its sentences (ties: the first); sentences are reused from the top when they run out."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    if text_column not in header or label_column not in header:
        raise SystemExit(
            f"error: {path}: --join-sentences needs the columns {text_column!r} and {label_column!r}"
        )
    ti, li = header.index(text_column), header.index(label_column)
    sentences = [(c[ti], c[li]) for c in (x.split("\t") for x in lines[1:]) if len(c) > max(ti, li)]
    rng, pos, out = random.Random(0), 0, [f"{text_column}\t{label_column}"]
    for _ in range(rows):
        k = rng.randint(*span)
        group = [sentences[(pos + j) % len(sentences)] for j in range(k)]
        pos += k
        labels = [lab for _, lab in group]
        out.append(" ".join(t for t, _ in group) + "\t" + max(labels, key=labels.count))
    dst = out_dir / "joined.tsv"
    dst.write_text("\n".join(out) + "\n", encoding="utf-8")
    return str(dst)


class BatchCounter:
    """Examples, real tokens and padded positions of the batches an arm trains on."""

    def __init__(self):
        self.samples = self.real_tokens = self.padded_positions = 0

    def add_rows(self, rows) -> None:
        lengths = [len(r["input_ids"]) for r in rows]
        self.samples += len(rows)
        self.real_tokens += sum(lengths)
        self.padded_positions += max(lengths) * len(rows)

    def add_batch(self, batch) -> None:
        self.samples += batch["input_ids"].shape[0]
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_positions += batch["input_ids"].numel()

    def report(self, train_seconds: float) -> dict:
        return {
            "train_samples": self.samples,
            "real_tokens": self.real_tokens,
            "padded_positions": self.padded_positions,
            "padding_fraction": 1 - self.real_tokens / max(1, self.padded_positions),
            "train_samples_per_s": self.samples / train_seconds,
            "real_tokens_per_s": self.real_tokens / train_seconds,
        }


def run_ours(cfg_overrides: dict) -> dict:
    """sft-train as `sft-train` runs it; then its batches are replayed (from the encoded rows and its batch
    order, outside the timed loop) to count their tokens."""
    import math

    from transformers import AutoTokenizer

    from sft import load_config, train
    from sft.models import default_model_path
    from sft.recipe import BatchOrder
    from sft.tasks import make_task

    t0 = time.perf_counter()
    cfg = load_config(overrides=cfg_overrides)
    result = train(cfg)
    wall = time.perf_counter() - t0
    task = make_task(cfg)
    task.load()
    rows, _ = task.encode(AutoTokenizer.from_pretrained(cfg.model or default_model_path()))
    lengths = [task.length(r) for r in rows] if cfg.group_by_length else None
    order, counter = BatchOrder(len(rows), cfg.batch_size, cfg.seed, lengths), BatchCounter()
    for k in range(result.steps):  # grad_accum 1: one batch a step
        counter.add_rows([rows[i] for i in order.batch(k)])
    assert result.steps == math.ceil(cfg.epochs * order.per_epoch)
    return {
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "wall_seconds": wall,
        "train_seconds": result.train_seconds,
        **counter.report(result.train_seconds),
    }


def run_trainer(cfg_overrides: dict, same_order: bool = True) -> dict:
    """The same run through transformers.Trainer, built from the same task object (same data, labels)."""
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
    from sft.recipe import _set_dropout
    from sft.tasks import make_task

    t0 = time.perf_counter()
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

    SameOrderTrainer = same_order_trainer(Trainer, cfg.batch_size, cfg.seed)

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
    counter = BatchCounter()

    def counting_collator(features):
        batch = collator(features)
        counter.add_batch(batch)
        return batch

    args = timed_run_args(
        TrainingArguments,
        seed=cfg.seed,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        warmup_ratio=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
    )
    trainer = (SameOrderTrainer if same_order else Trainer)(
        model=model, args=args, train_dataset=as_hf(train_rows), data_collator=counting_collator
    )
    train_seconds = trainer.train().metrics["train_runtime"]
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
        "wall_seconds": time.perf_counter() - t0,
        "train_seconds": train_seconds,
        **counter.report(train_seconds),
    }


def run_arm(arm: str, cfg_overrides: dict, trainer_order: str) -> dict:
    """One arm in this process."""
    if arm == "trainer":
        return run_trainer(cfg_overrides, same_order=trainer_order == "sft")
    return run_ours({**cfg_overrides, **ARMS[arm]})


def run_arm_process(arm: str, cfg_overrides: dict, trainer_order: str, work: Path) -> dict:
    """One arm in a fresh interpreter; adds its whole-process seconds and peak RSS (MB, from the rusage
    wait4 returns, as /usr/bin/time -v reads it)."""
    spec, out = work / f"{arm}.spec.json", work / f"{arm}.result.json"
    spec.write_text(json.dumps({"arm": arm, "overrides": cfg_overrides, "trainer_order": trainer_order}))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.trainer_compare", "--child", str(spec)], cwd=ROOT, env=env
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"error: arm {arm} failed (exit code {proc.returncode}); its output is above")
    result = json.loads(out.read_text())
    return {**result, "process_seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def _child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = run_arm(spec["arm"], spec["overrides"], spec["trainer_order"])
    out = Path(spec_path).with_name(f"{spec['arm']}.result.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)


def _span(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        span = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX (e.g. 2-7), got {text!r}") from None
    if not 1 <= span[0] <= span[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return span


def _table(results: dict, metric: str) -> list[dict]:
    rows = []
    for arm, r in results.items():
        rows.append(
            {
                "arm": arm,
                metric: r["metrics"].get(metric),
                "eval_loss": r["metrics"].get("loss"),
                "train_s": r["train_seconds"],
                "wall_s": r.get("process_seconds", r["wall_seconds"]),
                "samples_per_s": r.get("train_samples_per_s"),
                "tokens_per_s": r.get("real_tokens_per_s"),
                "padding_fraction": r.get("padding_fraction"),
                "peak_rss_mb": r.get("peak_rss_mb"),
            }
        )
    base = results.get("trainer")
    for row in rows:
        if base and row["samples_per_s"]:
            row["speed_vs_trainer"] = row["samples_per_s"] / base["train_samples_per_s"]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--task",
        default="sequence-classification",
        choices=["sequence-classification", "token-classification"],
    )
    p.add_argument("--train")
    p.add_argument("--eval")
    p.add_argument("--model")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--rows", type=int, help="use only the first N training rows (sentences for CoNLL)")
    p.add_argument(
        "--join-sentences",
        type=_span,
        metavar="MIN-MAX",
        help="TSV only: each training row is MIN..MAX consecutive sentences joined (needs --rows)",
    )
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
    p.add_argument(
        "--defaults",
        action="store_true",
        help="each side on its own defaults: the Trainer shuffles with its own sampler (--trainer-order own)",
    )
    p.add_argument(
        "--arms", default="ours,trainer", help=f"comma-separated, in run order ({', '.join(ARMS)})"
    )
    p.add_argument("--tag", help="suffix of the record's name: trainer_compare_TASK_TAG.json")
    p.add_argument("--out", help="directory for the JSON [default: bench/results]")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one arm from a spec file
    a = p.parse_args(argv)
    if a.child:
        _child(a.child)
        return
    arms = a.arms.split(",")
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        p.error(f"--arms: unknown arm {unknown[0]!r} (known: {', '.join(ARMS)})")
    if not a.train or not a.eval:
        p.error("--train and --eval are required")
    if a.join_sentences and not a.rows:
        p.error("--join-sentences needs --rows")
    if a.defaults:
        a.trainer_order = "own"
    for path in (a.train, a.eval):
        if not Path(path).exists():
            print(f"skipping: {path} not found (the shared datasets live in ../shared/data)", file=sys.stderr)
            raise SystemExit(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="trainer-compare-"))
    train_file = (
        _joined(a.train, a.rows, a.join_sentences, a.text_column, a.label_column, work)
        if a.join_sentences
        else _subset(a.train, a.rows, work)
    )
    base = {
        "task": a.task,
        "train": train_file,
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
        "eval_every": NO_MID_EVAL,
        "progress": False,
        "tensorboard": False,
        "plots": False,
    }
    load_before = os.getloadavg()
    results = {}
    for arm in arms:
        results[arm] = run_arm_process(arm, {**base, "output": str(work / arm)}, a.trainer_order, work)
        print(arm, results[arm], flush=True)
    load_after = os.getloadavg()
    metric = "accuracy" if a.task == "sequence-classification" else "f1"
    rows = _table(results, metric)
    print_table(rows, list(rows[0]))
    if "ours" in results and "trainer" in results:
        diff = abs(results["ours"]["metrics"][metric] - results["trainer"]["metrics"][metric]) * 100
        print(f"|ours - trainer| = {diff:.2f} points of {metric}")
    record = {
        "args": vars(a),
        "arm_overrides": {arm: ARMS[arm] for arm in arms},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "results": results,
        "table": rows,
    }
    name = f"trainer_compare_{a.task}" + (f"_{a.tag}" if a.tag else "")
    path = write_json(name, record, Path(a.out) if a.out else None)
    print(f"wrote {path} and {draw(path)}")


if __name__ == "__main__":
    main()
