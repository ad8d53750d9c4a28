"""Benchmark: fused cross-entropy and fused linear+cross-entropy vs eager, torch.compile, Liger-Kernel (GPU).

    python -m bench.kernels_cross_entropy [--quick] [--out bench/results] [--sweep]
    python -m bench.kernels_cross_entropy --cpu-smoke [--out DIR]   # harness check on tiny CPU shapes

Cross-entropy: N in {4k, 16k, 32k} tokens x V in {32k, 128k, 256k}, bf16 logits, mean over tokens. For each
arm: forward (as in training: logits require grad, so ours computes the gradient here), fwd+bwd,
bwd = fwd+bwd - fwd (backward cannot be re-run alone: ours runs once per forward), medians via
``bench.common.cuda_time_ms``; achieved GB/s = 2*N*V*2 bytes (read the logits once, write the gradient once:
the least any implementation must move) / fwd+bwd time, and its share of the device-to-device copy bandwidth
measured in the same run; peak memory = ``max_memory_allocated`` during one fwd+bwd minus what was allocated
before it (the logits themselves are not counted; a gradient buffer that is not the logits is).
``loss_err`` = |loss - fp32 reference| on the first call.

Fused linear+CE: H=4096, V=128k, N in {8k, 32k}: ours (fp32 and weight-dtype dweight accumulation) vs unfused
(``F.linear`` then ``F.cross_entropy``), ``F.linear_cross_entropy`` (chunked options when torch has them) and
Liger's fused linear CE when installed; ``loss_diff`` = |loss - ours|, ``time_vs_unfused`` and
``mem_vs_unfused`` = ratios to the unfused arm. Out-of-memory cases are recorded as "oom".

Writes ``<out>/kernels_cross_entropy.json`` (``bench.common.write_json``) and a PNG plot next to it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    RESULTS_DIR,
    cuda_time_ms,
    measured_copy_bandwidth_gbs,
    peak_mib,
    print_table,
    run_arm,
    sync,
    timer,
    write_outputs,
)

if TYPE_CHECKING:  # torch is imported in the functions that run, so --help stays fast
    import torch

NAME = "kernels_cross_entropy"
CE_NS = (4096, 16384, 32768)
CE_VS = (32768, 131072, 262144)
FLCE_H, FLCE_V, FLCE_NS = 4096, 131072, (8192, 32768)
SWEEP_CONFIGS = ((4096, 8), (8192, 8), (8192, 16), (16384, 16), (16384, 32), (32768, 32))

Arm = Callable[..., "torch.Tensor"]
Timer = Callable[[Callable[[], Any]], float]


# --------------------------------------------------------------------------------------------------------
# Arms
# --------------------------------------------------------------------------------------------------------


def ce_arms(device: str) -> dict[str, Arm]:
    """name -> fn(logits, target) returning the mean loss."""
    import torch
    import torch.nn.functional as F

    from kernels.cross_entropy import cross_entropy

    arms: dict[str, Arm] = {}
    if device == "cuda":
        arms["ours"] = lambda x, t: cross_entropy(x, t, backend="triton")
    else:
        arms["ours(torch path)"] = lambda x, t: cross_entropy(x, t, backend="torch")
    arms["eager"] = lambda x, t: F.cross_entropy(x, t)
    if device == "cuda":
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        arms["compile"] = torch.compile(F.cross_entropy, dynamic=False)
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss

            liger = LigerCrossEntropyLoss()
            arms["liger"] = lambda x, t: liger(x, t)
        except ImportError:
            print("liger-kernel not installed: skipping the Liger arm (pip install liger-kernel)")
    return arms


def flce_arms(device: str) -> dict[str, Arm]:
    """name -> fn(hidden, weight, target) returning the mean loss."""
    import torch
    import torch.nn.functional as F

    from kernels.fused_linear_cross_entropy import fused_linear_cross_entropy

    backend = "triton" if device == "cuda" else "torch"
    arms: dict[str, Arm] = {
        "ours": lambda h, w, t: fused_linear_cross_entropy(h, w, t, backend=backend),
        "ours(accum=weight dtype)": lambda h, w, t: fused_linear_cross_entropy(
            h, w, t, accum_dtype=None, backend=backend
        ),
        "unfused": lambda h, w, t: F.cross_entropy(F.linear(h, w), t),
    }
    if device == "cuda" and hasattr(F, "linear_cross_entropy"):  # on CPU, its first call imports dynamo
        if hasattr(torch.nn, "LinearCrossEntropyOptions"):
            opts = torch.nn.LinearCrossEntropyOptions()
            arms["torch.linear_ce(chunked)"] = lambda h, w, t: F.linear_cross_entropy(h, w, t, options=opts)
        else:
            arms["torch.linear_ce"] = lambda h, w, t: F.linear_cross_entropy(h, w, t)
    if device == "cuda":
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()
            arms["liger"] = lambda h, w, t: liger(w, h, t)
        except ImportError:
            print("liger-kernel not installed: skipping the Liger fused linear CE arm")
    return arms


# --------------------------------------------------------------------------------------------------------
# Measurements (bench.common: CUDA events + memory stats on GPU, wall clock on CPU)
# --------------------------------------------------------------------------------------------------------


def _ce_fwd_bwd(fn: Arm, x: torch.Tensor, t: torch.Tensor) -> None:
    x.grad = None
    fn(x, t).backward()


def _flce_fwd_bwd(fn: Arm, hid: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> None:
    hid.grad = w.grad = None
    fn(hid, w, t).backward()


def _reference_ce(x: torch.Tensor, t: torch.Tensor, rows: int = 2048) -> float:
    """fp32 mean cross-entropy, computed in row chunks (no fp32 copy of all logits)."""
    import torch

    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], rows):
        xc = x[s : s + rows].detach().float()
        total += (torch.logsumexp(xc, 1) - xc.gather(1, t[s : s + rows, None]).squeeze(1)).sum().double()
    return float(total / x.shape[0])


def _measure_ce(row, fn: Arm, *, n, v, device, dtype, time_ms: Timer, copy_gbs, ref: dict) -> None:
    import torch

    g = torch.Generator(device=device).manual_seed(n * 7 + v)
    x = torch.randn(n, v, device=device, dtype=dtype, generator=g).requires_grad_()
    t = torch.randint(0, v, (n,), device=device, generator=g)
    if "loss" not in ref:
        ref["loss"] = _reference_ce(x, t)
    fwd = functools.partial(fn, x, t)
    fwd_bwd = functools.partial(_ce_fwd_bwd, fn, x, t)
    x.grad = None
    loss = fn(x, t)  # first call: warm-up/compile and correctness (in-place arms destroy x after it)
    row["loss_err"] = abs(float(loss.detach().float()) - ref["loss"])
    loss.backward()
    loss = x.grad = None  # the graph of the first call must not stay alive (nor count as memory)
    sync(device)
    row["peak_mib"] = peak_mib(fwd_bwd, device)
    row["fwd_ms"] = time_ms(fwd)
    row["fwd_bwd_ms"] = time_ms(fwd_bwd)
    row["bwd_ms"] = row["fwd_bwd_ms"] - row["fwd_ms"]
    row["gbs"] = 2 * n * v * x.element_size() / (row["fwd_bwd_ms"] * 1e-3) / 1e9
    if copy_gbs:
        row["pct_copy_bw"] = 100 * row["gbs"] / copy_gbs


def bench_ce_shape(
    n: int,
    v: int,
    arms: dict[str, Arm],
    *,
    device: str,
    dtype: torch.dtype,
    time_ms: Timer,
    copy_gbs: float | None,
) -> list[dict[str, Any]]:
    """One row per arm at N x V; every arm sees the same logits (the loss reference is fp32 on them)."""
    shape = dict(n=n, v=v, device=device, dtype=dtype, time_ms=time_ms, copy_gbs=copy_gbs, ref={})
    rows = []
    for name, fn in arms.items():
        row: dict[str, Any] = {"bench": "ce", "arm": name, "N": n, "V": v, "dtype": str(dtype).split(".")[-1]}
        rows.append(run_arm(row, device, _measure_ce, fn, **shape))
    return rows


def _measure_flce(row, fn: Arm, *, n, h, v, device, dtype, time_ms: Timer, ref: dict) -> None:
    import torch

    g = torch.Generator(device=device).manual_seed(n + v)
    hid = torch.randn(n, h, device=device, dtype=dtype, generator=g).requires_grad_()
    w = (torch.randn(v, h, device=device, dtype=dtype, generator=g) * h**-0.5).requires_grad_()
    t = torch.randint(0, v, (n,), device=device, generator=g)
    fwd_bwd = functools.partial(_flce_fwd_bwd, fn, hid, w, t)
    loss = fn(hid, w, t)
    ref.setdefault("loss", float(loss.detach().float()))  # the first arm that runs ("ours") is the reference
    row["loss_diff"] = abs(float(loss.detach().float()) - ref["loss"])
    loss.backward()
    loss = hid.grad = w.grad = None
    row["peak_mib"] = peak_mib(fwd_bwd, device)
    row["fwd_bwd_ms"] = time_ms(fwd_bwd)


def bench_flce_shape(
    n: int,
    h: int,
    v: int,
    arms: dict[str, Arm],
    *,
    device: str,
    dtype: torch.dtype,
    time_ms: Timer,
) -> list[dict[str, Any]]:
    """One row per arm at N x H -> V, with time and memory ratios to the unfused arm."""
    shape = dict(n=n, h=h, v=v, device=device, dtype=dtype, time_ms=time_ms, ref={})
    rows = []
    for name, fn in arms.items():
        row: dict[str, Any] = {"bench": "flce", "arm": name, "N": n, "H": h, "V": v}
        row["dtype"] = str(dtype).split(".")[-1]
        rows.append(run_arm(row, device, _measure_flce, fn, **shape))
    _add_ratios(rows, base="unfused")
    return rows


def _add_ratios(rows: list[dict[str, Any]], base: str) -> None:
    ref = next((r for r in rows if r["arm"] == base and r["status"] == "ok"), None)
    if ref is None:
        return
    for r in rows:
        if r["status"] != "ok":
            continue
        r[f"time_vs_{base}"] = r["fwd_bwd_ms"] / ref["fwd_bwd_ms"]
        if r.get("peak_mib") and ref.get("peak_mib"):
            r[f"mem_vs_{base}"] = r["peak_mib"] / ref["peak_mib"]


def summarize_ce(rows: list[dict[str, Any]], ours: str) -> list[dict[str, Any]]:
    """Speed-ups of ours over each other arm, per shape (fwd+bwd)."""
    out = []
    for key in sorted({(r["N"], r["V"]) for r in rows}):
        shape = {r["arm"]: r for r in rows if (r["N"], r["V"]) == key and r["status"] == "ok"}
        if ours not in shape:
            continue
        s: dict[str, Any] = {"N": key[0], "V": key[1], "ours_pct_copy_bw": shape[ours].get("pct_copy_bw")}
        for arm, r in shape.items():
            if arm != ours:
                s[f"speedup_vs_{arm}"] = r["fwd_bwd_ms"] / shape[ours]["fwd_bwd_ms"]
        out.append(s)
    return out


def _fixed_launch_config(n_cols: int, *, block: int, warps: int) -> tuple[int, int, bool]:
    return block, warps, n_cols <= block


def sweep_ce_configs(n: int, v: int, time_ms: Timer) -> list[dict[str, Any]]:
    """Time our CE fwd+bwd for several (BLOCK, num_warps) launch configs (to tune ``_launch_config``)."""
    import torch

    ce = importlib.import_module("kernels.cross_entropy")  # the package exports a function of that name

    default = ce._launch_config
    arm = functools.partial(ce.cross_entropy, backend="triton")
    rows = []
    try:
        for block, warps in SWEEP_CONFIGS:
            ce._launch_config = functools.partial(_fixed_launch_config, block=block, warps=warps)
            arms = {f"BLOCK={block},warps={warps}": arm}
            rows += bench_ce_shape(
                n, v, arms, device="cuda", dtype=torch.bfloat16, time_ms=time_ms, copy_gbs=None
            )
    finally:
        ce._launch_config = default
    return rows


# --------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------


def _k(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def draw(plt, ce_rows: list[dict[str, Any]], flce_rows: list[dict[str, Any]]):
    """fwd+bwd time of every arm per shape: cross-entropy on the left, linear + CE on the right."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    panels = (
        (axes[0], ce_rows, "cross-entropy fwd+bwd", lambda r: f"{_k(r['N'])} x {_k(r['V'])}"),
        (axes[1], flce_rows, "linear + CE fwd+bwd", lambda r: f"N={_k(r['N'])}"),
    )
    for ax, rows, label, key in panels:
        shapes = list(dict.fromkeys(key(r) for r in rows))
        arms = list(dict.fromkeys(r["arm"] for r in rows))
        width = 0.8 / max(1, len(arms))
        for i, arm in enumerate(arms):
            ok = {key(r): r["fwd_bwd_ms"] for r in rows if r["arm"] == arm and r["status"] == "ok"}
            vals = [ok.get(s, 0.0) for s in shapes]
            ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=arm)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=30)
        ax.set_ylabel("ms (median; 0 = oom/skipped)")
        ax.set_title(label)
        ax.legend(fontsize=8)
    return fig


def _finish(name: str, payload: dict[str, Any], out_dir: Path) -> Path:
    ce_cols = [
        "arm",
        "N",
        "V",
        "fwd_ms",
        "bwd_ms",
        "fwd_bwd_ms",
        "gbs",
        "pct_copy_bw",
        "peak_mib",
        "loss_err",
        "status",
    ]
    flce_cols = [
        "arm",
        "N",
        "H",
        "V",
        "fwd_bwd_ms",
        "peak_mib",
        "time_vs_unfused",
        "mem_vs_unfused",
        "loss_diff",
        "status",
    ]
    if payload["ce"]:
        print_table(payload["ce"], ce_cols)
        print()
    if payload.get("ce_summary"):
        print_table(payload["ce_summary"], list(dict.fromkeys(k for r in payload["ce_summary"] for k in r)))
        print()
    if payload.get("ce_sweep"):
        print_table(payload["ce_sweep"], ["arm", "N", "V", "fwd_bwd_ms", "gbs", "status"])
        print()
    if payload["flce"]:
        print_table(payload["flce"], flce_cols)
    print()
    path, _ = write_outputs(
        name, payload, out_dir, functools.partial(draw, ce_rows=payload["ce"], flce_rows=payload["flce"])
    )
    return path


def run_cpu_smoke(out_dir: Path | str | None = None) -> dict[str, Any]:
    """The same harness on tiny CPU shapes (torch reference path vs eager): testable without a GPU."""
    import torch

    out_dir = Path(out_dir or RESULTS_DIR)
    cpu_timer = timer("cpu", repeats=3, warmup=1)
    ce_rows = []
    for n, v in ((64, 37), (64, 1000)):
        ce_rows += bench_ce_shape(
            n, v, ce_arms("cpu"), device="cpu", dtype=torch.float32, time_ms=cpu_timer, copy_gbs=None
        )
    flce_rows = bench_flce_shape(
        64, 32, 1000, flce_arms("cpu"), device="cpu", dtype=torch.float32, time_ms=cpu_timer
    )
    payload = {
        "mode": "cpu-smoke",
        "ce": ce_rows,
        "ce_summary": summarize_ce(ce_rows, "ours(torch path)"),
        "flce": flce_rows,
    }
    _finish(f"{NAME}_cpu_smoke", payload, out_dir)
    return payload


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.kernels_cross_entropy", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer shapes: N=16k x V in {32k,128k}; linear+CE N=8k"
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON and PNG")
    p.add_argument("--sweep", action="store_true", help="also sweep (BLOCK, num_warps) at N=16k, V=128k")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run of the harness (no GPU needed)")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        run_cpu_smoke(args.out)
        return
    import torch

    if not torch.cuda.is_available():
        print(
            "kernels_cross_entropy: needs a CUDA GPU (none found); "
            "use --cpu-smoke to check the harness on CPU",
            file=sys.stderr,
        )
        raise SystemExit(2)
    from kernels._backend import triton_available

    if not triton_available():
        print("kernels_cross_entropy: triton is not importable; install triton", file=sys.stderr)
        raise SystemExit(2)

    ns, vs = ((16384,), (32768, 131072)) if args.quick else (CE_NS, CE_VS)
    copy_gbs = measured_copy_bandwidth_gbs()
    print(f"device: {torch.cuda.get_device_name(0)}; measured copy bandwidth {copy_gbs:.0f} GB/s")
    ce_rows = []
    arms = ce_arms("cuda")
    for n in ns:
        for v in vs:
            print(f"cross-entropy N={n} V={v} ...", flush=True)
            ce_rows += bench_ce_shape(
                n, v, arms, device="cuda", dtype=torch.bfloat16, time_ms=cuda_time_ms, copy_gbs=copy_gbs
            )
    sweep = sweep_ce_configs(16384, 131072, cuda_time_ms) if args.sweep else []
    flce_rows = []
    for n in FLCE_NS[:1] if args.quick else FLCE_NS:
        print(f"linear + cross-entropy N={n} H={FLCE_H} V={FLCE_V} ...", flush=True)
        flce_rows += bench_flce_shape(
            n, FLCE_H, FLCE_V, flce_arms("cuda"), device="cuda", dtype=torch.bfloat16, time_ms=cuda_time_ms
        )
    payload = {
        "mode": "quick" if args.quick else "full",
        "copy_bandwidth_gbs": copy_gbs,
        "ce": ce_rows,
        "ce_summary": summarize_ce(ce_rows, "ours"),
        "ce_sweep": sweep,
        "flce": flce_rows,
    }
    _finish(NAME, payload, args.out)


if __name__ == "__main__":
    main()
