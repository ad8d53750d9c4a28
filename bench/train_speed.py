"""End-to-end fine-tuning speed: our training step against transformers.Trainer (+ Liger) on one GPU.

Every arm trains the same randomly initialized model on the same synthetic batches (token ids drawn at
random, lengths drawn from the real dataset's length distribution when ../shared/data is there), in
bf16 autocast with AdamW and the same global batch. Each arm runs in its own process so peak-memory
numbers do not leak between arms. Measured after `--warmup` steps over `--steps` steps: real (non-pad)
tokens per second, median step time, peak memory, and the loss of the last step.

Workloads:
  encoder  BERT-base-sized sequence classifier, SST-2 lengths, 32 sequences a step
  decoder  Llama-style ~1B causal LM, Alpaca lengths (prompt masked), 16 sequences a step, max 1024
Arms: see ``ARMS`` below (``--help`` lists them).

    python -m bench.train_speed --workload all            # GPU: full run, JSON + PNG under bench/results
    python -m bench.train_speed --cpu-smoke --out /tmp/x  # tiny models on CPU: tests the harness itself
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import StepTimer, peak_memory_gib, print_table, write_json, write_outputs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# The arms, in run order: name -> what it trains with. A new arm goes here (and in CUDA_ONLY /
# DECODER_ONLY / ENCODER_ONLY when it needs them); run_arm sets up its model and step, and the harness,
# table, JSON, plot and `sft-bench gpu-suite` pick it up by name.
ARMS = {
    "trainer": "transformers.Trainer, SDPA attention, padded batches",
    "trainer-liger": "the same + Liger-Kernel's patch for the model family (needs liger-kernel)",
    "ours-torch": "our step: our loss path (torch reference), SDPA attention, padded batches",
    "ours-unpad": "ours-torch, encoder padding-free as sft-train trains it (sft.unpad; encoder only)",
    "ours-triton": "our step: Triton cross-entropy / fused linear CE + Triton flash attention (unpadded)",
    "ours-packed": "ours-triton with packed rows (decoder only)",
    "ours-compile": "ours-torch under torch.compile",
}
CUDA_ONLY = {"ours-triton", "ours-packed"}
DECODER_ONLY = {"ours-packed"}
ENCODER_ONLY = {"ours-unpad"}


LENGTH_DATA = {"encoder": SHARED / "sst2" / "train.tsv", "decoder": SHARED / "alpaca" / "alpaca_data.json"}


def length_source(workload: str) -> str:
    """Where the workload's example lengths come from (recorded with the results)."""
    path = LENGTH_DATA[workload]
    return str(path) if path.exists() else "synthetic log-normal (no ../shared/data here)"


def lengths_for(workload: str, n: int, max_len: int, seed: int = 0) -> list[tuple[int, int]]:
    """(total length, prompt length) of n examples, from the real data's word counts when present."""
    rng = random.Random(seed)
    if workload == "encoder":
        path = LENGTH_DATA["encoder"]
        if path.exists():
            words = [len(line.split("\t")[0].split()) for line in path.read_text().splitlines()[1:]]
        else:
            words = [max(1, int(rng.lognormvariate(2.3, 0.6))) for _ in range(5000)]
        return [(min(max_len, int(rng.choice(words) * 1.3) + 2), 0) for _ in range(n)]
    path = LENGTH_DATA["decoder"]
    if path.exists():
        recs = json.loads(path.read_text())
        pairs = [(len((r["instruction"] + " " + r["input"]).split()), len(r["output"].split())) for r in recs]
    else:
        pairs = [
            (max(4, int(rng.lognormvariate(3.0, 0.7))), max(1, int(rng.lognormvariate(4.0, 0.9))))
            for _ in range(5000)
        ]
    out = []
    for _ in range(n):
        p, r = rng.choice(pairs)
        prompt = int(p * 1.3) + 8
        total = min(max_len, prompt + int(r * 1.3) + 1)
        out.append((total, min(prompt, total - 1)))
    return out


def build_model(workload: str, smoke: bool):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if workload == "encoder":
        cfg = (
            BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
            if smoke
            else BertConfig()
        )  # bert-base: 768 x 12 layers
        cfg.num_labels = 2
        return BertForSequenceClassification(cfg)
    cfg = (
        LlamaConfig(
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        if smoke
        else LlamaConfig(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=4096,
        )
    )
    return LlamaForCausalLM(cfg)


def make_batches(workload: str, steps: int, per_step: int, vocab: int, max_len: int, packed: bool, seed: int):
    """Lists of rows (dicts of python lists), the same examples for every arm of a workload."""
    from sft.causal import pack

    rng = random.Random(seed)
    batches = []
    for step in range(steps):
        shapes = lengths_for(workload, per_step, max_len, seed=seed * 100_003 + step)
        rows = []
        for total, prompt in shapes:
            ids = [rng.randrange(5, vocab) for _ in range(total)]
            if workload == "encoder":
                rows.append({"input_ids": ids, "attention_mask": [1] * total, "label": rng.randrange(2)})
            else:
                rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
        if packed:
            rows = pack(rows, max_len)
        batches.append(rows)
    return batches


def run_arm(arm: str, workload: str, steps: int, warmup: int, smoke: bool, seed: int) -> dict:
    import torch

    from sft.causal import collate_causal
    from sft.config import TrainConfig
    from sft.tasks import CausalLM, SequenceClassification

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(workload, smoke)
    vocab = model.config.vocab_size
    max_len = 128 if workload == "encoder" else (128 if smoke else 1024)
    per_step = (8 if smoke else 32) if workload == "encoder" else (4 if smoke else 16)
    batches = make_batches(workload, warmup + steps, per_step, vocab, max_len, arm == "ours-packed", seed)
    if arm.startswith("trainer"):
        return _run_trainer(arm, model, batches, workload, warmup, device)

    backend = "triton" if arm in ("ours-triton", "ours-packed") else "torch"
    cfg = TrainConfig(
        train="-",
        task="causal-lm" if workload == "decoder" else "sequence-classification",
        packing=arm == "ours-packed",
    )
    task = CausalLM(cfg) if workload == "decoder" else SequenceClassification(cfg)
    if backend == "triton":
        from sft.patch_attention import patch_model

        patch_model(model, backend="triton")
    if arm == "ours-unpad":  # varlen attention: the Triton kernel on CUDA, torch length buckets on CPU
        from sft.unpad import apply_unpadding

        apply_unpadding(model, task="sequence-classification", mode="auto", backend="auto")
    model.to(device)
    step_model = model
    if arm == "ours-compile":  # the decoder loss calls the body directly, so compile that part
        if workload == "decoder":
            model.model = torch.compile(model.model)
        else:
            step_model = torch.compile(model)
    # Trainer's defaults, matched: AdamW lr 1e-4, no weight decay, constant schedule, clip at 1.0.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=device.type == "cuda")

    def collate(rows):
        if workload == "decoder":
            return {k: v.to(device) for k, v in collate_causal(rows, 0).items()}
        return task.collate(rows, 0, device)

    steps, tokens, losses = StepTimer(device, warmup), [], []
    for rows in batches:
        batch = collate(rows)
        with steps.step():
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                loss = task.loss(step_model, batch, backend)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        if steps.timed:
            tokens.append(int(batch["attention_mask"].sum()))
    return _summary(steps, tokens, losses, device)


def _run_trainer(arm, model, batches, workload, warmup, device) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    if arm == "trainer-liger":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    flat = [r for rows in batches for r in rows]
    per_step = len(batches[0])
    if workload == "encoder":
        flat = [{"input_ids": r["input_ids"], "labels": r["label"]} for r in flat]
        collator = _PadCollator(0)
    else:
        collator = _PadCollator(0, labels_are_sequences=True)
    steps, tokens = StepTimer(device, warmup), []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            steps.start()

        def on_step_end(self, args, state, control, **kw):
            steps.stop()

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="speed-"),
        per_device_train_batch_size=per_step,
        max_steps=len(batches),
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        bf16=device.type == "cuda",
        max_grad_norm=1.0,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=device.type != "cuda",
        dataloader_num_workers=0,
        seed=0,
    )

    class InOrder(Trainer):  # the same batches in the same order as the other arms
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    trainer = InOrder(model=model, args=args, train_dataset=flat, data_collator=collator, callbacks=[Timer()])
    result = trainer.train()
    for rows in batches[warmup:]:
        tokens.append(sum(len(r["input_ids"]) for r in rows))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [result.training_loss]
    return _summary(steps, tokens[: len(steps.times)], losses, device)


class _PadCollator:
    def __init__(self, pad_id: int, labels_are_sequences: bool = False):
        self.pad_id, self.seq_labels = pad_id, labels_are_sequences

    def __call__(self, rows):
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        pad = lambda xs, v: [list(x) + [v] * (width - len(x)) for x in xs]  # noqa: E731
        batch = {
            "input_ids": torch.tensor(pad([r["input_ids"] for r in rows], self.pad_id)),
            "attention_mask": torch.tensor(pad([[1] * len(r["input_ids"]) for r in rows], 0)),
        }
        if self.seq_labels:
            batch["labels"] = torch.tensor(pad([r["labels"] for r in rows], -100))
        else:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch


def _summary(steps: StepTimer, tokens: list[int], losses: list[float], device) -> dict:
    return {
        "tokens_per_s": sum(tokens) / sum(steps.times),
        "median_step_ms": steps.median_ms(),
        "steps_timed": len(steps.times),
        "peak_memory_gib": peak_memory_gib(device),
        "final_loss": losses[-1],
        "losses": losses,
    }


def draw(plt, rows: list[dict]):
    """One row of panels per workload: tokens/s, peak memory (GPU only) and the loss of every step."""
    workloads = sorted({r["workload"] for r in rows})
    fig, axes = plt.subplots(len(workloads), 3, figsize=(15, 4 * len(workloads)), squeeze=False)
    for (ax_speed, ax_mem, ax_loss), workload in zip(axes, workloads, strict=False):
        ok = [r for r in rows if r["workload"] == workload and r["status"] == "ok"]
        names = [r["arm"] for r in ok]
        ax_speed.barh(names, [r["tokens_per_s"] for r in ok])
        ax_speed.set_title(f"{workload}: real tokens / s")
        ax_mem.barh(names, [r["peak_memory_gib"] or 0 for r in ok])
        ax_mem.set_title(f"{workload}: peak memory (GiB)")
        for r in ok:
            ax_loss.plot(range(1, len(r["losses"]) + 1), r["losses"], label=r["arm"])
        ax_loss.set_title(f"{workload}: loss per step")
        ax_loss.set_xlabel("step")
        ax_loss.legend(fontsize=8)
    return fig


def _run_arm_process(arm: str, workload: str, a: argparse.Namespace) -> dict:
    """One arm in its own process (so peak memory does not leak between arms): its row."""
    cmd = [sys.executable, "-m", "bench.train_speed", "--one", f"{arm}:{workload}"]
    cmd += ["--steps", str(a.steps), "--warmup", str(a.warmup), "--seed", str(a.seed)]
    cmd += ["--cpu-smoke"] if a.cpu_smoke else []
    row = {"workload": workload, "arm": arm}
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            },
            timeout=a.arm_timeout,
        )
    except subprocess.TimeoutExpired:
        return {**row, "status": f"failed: timeout after {a.arm_timeout:g} s"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**row, "status": f"failed: {err[:200]}"}
    return {**row, "status": "ok", **json.loads(line[7:])}


def _add_ratios(rows: list[dict]) -> None:
    """speedup_vs_trainer and memory_vs_trainer of every arm that ran, per workload."""
    for workload in dict.fromkeys(r["workload"] for r in rows):
        base = next(
            (r for r in rows if r["workload"] == workload and r["arm"] == "trainer" and r["status"] == "ok"),
            None,
        )
        for r in rows:
            if r["workload"] == workload and base and r["status"] == "ok":
                r["speedup_vs_trainer"] = r["tokens_per_s"] / base["tokens_per_s"]
                if base.get("peak_memory_gib") and r.get("peak_memory_gib"):
                    r["memory_vs_trainer"] = r["peak_memory_gib"] / base["peak_memory_gib"]


COLUMNS = [
    "workload",
    "arm",
    "status",
    "tokens_per_s",
    "median_step_ms",
    "peak_memory_gib",
    "final_loss",
    "speedup_vs_trainer",
    "memory_vs_trainer",
]


def main(argv: list[str] | None = None) -> None:
    arms_help = "; ".join(f"{name}: {what}" for name, what in ARMS.items())
    p = argparse.ArgumentParser(prog="sft-bench train", description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="all", choices=["encoder", "decoder", "all"])
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, in run order ({arms_help})")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--arm-timeout", type=float, help="seconds one arm may run before it is recorded as failed"
    )
    p.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU (tests the harness)")
    p.add_argument("--out", help="directory for JSON/PNG [default: bench/results]")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one arm:workload, print JSON
    a = p.parse_args(argv)
    arms = a.arms.split(",")
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        p.error(f"--arms: unknown arm {unknown[0]!r} (known: {', '.join(ARMS)})")
    if a.one:
        arm, workload = a.one.split(":")
        print("RESULT " + json.dumps(run_arm(arm, workload, a.steps, a.warmup, a.cpu_smoke, a.seed)))
        return
    import torch

    if not torch.cuda.is_available() and not a.cpu_smoke:
        print("bench.train_speed needs a CUDA GPU (or --cpu-smoke for the harness check)", file=sys.stderr)
        raise SystemExit(2)
    workloads = ["encoder", "decoder"] if a.workload == "all" else [a.workload]
    name = "train_speed_cpu_smoke" if a.cpu_smoke else "train_speed"
    out_dir = Path(a.out) if a.out else None
    lengths_from = {w: length_source(w) for w in workloads}
    rows = []
    for workload in workloads:
        for arm in arms:
            if (arm in DECODER_ONLY and workload == "encoder") or (
                arm in ENCODER_ONLY and workload == "decoder"
            ):
                continue
            if arm in CUDA_ONLY and not torch.cuda.is_available():
                rows.append({"workload": workload, "arm": arm, "status": "skipped: needs CUDA"})
                continue
            rows.append(_run_arm_process(arm, workload, a))
            print(rows[-1], flush=True)
            # the record so far, so a run stopped from outside still leaves the arms it finished
            partial = {"args": vars(a), "lengths_from": lengths_from, "complete": False, "results": rows}
            write_json(name, partial, out_dir)
    _add_ratios(rows)
    print_table(rows, COLUMNS)
    payload = {"args": vars(a), "lengths_from": lengths_from, "complete": True, "results": rows}
    write_outputs(name, payload, out_dir, functools.partial(draw, rows=rows))


if __name__ == "__main__":
    main()
