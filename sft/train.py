"""The training recipe for sequence classification, top to bottom.

read data -> label map -> tokenizer + model -> batches -> AdamW + warmup/decay -> loop (eval each epoch)
-> save an HF checkpoint (safetensors, config with id2label, tokenizer) plus metrics.json, train_log.jsonl
and the resolved train_config.yaml. The output directory appears only when training has finished: the
run writes into a sibling temporary directory that is renamed at the end.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .data import Examples, LabelMap, extract_examples, read_table
from .atomic import check_output_dir, fresh_work_dir, replace_dir, write_json
from .errors import InputError
from .metrics import classification_report
from .models import default_model_path


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    steps: int
    train_seconds: float


def train(cfg: TrainConfig) -> TrainResult:
    cfg.validate()
    output = Path(cfg.output)
    check_output_dir(output, marker="train_config.yaml")
    model_path = cfg.model or default_model_path()
    seed_everything(cfg.seed)

    # Data: read and check everything before the (slow) model load, so bad input fails fast.
    train_ex = _examples(cfg.train, "train", cfg)
    labels = LabelMap.from_labels(train_ex.labels)
    if len(labels.names) < 2:
        raise InputError(f"{cfg.train}: column {cfg.label_column!r} has a single label "
                         f"({labels.names[0]!r}); classification needs at least two")
    train_y = labels.encode(train_ex.labels, train_ex.where, cfg.label_column)
    eval_ex = _examples(cfg.eval, "eval", cfg) if cfg.eval else None
    eval_y = labels.encode(eval_ex.labels, eval_ex.where, cfg.label_column) if eval_ex else None

    tokenizer, model = load_model(model_path, labels)
    train_features = encode(tokenizer, train_ex, cfg.max_length)
    eval_features = encode(tokenizer, eval_ex, cfg.max_length) if eval_ex else None
    pad_id = tokenizer.pad_token_id or 0

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    steps_per_epoch = math.ceil(len(train_features) / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = linear_warmup_decay(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    loss_fn = classification_loss(cfg.kernels)

    work_dir = fresh_work_dir(output)
    log = JsonlLog(work_dir / "train_log.jsonl")
    log.write({"event": "start", "model": model_path, "train_examples": len(train_features),
               "eval_examples": len(eval_features or []), "labels": labels.names, "total_steps": total_steps,
               "device": str(device), "kernels": cfg.kernels})
    metrics: dict[str, Any] = {}
    batches = shuffled_batches(len(train_features), cfg.batch_size, cfg.seed)
    t_start = time.perf_counter()
    seen_examples = seen_tokens = 0
    running_loss = None
    try:
        with _progress(cfg.progress) as progress:
            task = progress.add_task("train", total=total_steps, loss=float("nan"), rate=0.0)
            for step in range(1, total_steps + 1):
                idx = next(batches)
                batch = collate([train_features[i] for i in idx], pad_id, device)
                targets = torch.tensor([train_y[i] for i in idx], device=device)

                model.train()
                logits = model(**batch).logits
                loss = loss_fn(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()

                loss_value = loss.item()
                running_loss = loss_value if running_loss is None else 0.9 * running_loss + 0.1 * loss_value
                seen_examples += len(idx)
                seen_tokens += int(batch["attention_mask"].sum())
                elapsed = time.perf_counter() - t_start
                progress.update(task, advance=1, loss=running_loss, rate=seen_examples / elapsed)
                if step % cfg.log_every == 0 or step == total_steps:
                    log.write({"event": "train", "step": step, "epoch": round(step / steps_per_epoch, 3),
                               "loss": loss_value, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                               "examples_per_s": seen_examples / elapsed, "tokens_per_s": seen_tokens / elapsed})

                if eval_features is not None and (step % steps_per_epoch == 0 or step == total_steps):
                    metrics = evaluate(model, eval_features, eval_y, labels.names, pad_id, device,
                                       cfg.eval_batch_size, loss_fn)
                    log.write({"event": "eval", "step": step, "epoch": round(step / steps_per_epoch, 3),
                               **{k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}})
                    progress.console.print(
                        f"step {step}/{total_steps}  eval loss {metrics['loss']:.4f}  "
                        f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1_macro']:.4f}")
        train_seconds = time.perf_counter() - t_start
        summary = {"steps": total_steps, "train_seconds": round(train_seconds, 2),
                   "train_examples_per_s": round(seen_examples / train_seconds, 2),
                   "final_train_loss": running_loss}
        log.write({"event": "end", **summary})
        log.close()
        save_checkpoint(work_dir, model, tokenizer, cfg, {"eval": metrics, "train": summary})
        replace_dir(work_dir, output)
    except BaseException:
        log.close()
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return TrainResult(output, metrics, total_steps, train_seconds)


def _examples(spec: str, role: str, cfg: TrainConfig) -> Examples:
    table = read_table(spec, role=role)
    return extract_examples(table, cfg.text_column, cfg.label_column, cfg.text_pair_column)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(model_path: str, labels: LabelMap):
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()  # "newly initialized head" is expected when fine-tuning
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(labels.names), id2label=labels.id2label(), label2id=labels.label2id(),
            problem_type="single_label_classification", ignore_mismatched_sizes=True)
    except (OSError, ValueError) as e:
        raise InputError(f"--model {model_path}: cannot load a sequence-classification model "
                         f"({str(e).splitlines()[0]})") from None
    if not tokenizer.is_fast:
        raise InputError(f"--model {model_path}: needs a fast tokenizer (tokenizer.json) for export and serving")
    return tokenizer, model


def encode(tokenizer, examples: Examples, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenize once up front (no padding: batches are padded to their own longest row)."""
    enc = tokenizer(examples.texts, examples.pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(examples))]


def collate(rows: list[dict[str, list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized rows to the batch's longest row."""
    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for key in rows[0]:
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], device=device)
    return out


def shuffled_batches(n: int, batch_size: int, seed: int):
    """Endless stream of index batches: a fresh permutation each epoch, the last batch may be short."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and normalization weights (all 1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=torch.cuda.is_available())


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def classification_loss(kernels_backend: str):
    """Mean cross-entropy over the batch, through our kernels package (Triton on CUDA, torch elsewhere)."""
    from kernels import cross_entropy

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, targets, backend=kernels_backend, inplace=False)

    return loss_fn


@torch.no_grad()
def evaluate(model, features, y_true, label_names, pad_id, device, batch_size, loss_fn) -> dict[str, Any]:
    model.eval()
    preds, total_loss = [], 0.0
    # Sorting by length keeps padding low; predictions are put back in the original order.
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        logits = model(**collate([features[i] for i in idx], pad_id, device)).logits.float()
        targets = torch.tensor([y_true[i] for i in idx], device=device)
        total_loss += loss_fn(logits, targets).item() * len(idx)
        preds.extend(zip(idx, logits.argmax(-1).tolist()))
    y_pred = [p for _, p in sorted(preds)]
    return {"loss": total_loss / len(features), **classification_report(y_true, y_pred, label_names)}


def save_checkpoint(directory: Path, model, tokenizer, cfg: TrainConfig, metrics: dict[str, Any]) -> None:
    import yaml

    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(directory / "metrics.json", metrics)


class JsonlLog:
    def __init__(self, path: Path):
        self._f = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} ex/s"),
        TimeRemainingColumn(), disable=not enabled,
    )
