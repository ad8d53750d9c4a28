"""Flash attention benchmark: our Triton kernels against PyTorch SDPA (GPU).

    python -m bench.kernels_attention [--quick] [--out DIR]      # GPU (bf16)
    python -m bench.kernels_attention --cpu-smoke --out DIR      # harness check on CPU (torch path, tiny)

Fixed token budget ``B * S = 16384``, ``S`` in 512..16384, (heads, head dim) in {(32, 64), (16, 128)}, bf16,
causal and not. For each configuration:

- dense: forward, backward and forward+backward TFLOP/s of ``flash_attention`` (BSHD layout) against SDPA with
  the flash backend forced (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``, same BSHD memory passed as BHSD
  views, which is FA2's native layout). FLOPs: forward ``4 * B * S^2 * H * D`` (halved when causal),
  backward 2.5x forward, forward+backward 3.5x forward.
- padded (30% of the tokens are right padding, per-row lengths drawn around 70% of S):
  ``flash_attention_padded`` (unpad -> varlen kernel -> re-pad, gathers included in the time) against SDPA
  with a boolean key-padding mask
  (``attn_mask``, SDPA picks its backend: flash does not take masks). Reported as times and speedup; the
  TFLOP/s column counts only the useful FLOPs (sum over rows of ``4 * L^2 * H * D``).
- the bf16 matmul ceiling (cuBLAS 8192^3) measured in the same run.

Prints a table, writes ``kernels_attention.json`` (bench.common.write_json) and ``kernels_attention.png``.
Without CUDA (and without --cpu-smoke) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    RESULTS_DIR,
    failure_status,
    free,
    measured_matmul_tflops,
    print_table,
    timer,
    write_outputs,
)

NAME = "kernels_attention"
TOKENS = 16384
SEQLENS = [512, 1024, 2048, 4096, 8192, 16384]
HEADS_DIMS = [(32, 64), (16, 128)]
PAD_FRACTION = 0.30


def _flops_fwd(b: int, s: int, h: int, d: int, causal: bool) -> float:
    f = 4.0 * b * s * s * h * d
    return f / 2 if causal else f


def _useful_flops_fwd(lengths: list[int], h: int, d: int, causal: bool) -> float:
    f = sum(4.0 * n * n * h * d for n in lengths)
    return f / 2 if causal else f


def _tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12 if ms and ms > 0 else float("nan")


def _lengths(b: int, s: int, frac: float, gen) -> list[int]:
    import torch

    if b == 1:
        return [max(1, round(s * (1 - frac)))]
    jitter = torch.empty(b).uniform_(-0.15, 0.15, generator=gen)
    jitter = jitter - jitter.mean()  # keep the mean padding fraction at `frac`
    return [int(min(s, max(1, round(s * (1 - frac + j))))) for j in jitter.tolist()]


def _time_fwd_bwd(fwd: Callable[[], Any], inputs, timer) -> tuple[float, float, float]:
    """(forward ms, backward ms, forward+backward ms)."""
    import torch

    out = fwd()
    dout = torch.randn_like(out)
    t_f = timer(fwd)
    t_b = timer(lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True))

    def both():
        o = fwd()
        torch.autograd.grad(o, inputs, dout)

    t_fb = timer(both)
    return t_f, t_b, t_fb


def run_config(b, s, h, d, causal, dtype, device, time_ms, backend, sdpa_flash: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from kernels.attention import flash_attention, flash_attention_padded

    gen = torch.Generator().manual_seed(s * 131 + h * 7 + d + int(causal))
    q, k, v = (
        torch.randn(b, s, h, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()
        for _ in range(3)
    )
    row: dict[str, Any] = dict(B=b, S=s, H=h, D=d, causal=causal)
    f_fwd = _flops_fwd(b, s, h, d, causal)

    ours = lambda: flash_attention(q, k, v, causal=causal, backend=backend)  # noqa: E731

    def sdpa():
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
        )
        return o.transpose(1, 2)

    if sdpa_flash:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_ref():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return sdpa()
    else:
        sdpa_ref = sdpa

    with torch.no_grad():
        row["max_abs_err_vs_sdpa"] = (ours().float() - sdpa_ref().float()).abs().max().item()
    tf, tb, tfb = _time_fwd_bwd(ours, (q, k, v), time_ms)
    sf, sb, sfb = _time_fwd_bwd(sdpa_ref, (q, k, v), time_ms)
    row.update(
        fwd_ms=tf,
        bwd_ms=tb,
        fwdbwd_ms=tfb,
        sdpa_fwd_ms=sf,
        sdpa_bwd_ms=sb,
        sdpa_fwdbwd_ms=sfb,
        fwd_tflops=_tflops(f_fwd, tf),
        bwd_tflops=_tflops(2.5 * f_fwd, tb),
        fwdbwd_tflops=_tflops(3.5 * f_fwd, tfb),
        sdpa_fwd_tflops=_tflops(f_fwd, sf),
        sdpa_bwd_tflops=_tflops(2.5 * f_fwd, sb),
        sdpa_fwdbwd_tflops=_tflops(3.5 * f_fwd, sfb),
        fwd_vs_sdpa=sf / tf,
        fwdbwd_vs_sdpa=sfb / tfb,
    )

    # 30% right padding: our unpad/varlen/re-pad path vs SDPA with a boolean key-padding mask
    lengths = _lengths(b, s, PAD_FRACTION, gen)
    mask = torch.zeros(b, s, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    mask = mask.to(device)
    attn_mask = mask[:, None, None, :]
    if causal:
        attn_mask = attn_mask & torch.ones(s, s, dtype=torch.bool, device=device).tril()
    ours_pad = lambda: flash_attention_padded(q, k, v, mask, causal=causal, backend=backend)  # noqa: E731

    def sdpa_pad():
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
        )
        return o.transpose(1, 2)

    with torch.no_grad():
        real = mask[:, :, None, None]
        row["pad_max_abs_err_vs_sdpa"] = ((ours_pad().float() - sdpa_pad().float()) * real).abs().max().item()
    pf, pb, pfb = _time_fwd_bwd(ours_pad, (q, k, v), time_ms)
    mf, mb, mfb = _time_fwd_bwd(sdpa_pad, (q, k, v), time_ms)
    f_useful = _useful_flops_fwd(lengths, h, d, causal)
    row.update(
        pad_fraction=1 - sum(lengths) / (b * s),
        pad_fwd_ms=pf,
        pad_fwdbwd_ms=pfb,
        sdpa_masked_fwd_ms=mf,
        sdpa_masked_fwdbwd_ms=mfb,
        pad_fwdbwd_useful_tflops=_tflops(3.5 * f_useful, pfb),
        pad_fwd_vs_sdpa_masked=mf / pf,
        pad_fwdbwd_vs_sdpa_masked=mfb / pfb,
    )
    return row


def draw(plt, rows: list[dict], ceiling: float | None):
    """Per (heads, head dim, causal): TFLOP/s against seqlen on top, speed-up over SDPA below."""
    groups = sorted({(r["H"], r["D"], r["causal"]) for r in rows if "fwd_tflops" in r})
    if not groups:
        return None
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 7.5), squeeze=False)
    for j, (h, d, causal) in enumerate(groups):
        rs = sorted(
            (r for r in rows if (r["H"], r["D"], r["causal"]) == (h, d, causal) and "fwd_tflops" in r),
            key=lambda r: r["S"],
        )
        xs = [r["S"] for r in rs]
        ax = axes[0][j]
        for key, label, style in [
            ("fwd_tflops", "ours fwd", "-o"),
            ("sdpa_fwd_tflops", "SDPA flash fwd", "--o"),
            ("fwdbwd_tflops", "ours fwd+bwd", "-s"),
            ("sdpa_fwdbwd_tflops", "SDPA flash fwd+bwd", "--s"),
        ]:
            ax.plot(xs, [r[key] for r in rs], style, label=label)
        if ceiling:
            ax.axhline(ceiling, color="gray", lw=0.8, ls=":", label="bf16 matmul")
        ax.set_xscale("log", base=2)
        ax.set_title(f"H={h} D={d} {'causal' if causal else 'full'}")
        ax.set_xlabel("seqlen (B*S fixed)")
        ax.set_ylabel("TFLOP/s")
        ax.legend(fontsize=7)
        ax = axes[1][j]
        ax.plot(xs, [r["fwdbwd_vs_sdpa"] for r in rs], "-o", label="fwd+bwd vs SDPA flash")
        ax.plot(
            xs, [r["pad_fwdbwd_vs_sdpa_masked"] for r in rs], "-s", label="30% pad fwd+bwd vs SDPA masked"
        )
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("seqlen")
        ax.set_ylabel("speedup (x)")
        ax.legend(fontsize=7)
    return fig


COLUMNS = [
    "S",
    "B",
    "H",
    "D",
    "causal",
    "fwd_tflops",
    "sdpa_fwd_tflops",
    "fwd_vs_sdpa",
    "bwd_tflops",
    "sdpa_bwd_tflops",
    "fwdbwd_tflops",
    "sdpa_fwdbwd_tflops",
    "fwdbwd_vs_sdpa",
    "pad_fwdbwd_ms",
    "sdpa_masked_fwdbwd_ms",
    "pad_fwdbwd_vs_sdpa_masked",
    "max_abs_err_vs_sdpa",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.kernels_attention", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="seq 1024 and 8192, d=128 only")
    ap.add_argument("--out", type=Path, default=None, help=f"output directory (default {RESULTS_DIR})")
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny fp32 shapes on CPU with the torch path: checks the harness, not the kernels",
    )
    args = ap.parse_args(argv)

    import torch

    if args.cpu_smoke:
        device, dtype, backend, sdpa_flash = torch.device("cpu"), torch.float32, "torch", False
        tokens, seqlens, heads_dims = 128, [64], [(2, 32)]
        ceiling = None
    else:
        if not torch.cuda.is_available():
            print(
                "bench.kernels_attention: CUDA GPU required (use --cpu-smoke to check the harness)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        device, dtype, backend, sdpa_flash = torch.device("cuda"), torch.bfloat16, "triton", True
        tokens = TOKENS
        seqlens = [1024, 8192] if args.quick else SEQLENS
        heads_dims = [(16, 128)] if args.quick else HEADS_DIMS
        ceiling = measured_matmul_tflops(8192, "bfloat16")
        print(f"bf16 matmul ceiling (cuBLAS 8192^3): {ceiling:.0f} TFLOP/s")

    time_ms = timer(device, repeats=1, warmup=1)
    rows = []
    for h, d in heads_dims:
        for s in seqlens:
            b = max(1, tokens // s)
            for causal in (False, True):
                try:
                    row = run_config(b, s, h, d, causal, dtype, device, time_ms, backend, sdpa_flash)
                except Exception as e:  # record and go on (e.g. out of memory on a smaller GPU)
                    row = dict(B=b, S=s, H=h, D=d, causal=causal, error=failure_status(e))
                    free(device)
                rows.append(row)
                print_table([row], COLUMNS + (["error"] if "error" in row else []))

    print()
    print_table(rows, COLUMNS)
    out_dir = args.out or RESULTS_DIR
    payload = dict(
        benchmark=NAME,
        mode="cpu-smoke" if args.cpu_smoke else ("quick" if args.quick else "full"),
        dtype=str(dtype).replace("torch.", ""),
        tokens_per_batch=tokens,
        pad_fraction_target=PAD_FRACTION,
        flops_convention="fwd 4*B*S^2*H*D (halved causal); bwd 2.5x fwd; fwd+bwd 3.5x fwd",
        matmul_ceiling_tflops=ceiling,
        rows=rows,
    )
    write_outputs(NAME, payload, out_dir, functools.partial(draw, rows=rows, ceiling=ceiling))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
