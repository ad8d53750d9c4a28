"""The training recipe, as named stages:

    setup -> resume -> loop (train_step, evaluate_and_keep_best, save_resumable_state) -> finish

`setup` reads the task data (checked before any model loads), loads the tokenizer and model, applies the
strategies that change the model (`prepare_model`: dropout, checkpointing, kernels, freezing, LoRA), wraps
it for DDP/FSDP and builds AdamW with per-layer groups and the schedule. `resume` continues from the last
saved state of an earlier run of the same command, if there is one. The loop accumulates, clips, steps,
unfreezes, logs, evaluates, keeps the best model, stops early and saves resumable states. `finish` puts
the best model back and writes the final checkpoint with its model card, renamed into place.

The output directory appears only when training has finished. Until then the run lives in
`.<output>.run/` beside it (resumable states, logs), which is what a rerun of the same command resumes.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from collections.abc import Callable
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
from .memory import HeapTrimmer
from .models import default_model_path
from .progress import ProgressBar, RunLog, TrainingProgress
from .strategies import GradualUnfreezer, apply_freeze, apply_lora, describe_param_groups, param_groups
from .tasks import Task, make_task, resolve_class_weights, steps_per_epoch

# Tasks the packaged MiniLM (the default --model) cannot serve, and what they need instead.
NEEDS_MODEL = {
    "causal-lm": "a decoder checkpoint: Llama, Qwen2, Mistral, ...",
    "seq2seq": "an encoder-decoder checkpoint: T5, mT5, BART, Marian, Pegasus, ...",
    "image-classification": "a vision checkpoint with its image processor: ViT, ConvNeXt, ResNet, ...",
}
# Tasks whose encoders train on real tokens only (sft/unpad.py); the rest keep padded batches.
UNPADDED_TASKS = ("sequence-classification", "token-classification")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]  # the evaluation of the saved model ({} without eval data)
    steps: int
    train_seconds: float
    final_train_loss: float | None


@dataclass
class Run:
    """What `setup` builds and every later stage reads."""

    cfg: TrainConfig
    dist: Distributed
    task: Task
    model_path: str
    tokenizer: Any
    model: torch.nn.Module  # the model itself: saved, evaluated, its state loaded
    train_model: torch.nn.Module  # the same, wrapped for DDP/FSDP: called in the training step
    unsup: Any  # the masked-LM objective of --unsup-weight for encoders, else None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    unfreezer: GradualUnfreezer | None
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]] | None
    class_weights: list[float] | None
    pad_id: int
    device: torch.device
    kernels_backend: str
    run_dir: Path
    steps_per_epoch: int
    total_steps: int
    say: Callable[[str], None]  # print on the main process only


def train(cfg: TrainConfig, *, command: list[str] | None = None) -> TrainResult:
    """Fine-tune as `cfg` says. `command`: the command line that asked for it, for the model card."""
    cfg.validate()
    run = setup(cfg)
    progress, resumed = resume(run)
    with RunLog(run.run_dir, enabled=run.dist.is_main, tensorboard=cfg.tensorboard) as log:
        log.event("resume" if resumed else "start", step=progress.step, **_run_facts(run))
        run_loop(run, progress, log)
        metrics = restore_best(run, progress)
        log.event("end", **_summary(progress))
    finish(run, progress, metrics, command)
    return TrainResult(Path(cfg.output), metrics, progress.step, progress.train_seconds, progress.last_loss)


# -- setup ---------------------------------------------------------------------------------------------


def setup(cfg: TrainConfig) -> Run:
    dist = Distributed.from_env()
    if dist.is_main:
        check_output_dir(Path(cfg.output), marker="train_config.yaml")
    seed_everything(cfg.seed)
    say = print if dist.is_main else (lambda *a, **k: None)

    task, model_path, tokenizer, model, train_rows, eval_rows = load_task_and_model(cfg)
    device = dist.device()
    kernels_backend = _kernels_backend(cfg.kernels, device)
    model, notes = prepare_model(model, cfg, task, kernels_backend)
    for line in notes:
        say(line)
    class_weights = use_class_weights(cfg, task, train_rows, device, say)
    unsup = _unsup_objective(cfg, model, tokenizer, model_path, kernels_backend)
    model.to(device)
    if unsup is not None:
        unsup.to(device)
    train_model = dist.wrap(model, fsdp=cfg.fsdp)

    spe = steps_per_epoch(len(train_rows), cfg.batch_size, cfg.grad_accum, dist.world)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * spe))
    optimizer, scheduler = build_optimizer(cfg, model, unsup, total_steps, say)
    return Run(
        cfg=cfg,
        dist=dist,
        task=task,
        model_path=model_path,
        tokenizer=tokenizer,
        model=model,
        train_model=train_model,
        unsup=unsup,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
        unfreezer=GradualUnfreezer(model, cfg.unfreeze_every) if cfg.unfreeze_every else None,
        train_rows=train_rows,
        eval_rows=eval_rows,
        class_weights=class_weights,
        pad_id=_pad_id(tokenizer),
        device=device,
        kernels_backend=kernels_backend,
        run_dir=run_dir_for(Path(cfg.output)),
        steps_per_epoch=spe,
        total_steps=total_steps,
        say=say,
    )


def load_task_and_model(cfg: TrainConfig):
    """The task with its data read and checked, then the tokenizer and model, then the tokenized rows."""
    task = make_task(cfg)
    task.load()
    model_path = cfg.model or (default_model_path() if cfg.task not in NEEDS_MODEL else None)
    if model_path is None:
        raise InputError(f"--task {cfg.task} needs --model ({NEEDS_MODEL[cfg.task]})")
    tokenizer, model = load_model(model_path, task)
    train_rows, eval_rows = task.encode(tokenizer)
    if not train_rows:
        raise InputError(f"{cfg.train}: no usable training rows after tokenization")
    return task, model_path, tokenizer, model, train_rows, eval_rows


def use_class_weights(cfg: TrainConfig, task: Task, train_rows, device, say) -> list[float] | None:
    """--class-weights resolved against the training labels and handed to the task's loss."""
    weights = resolve_class_weights(cfg, task, train_rows)
    if weights is not None:
        task.class_weight = torch.tensor(weights, dtype=torch.float32, device=device)
        named = zip(task.labels.names, weights, strict=True)
        say(f"class weights ({cfg.class_weights}): " + ", ".join(f"{name} {w:.4g}" for name, w in named))
    return weights


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)  # an image processor has none
    return pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)


def build_optimizer(cfg: TrainConfig, model, unsup, total_steps: int, say: Callable[[str], None]):
    """AdamW over per-layer parameter groups (and the masked-LM head of --unsup-weight), and its schedule."""
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
    return optimizer, scheduler


# -- resume --------------------------------------------------------------------------------------------


def resume(run: Run) -> tuple[TrainingProgress, bool]:
    """Continue from the last state of an earlier run of the same command, or start a fresh run directory.
    Returns the progress and whether it was resumed."""
    cfg, dist = run.cfg, run.dist
    state = load_latest(run.run_dir) if cfg.resume else None
    if state is None:
        if dist.is_main:
            shutil.rmtree(run.run_dir, ignore_errors=True)
            run.run_dir.mkdir(parents=True)
        dist.barrier()
        return TrainingProgress(), False
    _check_same_run(state["config"], cfg, run.run_dir)
    if state["world_size"] != dist.world:  # the global batches, and so the data order, depend on it
        raise InputError(
            f"{run.run_dir}: an unfinished run with {state['world_size']} processes, now "
            f"{dist.world}; rerun with the same number, or pass --no-resume to start over"
        )
    dist.load_model_state(run.model, state["model"])
    dist.load_optimizer_state(run.model, run.optimizer, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.unsup is not None:
        run.unsup.load_state_dict(state["unsup"])
    progress = TrainingProgress.from_dict(state["progress"])
    # Each rank's own stream: ranks draw different amounts (e.g. dropout on differently padded batches).
    set_rng_state(state["rng_per_rank"][dist.rank])
    if run.unfreezer is not None:
        run.unfreezer.step(progress.step)
    run.say(f"resuming from {run.run_dir} at step {progress.step}/{run.total_steps}")
    dist.barrier()
    return progress, True


# -- the loop ------------------------------------------------------------------------------------------


def run_loop(run: Run, progress: TrainingProgress, log: RunLog) -> None:
    cfg, dist = run.cfg, run.dist
    lengths = [run.task.length(r) for r in run.train_rows] if cfg.group_by_length else None
    order = BatchOrder(len(run.train_rows), cfg.batch_size * dist.world, cfg.seed, lengths)
    clock_start = time.perf_counter() - progress.train_seconds
    heap = HeapTrimmer.for_model(run.model)
    with ProgressBar(enabled=cfg.progress and dist.is_main, total=run.total_steps, progress=progress) as bar:
        for step in range(progress.step + 1, run.total_steps + 1):
            loss, grad_norm = train_step(run, progress, order, step)
            heap.after_step()
            progress.record_step(step, loss, time.perf_counter() - clock_start)
            bar.update(progress)
            if run.unfreezer is not None and run.unfreezer.step(step):
                log.event("unfreeze", step=step, groups_trainable=run.unfreezer.unfrozen)
            if step % cfg.log_every == 0 or step == run.total_steps:
                _log_train(run, progress, log, grad_norm)

            evaluated = _eval_due(run, step)
            stop_early = evaluated and evaluate_and_keep_best(run, progress, log, bar.print)
            if _save_due(run, step, evaluated) and step < run.total_steps and not stop_early:
                save_resumable_state(run, progress)
            dist.barrier()
            if stop_early:
                log.event("early_stop", step=step, best_step=progress.best_step)
                run.say(
                    f"early stop at step {step}: no {cfg.best_metric} improvement in "
                    f"{cfg.patience} evaluations (best at step {progress.best_step})"
                )
                break


def train_step(
    run: Run, progress: TrainingProgress, order: BatchOrder, step: int
) -> tuple[float, torch.Tensor]:
    """One optimizer step over --grad-accum micro-batches; returns (mean loss, gradient norm unclipped)."""
    cfg, dist, task = run.cfg, run.dist, run.task
    run.model.train()
    autocast = _autocast(run.device, cfg.precision)
    step_loss = 0.0
    for micro in range(cfg.grad_accum):
        idx = order.batch((step - 1) * cfg.grad_accum + micro)[dist.rank :: dist.world]
        batch = task.collate([run.train_rows[i] for i in idx], run.pad_id, run.device)
        sync = micro == cfg.grad_accum - 1
        with dist.no_sync(run.train_model, skip=not sync), autocast:
            loss = task.loss(run.train_model, batch, run.kernels_backend)
            if cfg.unsup_weight:
                loss = loss + cfg.unsup_weight * _unsup_loss(
                    run.unsup, task, run.train_model, batch, run.kernels_backend
                )
            run.scaler.scale(loss / cfg.grad_accum).backward()
        step_loss += loss.item() / cfg.grad_accum
        progress.seen_examples += len(idx) * dist.world
        if "attention_mask" in batch:  # text tasks; images have no tokens to count
            progress.seen_tokens += int(batch["attention_mask"].sum()) * dist.world
    if run.unsup is not None:
        dist.average_grads(run.unsup.head_parameters())
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm or float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a sharded norm
        grad_norm = grad_norm.full_tensor()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return step_loss, grad_norm  # a tensor: read on the host only when logged


def _log_train(run: Run, progress: TrainingProgress, log: RunLog, grad_norm: torch.Tensor) -> None:
    record = {
        "loss": progress.last_loss,
        "lr": run.scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm),
        "examples_per_s": progress.examples_per_s(),
        "tokens_per_s": progress.tokens_per_s(),
    }
    log.event("train", step=progress.step, epoch=round(progress.step / run.steps_per_epoch, 3), **record)
    log.scalars("train", {"loss": record["loss"], "lr": record["lr"]}, progress.step)


def _eval_due(run: Run, step: int) -> bool:
    every = run.cfg.eval_every or run.steps_per_epoch
    return run.eval_rows is not None and (step % every == 0 or step == run.total_steps)


def _save_due(run: Run, step: int, evaluated: bool) -> bool:
    if run.cfg.save_every:
        return step % run.cfg.save_every == 0
    return evaluated or (run.eval_rows is None and step % run.steps_per_epoch == 0)


# -- evaluate, keep the best ---------------------------------------------------------------------------


def evaluate_and_keep_best(
    run: Run, progress: TrainingProgress, log: RunLog, echo: Callable[[str], None]
) -> bool:
    """Evaluate, log, and keep the best model by --best-metric; returns True when patience has run out."""
    cfg, step = run.cfg, progress.step
    run.model.eval()  # dropout off; the next step's model.train() turns it back on
    metrics = run.task.evaluate(
        run.model, run.eval_rows, run.pad_id, run.device, cfg.eval_batch_size, run.kernels_backend
    )
    progress.last_eval = metrics
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    log.event("eval", step=step, epoch=round(step / run.steps_per_epoch, 3), **scalars)
    log.scalars("eval", scalars, step)
    if run.dist.is_main:
        shown = ("loss", run.task.default_metric, "accuracy", "f1", "perplexity", cfg.best_metric)
        echo(
            f"step {step}/{run.total_steps}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k in shown)
        )
    return keep_best(run, progress, metrics) if cfg.best_metric else False


def keep_best(run: Run, progress: TrainingProgress, metrics: dict[str, Any]) -> bool:
    """Save the model when --best-metric improved; returns True when --patience has run out."""
    cfg = run.cfg
    if cfg.best_metric not in metrics:
        raise InputError(
            f"--best-metric {cfg.best_metric}: not an eval metric of {cfg.task} "
            f"({', '.join(k for k, v in metrics.items() if isinstance(v, (int, float)))})"
        )
    value = metrics[cfg.best_metric]
    if not run.task.better(cfg.best_metric, value, progress.best):
        progress.bad_evals += 1
        return bool(cfg.patience) and progress.bad_evals >= cfg.patience
    progress.best, progress.best_step, progress.bad_evals, progress.best_metrics = (
        value,
        progress.step,
        0,
        metrics,
    )
    model_state = run.dist.model_state(run.model)  # a collective under FSDP
    if run.dist.is_main:
        best = run.run_dir / "best"
        best.mkdir(exist_ok=True)
        torch.save(model_state, best / "model.pt.tmp")
        (best / "model.pt.tmp").replace(best / "model.pt")
    return False


def restore_best(run: Run, progress: TrainingProgress) -> dict[str, Any]:
    """Load the best model back when --best-metric kept one; returns the metrics of the model to save."""
    if not (run.cfg.best_metric and progress.best_step is not None):
        return progress.last_eval
    best = torch.load(run.run_dir / "best" / "model.pt", map_location=run.device, weights_only=True)
    run.dist.load_model_state(run.model, best)
    return progress.best_metrics


# -- resumable states ----------------------------------------------------------------------------------


def save_resumable_state(run: Run, progress: TrainingProgress) -> None:
    """Everything needed to continue bit for bit; gathered from every rank, written by the main one."""
    dist = run.dist
    model_state, optimizer_state = dist.model_state(run.model), dist.optimizer_state(run.model, run.optimizer)
    rng_per_rank = dist.gather_object(rng_state())
    if not dist.is_main:
        return
    state = {
        "config": run.cfg.to_dict(),
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "progress": progress.to_dict(),
        "rng_per_rank": rng_per_rank,
        "world_size": dist.world,
        "unsup": run.unsup.state_dict() if run.unsup is not None else None,
    }
    save_state(run.run_dir, progress.step, state, run.cfg.keep_last)


# -- finish --------------------------------------------------------------------------------------------


def finish(run: Run, progress: TrainingProgress, metrics: dict[str, Any], command: list[str] | None) -> None:
    """Write the checkpoint (model, tokenizer, config, metrics, log, plots, model card) and rename it into
    place; then the run directory goes."""
    dist = run.dist
    model_state = dist.model_state(run.model) if dist.fsdp else None  # FSDP: gathered by every rank
    if dist.is_main:
        output = Path(run.cfg.output)
        work = fresh_work_dir(output)
        try:
            _write_checkpoint(work, run, progress, metrics, model_state, command)
            replace_dir(work, output)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(run.run_dir, ignore_errors=True)
    dist.barrier()
    dist.close()


def _write_checkpoint(
    work: Path, run: Run, progress: TrainingProgress, metrics, model_state, command
) -> None:
    import yaml

    cfg, model = run.cfg, run.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into the base weights
        model = model.merge_and_unload()
    model.save_pretrained(work, safe_serialization=True, state_dict=model_state)
    run.tokenizer.save_pretrained(work)
    (work / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    summary = _summary(progress)
    write_json(work / "metrics.json", {"eval": metrics, "last_eval": progress.last_eval, "train": summary})
    shutil.copy2(run.run_dir / "train_log.jsonl", work / "train_log.jsonl")
    if (run.run_dir / "tensorboard").is_dir():
        shutil.copytree(run.run_dir / "tensorboard", work / "tensorboard")
    if cfg.plots:
        from .plots import write_plots

        write_plots(work, run.task.labels.names if run.task.labels else None)
    _write_model_card(work, run, metrics, summary, command)


def _write_model_card(work: Path, run: Run, metrics, summary, command: list[str] | None) -> None:
    from .model_card import DataSplit, model_card

    cfg = run.cfg
    data = [DataSplit("train", cfg.train, len(run.train_rows))]
    if run.eval_rows is not None:
        data.append(DataSplit("eval", cfg.eval, len(run.eval_rows)))
    card = model_card(
        title=Path(cfg.output).name,
        config=cfg.to_dict(),
        base_model=run.model_path,
        labels=run.task.labels.names if run.task.labels else None,
        class_weights=run.class_weights,
        data=data,
        metrics=metrics,
        train_summary=summary,
        command=command,
    )
    (work / "README.md").write_text(card, encoding="utf-8")


def _summary(progress: TrainingProgress) -> dict[str, Any]:
    return {
        "steps": progress.step,
        "train_seconds": round(progress.train_seconds, 2),
        "train_examples_per_s": round(progress.examples_per_s(), 2),
        "final_train_loss": progress.last_loss,
        "best_step": progress.best_step,
    }


def _run_facts(run: Run) -> dict[str, Any]:
    return {
        "model": run.model_path,
        "task": run.cfg.task,
        "train_rows": len(run.train_rows),
        "eval_rows": len(run.eval_rows or []),
        "total_steps": run.total_steps,
        "device": str(run.device),
        "world_size": run.dist.world,
        "kernels": run.kernels_backend,
        "class_weights": run.class_weights,
    }


# -- helpers -------------------------------------------------------------------------------------------


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
    load_processor = getattr(task, "load_processor", None)  # image tasks: the checkpoint's image processor
    try:
        tokenizer = (
            load_processor(model_path) if load_processor else AutoTokenizer.from_pretrained(model_path)
        )
        model = task.auto_class().from_pretrained(
            model_path, ignore_mismatched_sizes=True, **task.model_kwargs()
        )
    except (OSError, ValueError, KeyError) as e:
        raise InputError(
            f"--model {model_path}: cannot load it for {task.cfg.task} ({str(e).splitlines()[0]})"
        ) from None
    if load_processor:
        return tokenizer, model
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
    if cfg.task in UNPADDED_TASKS:
        from .unpad import apply_unpadding

        model, lines = apply_unpadding(
            model, task=cfg.task, mode="auto" if cfg.unpad else "off", backend=kernels_backend
        )
        notes.extend(lines)
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


def _unsup_objective(cfg, model, tokenizer, model_path, kernels_backend: str):
    if not cfg.unsup_weight or cfg.task == "causal-lm":
        return None  # decoders use the prompt tokens of the same batch: no extra module
    from .unsup import MaskedLMObjective

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    objective = MaskedLMObjective(model_path, base, tokenizer)
    if cfg.unpad and cfg.task in UNPADDED_TASKS:  # the MLM head then runs on the masked tokens only
        from .unpad import apply_unpadding

        apply_unpadding(objective.mlm, task="masked-lm", mode="auto", backend=kernels_backend)
    return objective


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


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
