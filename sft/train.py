"""The training recipe, top to bottom.

config -> task data (checked before any model loads) -> tokenizer + model -> strategies (dropout,
checkpointing, freezing, LoRA, kernels) -> batches -> AdamW with per-layer groups + schedule ->
resume from the last state if there is one -> the loop (accumulate, clip, step, unfreeze, log,
evaluate, keep the best, stop early, save state) -> the final checkpoint, renamed into place.

The output directory appears only when training has finished. Until then the run lives in
`.<output>.run/` beside it (resumable states, logs), which is what a rerun of the same command resumes.
"""

from __future__ import annotations

import contextlib
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

from .atomic import check_output_dir, fresh_work_dir, replace_dir, write_json
from .checkpointing import load_latest, rng_state, run_dir_for, save_state, set_rng_state
from .config import COSMETIC, TrainConfig
from .distributed import Distributed
from .errors import InputError
from .models import default_model_path
from .strategies import GradualUnfreezer, apply_freeze, apply_lora, describe_param_groups, param_groups
from .tasks import Task, make_task, steps_per_epoch


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]  # the evaluation of the saved model ({} without eval data)
    steps: int
    train_seconds: float
    final_train_loss: float | None


def train(cfg: TrainConfig) -> TrainResult:
    cfg.validate()
    output = Path(cfg.output)
    dist = Distributed.from_env()
    if dist.is_main:
        check_output_dir(output, marker="train_config.yaml")
    seed_everything(cfg.seed)
    say = print if dist.is_main else (lambda *a, **k: None)

    task = make_task(cfg)
    task.load()
    model_path = cfg.model or (default_model_path() if cfg.task != "causal-lm" else None)
    if model_path is None:
        raise InputError("--task causal-lm needs --model (a decoder checkpoint: Llama, Qwen2, Mistral, ...)")
    tokenizer, model = load_model(model_path, task)
    train_rows, eval_rows = task.encode(tokenizer)
    if not train_rows:
        raise InputError(f"{cfg.train}: no usable training rows after tokenization")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    device = dist.device()
    kernels_backend = _kernels_backend(cfg.kernels, device)
    model, notes = prepare_model(model, cfg, task, kernels_backend)
    for line in notes:
        say(line)
    unsup = _unsup_objective(cfg, model, tokenizer, model_path)
    model.to(device)
    if unsup is not None:
        unsup.to(device)
    train_model = dist.wrap(model, fsdp=cfg.fsdp)

    spe = steps_per_epoch(len(train_rows), cfg.batch_size, cfg.grad_accum, dist.world)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * spe))
    groups = param_groups(
        model,
        cfg.lr,
        cfg.weight_decay,
        layer_lr_decay=cfg.layer_lr_decay,
        head_lr=cfg.head_lr,
        embedding_lr=cfg.embedding_lr,
    )
    if unsup is not None:
        groups.append(
            {
                "params": unsup.head_parameters(),
                "names": ["mlm head"],
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
            }
        )
    for line in ["optimizer parameter groups:", *describe_param_groups(groups)]:
        say(line)
    optimizer = _adamw([{k: v for k, v in g.items() if k != "names"} for g in groups], cfg.lr, fsdp=cfg.fsdp)
    scheduler = make_schedule(optimizer, cfg.schedule, int(cfg.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    unfreezer = GradualUnfreezer(model, cfg.unfreeze_every) if cfg.unfreeze_every else None

    # Resume: the last saved state of an earlier run of the same command, if any.
    run_dir = run_dir_for(output)
    state = load_latest(run_dir) if cfg.resume else None
    progress_state = {
        "step": 0,
        "best": None,
        "best_step": None,
        "bad_evals": 0,
        "running_loss": None,
        "seen_examples": 0,
        "seen_tokens": 0,
        "train_seconds": 0.0,
        "last_eval": {},
    }
    if state is not None:
        _check_same_run(state["config"], cfg, run_dir)
        if "rng_per_rank" not in state:
            raise InputError(
                f"{run_dir}: an unfinished run saved by an older sft-train; pass --no-resume to start over"
            )
        if state["world_size"] != dist.world:  # the global batches, and so the data order, depend on it
            raise InputError(
                f"{run_dir}: an unfinished run with {state['world_size']} processes, now "
                f"{dist.world}; rerun with the same number, or pass --no-resume to start over"
            )
        dist.load_model_state(model, state["model"])
        dist.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if unsup is not None:
            unsup.load_state_dict(state["unsup"])
        progress_state = state["progress"]
        # Each rank's own stream: ranks draw different amounts (e.g. dropout on differently padded batches).
        set_rng_state(state["rng_per_rank"][dist.rank])
        if unfreezer is not None:
            unfreezer.step(progress_state["step"])
        say(f"resuming from {run_dir} at step {progress_state['step']}/{total_steps}")
    elif dist.is_main:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
    dist.barrier()

    log = JsonlLog(run_dir / "train_log.jsonl", enabled=dist.is_main)
    tb = _tensorboard(run_dir / "tensorboard", cfg.tensorboard and dist.is_main)
    log.write(
        {
            "event": "resume" if state else "start",
            "step": progress_state["step"],
            "model": model_path,
            "task": cfg.task,
            "train_rows": len(train_rows),
            "eval_rows": len(eval_rows or []),
            "total_steps": total_steps,
            "device": str(device),
            "world_size": dist.world,
            "kernels": kernels_backend,
        }
    )
    lengths = [task.length(r) for r in train_rows] if cfg.group_by_length else None
    order = BatchOrder(len(train_rows), cfg.batch_size * dist.world, cfg.seed, lengths)
    progress_state["step"] * cfg.grad_accum
    autocast = _autocast(device, cfg.precision)
    p = progress_state
    t_resume, seconds_before = time.perf_counter(), p["train_seconds"]

    with _progress(cfg.progress and dist.is_main) as bar:
        task_bar = bar.add_task(
            "train", total=total_steps, completed=p["step"], loss=p["running_loss"] or float("nan"), rate=0.0
        )
        for step in range(p["step"] + 1, total_steps + 1):
            model.train()
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                idx = order.batch((step - 1) * cfg.grad_accum + micro)[dist.rank :: dist.world]
                batch = task.collate([train_rows[i] for i in idx], pad_id, device)
                sync = micro == cfg.grad_accum - 1
                with dist.no_sync(train_model, skip=not sync), autocast:
                    loss = task.loss(train_model, batch, kernels_backend)
                    if cfg.unsup_weight:
                        loss = loss + cfg.unsup_weight * _unsup_loss(
                            unsup, task, train_model, batch, kernels_backend
                        )
                    scaler.scale(loss / cfg.grad_accum).backward()
                step_loss += loss.item() / cfg.grad_accum
                p["seen_examples"] += len(idx) * dist.world
                p["seen_tokens"] += int(batch["attention_mask"].sum()) * dist.world
            if unsup is not None:
                dist.average_grads(unsup.head_parameters())
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a sharded norm
                grad_norm = grad_norm.full_tensor()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if unfreezer is not None and unfreezer.step(step):
                log.write({"event": "unfreeze", "step": step, "groups_trainable": unfreezer.unfrozen})

            p["step"] = step
            p["running_loss"] = (
                step_loss if p["running_loss"] is None else 0.9 * p["running_loss"] + 0.1 * step_loss
            )
            p["last_loss"] = step_loss
            elapsed = seconds_before + time.perf_counter() - t_resume
            p["train_seconds"] = elapsed
            bar.update(
                task_bar, completed=step, loss=p["running_loss"], rate=p["seen_examples"] / max(elapsed, 1e-9)
            )
            if step % cfg.log_every == 0 or step == total_steps:
                record = {
                    "step": step,
                    "epoch": round(step / spe, 3),
                    "loss": step_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "examples_per_s": p["seen_examples"] / elapsed,
                    "tokens_per_s": p["seen_tokens"] / elapsed,
                }
                log.write({"event": "train", **record})
                tb.add_scalar("train/loss", step_loss, step)
                tb.add_scalar("train/lr", record["lr"], step)

            eval_due = eval_rows is not None and (
                (cfg.eval_every and step % cfg.eval_every == 0)
                or (not cfg.eval_every and step % spe == 0)
                or step == total_steps
            )
            stop_early = False
            if eval_due:
                model.eval()  # dropout off; the next step's model.train() turns it back on
                metrics = task.evaluate(
                    model, eval_rows, pad_id, device, cfg.eval_batch_size, kernels_backend
                )
                p["last_eval"] = metrics
                scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                log.write({"event": "eval", "step": step, "epoch": round(step / spe, 3), **scalars})
                for k, v in scalars.items():
                    tb.add_scalar(f"eval/{k}", v, step)
                bar.console.print(
                    f"step {step}/{total_steps}  "
                    + "  ".join(
                        f"{k} {v:.4f}"
                        for k, v in scalars.items()
                        if k in ("loss", task.default_metric, "accuracy", "f1", "perplexity", cfg.best_metric)
                    )
                )
                if cfg.best_metric:
                    stop_early = _track_best(p, metrics, cfg, task, model, run_dir, dist)
            save_due = (cfg.save_every and step % cfg.save_every == 0) or (
                not cfg.save_every and (eval_due or (eval_rows is None and step % spe == 0))
            )
            if save_due and step < total_steps and not stop_early:
                model_state, optimizer_state = dist.model_state(model), dist.optimizer_state(model, optimizer)
                rng_per_rank = dist.gather_object(rng_state())
                if dist.is_main:
                    save_state(
                        run_dir,
                        step,
                        {
                            "config": cfg.to_dict(),
                            "model": model_state,
                            "optimizer": optimizer_state,
                            "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict(),
                            "progress": p,
                            "rng_per_rank": rng_per_rank,
                            "world_size": dist.world,
                            "unsup": unsup.state_dict() if unsup is not None else None,
                        },
                        cfg.keep_last,
                    )
            dist.barrier()
            if stop_early:
                log.write({"event": "early_stop", "step": step, "best_step": p["best_step"]})
                bar.console.print(
                    f"early stop at step {step}: no {cfg.best_metric} improvement in "
                    f"{cfg.patience} evaluations (best at step {p['best_step']})"
                )
                break

    final_metrics = p["last_eval"]
    if cfg.best_metric and p["best_step"] is not None:
        dist.load_model_state(
            model, torch.load(run_dir / "best" / "model.pt", map_location=device, weights_only=True)
        )
        final_metrics = p["best_metrics"]
    summary = {
        "steps": p["step"],
        "train_seconds": round(p["train_seconds"], 2),
        "train_examples_per_s": round(p["seen_examples"] / max(p["train_seconds"], 1e-9), 2),
        "final_train_loss": p.get("last_loss"),
        "best_step": p["best_step"],
    }
    log.write({"event": "end", **summary})
    log.close()
    tb.close()
    model_state = (
        dist.model_state(model) if dist.fsdp else None
    )  # FSDP: gathered by every rank, kept on rank 0
    if dist.is_main:
        _write_output(
            output,
            model,
            tokenizer,
            cfg,
            task,
            run_dir,
            {"eval": final_metrics, "last_eval": p["last_eval"], "train": summary},
            model_state,
        )
    dist.barrier()
    dist.close()
    return TrainResult(output, final_metrics, p["step"], p["train_seconds"], p.get("last_loss"))


def _adamw(groups: list[dict[str, Any]], lr: float, fsdp: bool) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CUDA and CPU; transformers.Trainer's default too), else foreach."""
    if not fsdp:  # sharded DTensor parameters take the foreach path
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, lr=lr)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(model_path: str, task: Task):
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()  # "newly initialized head" is expected when fine-tuning
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = task.auto_class().from_pretrained(
            model_path, ignore_mismatched_sizes=True, **task.model_kwargs()
        )
    except (OSError, ValueError, KeyError) as e:
        raise InputError(
            f"--model {model_path}: cannot load it for {task.cfg.task} ({str(e).splitlines()[0]})"
        ) from None
    if not tokenizer.is_fast:
        raise InputError(
            f"--model {model_path}: needs a fast tokenizer (tokenizer.json) for export and serving"
        )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


def prepare_model(model, cfg: TrainConfig, task: Task, kernels_backend: str):
    """Apply the strategies that change the model itself; returns (model, lines to print)."""
    notes = []
    if cfg.dropout is not None:
        _set_dropout(model, cfg.dropout)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if kernels_backend == "triton":
        from .patch_attention import patch_model

        notes.append(
            f"kernels: Triton attention patched into {', '.join(patch_model(model, backend='triton'))}"
        )
    if cfg.freeze:
        frozen = apply_freeze(model, cfg.freeze)
        notes.append(f"frozen: {len(frozen)} parameter tensors ({cfg.freeze})")
    if cfg.lora_r:
        model = apply_lora(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            targets=cfg.lora_targets,
            task_type=task.peft_task_type,
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    notes.append(f"trainable parameters: {trainable:,} of {total:,}")
    return model, notes


def _set_dropout(model, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        for attr in ("dropout_prob", "attention_dropout"):  # attention paths that read a float, not a module
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, p)


def _kernels_backend(choice: str, device: torch.device) -> str:
    from kernels import resolve_backend

    try:
        return resolve_backend(choice, device)
    except RuntimeError as e:
        raise InputError(f"--kernels {choice}: {e}") from None


def _unsup_objective(cfg, model, tokenizer, model_path):
    if not cfg.unsup_weight or cfg.task == "causal-lm":
        return None  # decoders use the prompt tokens of the same batch: no extra module
    from .unsup import MaskedLMObjective

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return MaskedLMObjective(model_path, base, tokenizer)


def _unsup_loss(unsup, task, model, batch, kernels_backend):
    if unsup is not None:  # encoders: masked-LM through the shared encoder
        return unsup(batch)
    from .unsup import prompt_lm_labels

    return task.loss(
        model,
        {**batch, "prompt_labels": prompt_lm_labels(batch)},
        kernels_backend,
        labels_key="prompt_labels",
    )


def _track_best(p, metrics, cfg, task, model, run_dir, dist) -> bool:
    """Keep the best model by cfg.best_metric; returns True when patience has run out."""
    if cfg.best_metric not in metrics:
        raise InputError(
            f"--best-metric {cfg.best_metric}: not an eval metric of {cfg.task} "
            f"({', '.join(k for k, v in metrics.items() if isinstance(v, (int, float)))})"
        )
    value = metrics[cfg.best_metric]
    if task.better(cfg.best_metric, value, p["best"]):
        p.update(best=value, best_step=p["step"], bad_evals=0, best_metrics=metrics)
        model_state = dist.model_state(model)
        if dist.is_main:
            best = run_dir / "best"
            best.mkdir(exist_ok=True)
            torch.save(model_state, best / "model.pt.tmp")
            (best / "model.pt.tmp").replace(best / "model.pt")
        return False
    p["bad_evals"] += 1
    return bool(cfg.patience) and p["bad_evals"] >= cfg.patience


def _check_same_run(saved: dict[str, Any], cfg: TrainConfig, run_dir: Path) -> None:
    now = cfg.to_dict()
    diff = [k for k in now if k not in COSMETIC and saved.get(k) != now[k]]
    if diff:
        k = diff[0]
        raise InputError(
            f"{run_dir}: an unfinished run with other options ({k}: {saved.get(k)!r} there, "
            f"{now[k]!r} now); rerun with the same options, or pass --no-resume to start over"
        )


def make_schedule(optimizer, kind: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BatchOrder:
    """Global batches as a pure function of (seed, batch number): a fresh permutation each epoch, so
    resuming at batch k needs no replay. With lengths, batches group rows of similar length (sorted
    within mega-batches of 50), and the batches themselves are shuffled."""

    def __init__(self, n: int, batch_size: int, seed: int, lengths: list[int] | None = None):
        self.n, self.batch_size, self.seed, self.lengths = n, batch_size, seed, lengths
        self.per_epoch = math.ceil(n / batch_size)
        self._cache: tuple[int, list[list[int]]] | None = None

    def batch(self, k: int) -> list[int]:
        epoch, offset = divmod(k, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.epoch_batches(epoch))
        return self._cache[1][offset]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        if self.lengths is not None:
            mega = self.batch_size * 50
            order = [
                i
                for s in range(0, self.n, mega)
                for i in sorted(order[s : s + mega], key=lambda i: -self.lengths[i])
            ]
        batches = [order[s : s + self.batch_size] for s in range(0, self.n, self.batch_size)]
        if self.lengths is not None:
            perm = torch.randperm(len(batches), generator=gen).tolist()
            batches = [batches[i] for i in perm]
        return batches


def _write_output(
    output: Path,
    model,
    tokenizer,
    cfg: TrainConfig,
    task: Task,
    run_dir: Path,
    metrics: dict[str, Any],
    model_state: dict[str, Any] | None = None,
) -> None:
    import yaml

    work = fresh_work_dir(output)
    try:
        if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into the base weights
            model = model.merge_and_unload()
        model.save_pretrained(work, safe_serialization=True, state_dict=model_state)
        tokenizer.save_pretrained(work)
        (work / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_json(work / "metrics.json", metrics)
        shutil.copy2(run_dir / "train_log.jsonl", work / "train_log.jsonl")
        if (run_dir / "tensorboard").is_dir():
            shutil.copytree(run_dir / "tensorboard", work / "tensorboard")
        if cfg.plots:
            from .plots import write_plots

            write_plots(work, task.labels.names if task.labels else None)
        replace_dir(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(run_dir, ignore_errors=True)


class JsonlLog:
    def __init__(self, path: Path, enabled: bool = True):
        self._f = path.open("a", encoding="utf-8") if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps({"time": round(time.time(), 3), **record}, default=float) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()


class _NoTensorBoard:
    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _tensorboard(directory: Path, enabled: bool):
    if not enabled:
        return _NoTensorBoard()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is optional
        return _NoTensorBoard()
    return SummaryWriter(str(directory))


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:.1f} ex/s"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
