"""Fused LM head + cross-entropy: ``cross_entropy(hidden @ weight.T + bias, target)``, no N x V logits.

Public API::

    fused_linear_cross_entropy(hidden, weight, target, bias=None, *, ignore_index=-100, label_smoothing=0.0,
                               lse_square_scale=0.0, softcap=None, reduction="mean", chunk_size=None,
                               memory_budget_bytes=None, accum_dtype=torch.float32, backend="auto")
    FusedLinearCrossEntropyLoss(nn.Module)

``hidden`` ``(N, H)``, ``weight`` ``(V, H)`` (the LM head layout), ``bias`` ``(V,)`` or None, all of one dtype
(fp32/bf16/fp16), or any of these under ``torch.autocast`` (the matmuls then run in the autocast dtype, like
``F.linear``; gradients come back in each input's dtype); ``target`` ``(N,)``. Loss semantics are those of
:func:`kernels.cross_entropy.cross_entropy` (no class weights here).

How it works: the tokens are processed in chunks of ``chunk_size`` rows (by default as many as fit a logits
chunk of ``memory_budget_bytes``, 512 MiB). For each chunk: ``logits = hidden_c @ weight.T (+ bias)`` into one
reused buffer; the cross-entropy kernel turns it into ``dloss/dlogits`` in place; then
``dhidden_c = dlogits @ weight`` and ``dweight += dlogits.T @ hidden_c``, ``dbias += dlogits.sum(0)``, with
``dweight``/``dbias`` accumulated in ``accum_dtype`` (fp32 by default; on CUDA the matmul accumulates into the
fp32 buffer directly when torch supports ``addmm(..., out_dtype=)``). So the gradients are complete at the
end of the forward (the scales of 'mean' are known up front, on the device); the backward only multiplies them
by ``grad_output``. ``reduction="none"`` cannot be handled that way (``dweight`` depends on the per-row
``grad_output``), so there the forward computes only the loss and the backward recomputes the chunks.

Peak extra memory: one logits chunk + ``dweight`` in ``accum_dtype`` (V*H*4 bytes for fp32: 2 GiB for a
128k x 4096 head) + its final copy in the weight dtype + ``dhidden``. ``accum_dtype=None`` accumulates in the
weight dtype (half the memory, one rounding per chunk).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ._backend import resolve_backend
from .cross_entropy import (
    _DTYPES,
    _alloc,
    _autocast_on,
    _ce_rows,
    _CEOptions,
    _check_options,
    _row_stats,
    _scale_,
)

__all__ = ["fused_linear_cross_entropy", "FusedLinearCrossEntropyLoss"]

DEFAULT_MEMORY_BUDGET_BYTES = 512 * 2**20


def chunk_rows(
    n_rows: int,
    n_cols: int,
    elem_size: int,
    chunk_size: int | None = None,
    memory_budget_bytes: int | None = None,
) -> int:
    """Rows per chunk: ``chunk_size`` if given, else as many as fit ``memory_budget_bytes`` of logits
    (rounded down to a multiple of 256 rows when that many fit, for matmul tiling), at least 1."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return max(1, min(int(chunk_size), n_rows))
    budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else int(memory_budget_bytes)
    if budget <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes}")
    rows = budget // max(1, n_cols * elem_size)
    if rows >= 256:
        rows -= rows % 256
    return max(1, min(rows, n_rows))


@functools.cache
def _addmm_out_dtype_works(device: torch.device) -> bool:
    """Whether ``torch.addmm(acc32, a16, b16, out_dtype=float32, out=acc32)`` works (and is right) here.

    Checked once per device on a tiny product (one host sync, once per process)."""
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(33, 17, generator=g).to(device, torch.bfloat16)
        b = torch.randn(17, 9, generator=g).to(device, torch.bfloat16)
        acc = torch.randn(33, 9, generator=g).to(device)
        ref = acc + a.float() @ b.float()
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        return bool(torch.allclose(acc, ref, rtol=1e-3, atol=1e-3))
    except Exception:
        return False


def _autocast_dtype(device_type: str) -> torch.dtype:
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def _accumulate_mm_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` where ``acc`` may have a wider dtype than ``a``/``b``."""
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda and _addmm_out_dtype_works(acc.device):
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    elif acc.is_cuda:
        acc.add_(torch.mm(a, b))  # one rounding of the chunk's product to the input dtype
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def _chunked_pass(
    backend,
    hidden,
    weight,
    bias,
    target,
    stats,
    opts,
    rows,
    *,
    grad_scale,
    need_dx,
    need_dw,
    need_db,
    accum_dtype,
    compute_dtype,
):
    """Loss rows (fp32) and, as requested, (dhidden, dweight, dbias) in the dtypes of the inputs.

    The matmuls run in ``compute_dtype`` (the inputs' dtype, or the autocast dtype)."""
    out_dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
    hidden, weight = hidden.to(compute_dtype), weight.to(compute_dtype)
    bias = None if bias is None else bias.to(compute_dtype)
    n_rows, n_cols = hidden.shape[0], weight.shape[0]
    dev, dtype = hidden.device, hidden.dtype
    any_grad = need_dx or need_dw or need_db
    loss_rows = _alloc((n_rows,), torch.float32, dev)
    lse = torch.empty((n_rows,), dtype=torch.float32, device=dev)
    dx = _alloc(hidden.shape, dtype, dev) if need_dx else None
    dw = torch.zeros(weight.shape, dtype=accum_dtype or out_dtypes[1], device=dev) if need_dw else None
    db = torch.zeros((n_cols,), dtype=accum_dtype or out_dtypes[2], device=dev) if need_db else None
    buf = torch.empty((min(rows, n_rows), n_cols), dtype=dtype, device=dev)
    w_t = weight.t()
    for start in range(0, n_rows, rows):
        end = min(start + rows, n_rows)
        x_c, logits = hidden[start:end], buf[: end - start]
        if bias is None:
            torch.mm(x_c, w_t, out=logits)
        else:
            torch.addmm(bias, x_c, w_t, out=logits)
        scale_c = grad_scale[start:end] if grad_scale is not None and grad_scale.dim() == 1 else grad_scale
        _ce_rows(
            backend,
            logits,
            target[start:end],
            None,
            stats,
            opts,
            grad_out=logits if any_grad else None,
            grad_scale=scale_c,
            loss_out=loss_rows[start:end],
            lse_out=lse[start:end],
        )
        if need_dx:
            torch.mm(logits, weight, out=dx[start:end])
        if need_dw:
            _accumulate_mm_(dw, logits.t(), x_c)
        if need_db:
            db.add_(logits.sum(0, dtype=db.dtype))
    del buf
    if dx is not None and dx.dtype != out_dtypes[0]:
        dx = dx.to(out_dtypes[0])
    if dw is not None and dw.dtype != out_dtypes[1]:
        dw = dw.to(out_dtypes[1])
    if db is not None and db.dtype != out_dtypes[2]:
        db = db.to(out_dtypes[2])
    return loss_rows, dx, dw, db


@dataclass(frozen=True)
class _Plan:
    opts: _CEOptions
    reduction: str
    rows: int  # tokens per chunk
    accum_dtype: torch.dtype | None
    compute_dtype: torch.dtype  # of the matmuls and the logits chunk
    loss_dtype: torch.dtype
    backend: str  # "triton" | "torch"


class _FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, bias, plan: _Plan):
        stats = _row_stats(target, None, plan.opts, plan.reduction, weight.shape[0])
        needs = ctx.needs_input_grad
        need = (needs[0], needs[1], bias is not None and needs[3])
        defer = plan.reduction == "none" and any(need)
        loss_rows, dx, dw, db = _run(
            plan, hidden, weight, bias, target, stats, None, [n and not defer for n in need]
        )
        ctx.plan, ctx.need, ctx.defer, ctx.done = plan, need, defer, False
        if defer:
            ctx.save_for_backward(hidden, weight, bias, target, stats)
        else:
            ctx.grads = (dx, dw, db)
        loss = loss_rows if plan.reduction == "none" else loss_rows.sum()
        return loss.to(plan.loss_dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.done:
            raise RuntimeError("fused_linear_cross_entropy: backward can run once per forward")
        ctx.done = True
        if ctx.defer:
            hidden, weight, bias, target, stats = ctx.saved_tensors
            _, dx, dw, db = _run(ctx.plan, hidden, weight, bias, target, stats, grad_loss, ctx.need)
        else:
            dx, dw, db = ctx.grads
            ctx.grads = None
            for g in (dx, dw, db):
                if g is not None:
                    _scale_(ctx.plan.backend, g, grad_loss)
        return dx, dw, None, db, None


def _run(plan: _Plan, hidden, weight, bias, target, stats, grad_scale, need):
    with torch.autocast(hidden.device.type, enabled=False):
        return _chunked_pass(
            plan.backend,
            hidden,
            weight,
            bias,
            target,
            stats,
            plan.opts,
            plan.rows,
            grad_scale=grad_scale,
            need_dx=need[0],
            need_dw=need[1],
            need_db=need[2],
            accum_dtype=plan.accum_dtype,
            compute_dtype=plan.compute_dtype,
        )


def fused_linear_cross_entropy(
    hidden,
    weight,
    target,
    bias=None,
    *,
    ignore_index=-100,
    label_smoothing=0.0,
    lse_square_scale=0.0,
    softcap=None,
    reduction="mean",
    chunk_size=None,
    memory_budget_bytes=None,
    accum_dtype=torch.float32,
    backend="auto",
):
    """``cross_entropy(hidden @ weight.T + bias, target, ...)`` in token chunks (see the module docstring).

    ``chunk_size`` (rows per chunk) overrides ``memory_budget_bytes`` (bytes of one logits chunk, default
    512 MiB). ``accum_dtype``: dtype of the ``dweight``/``dbias`` accumulators (fp32 by default; None = the
    weight dtype). Returns the loss (scalar, or ``(N,)`` for ``reduction="none"``) in the dtype of ``hidden``
    (fp32 under autocast, like ``F.cross_entropy``).
    """
    _check_options(label_smoothing, lse_square_scale, softcap, reduction)
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    dtypes = {t.dtype for t in (hidden, weight, bias) if t is not None}
    if _autocast_on(hidden.device.type) and dtypes <= set(_DTYPES):
        compute_dtype = _autocast_dtype(hidden.device.type)  # like F.linear under autocast
        loss_dtype = torch.float32  # autocast runs cross_entropy in fp32
    elif len(dtypes) == 1 and hidden.dtype in _DTYPES:
        compute_dtype = loss_dtype = hidden.dtype
    else:
        raise ValueError(
            f"hidden, weight and bias must share one dtype of {_DTYPES} (outside autocast), got "
            f"{hidden.dtype}, {weight.dtype}, {None if bias is None else bias.dtype}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if target.shape != hidden.shape[:1]:
        raise ValueError(f"target must have shape ({hidden.shape[0]},), got {tuple(target.shape)}")
    if target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target must be int64 (or int32), got {target.dtype}")
    if accum_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"accum_dtype must be None or a floating dtype, got {accum_dtype}")
    devices = {t.device for t in (hidden, weight, target, bias) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    plan = _Plan(
        opts=_CEOptions(
            int(ignore_index),
            float(label_smoothing),
            float(lse_square_scale),
            None if softcap is None else float(softcap),
        ),
        reduction=reduction,
        rows=chunk_rows(
            hidden.shape[0], weight.shape[0], compute_dtype.itemsize, chunk_size, memory_budget_bytes
        ),
        accum_dtype=accum_dtype,
        compute_dtype=compute_dtype,
        loss_dtype=loss_dtype,
        backend=resolve_backend(backend, hidden.device),
    )
    return _FusedLinearCrossEntropyFunction.apply(
        hidden.contiguous(),
        weight.contiguous(),
        target.contiguous(),
        None if bias is None else bias.contiguous(),
        plan,
    )


class FusedLinearCrossEntropyLoss(torch.nn.Module):
    """Module form of :func:`fused_linear_cross_entropy` (``forward(hidden, weight, target, bias=None)``)."""

    def __init__(
        self,
        ignore_index=-100,
        label_smoothing=0.0,
        lse_square_scale=0.0,
        softcap=None,
        reduction="mean",
        chunk_size=None,
        memory_budget_bytes=None,
        accum_dtype=torch.float32,
        backend="auto",
    ):
        super().__init__()
        _check_options(label_smoothing, lse_square_scale, softcap, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.lse_square_scale = lse_square_scale
        self.softcap = softcap
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.memory_budget_bytes = memory_budget_bytes
        self.accum_dtype = accum_dtype
        self.backend = backend

    def forward(self, hidden, weight, target, bias=None):
        return fused_linear_cross_entropy(
            hidden,
            weight,
            target,
            bias,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            lse_square_scale=self.lse_square_scale,
            softcap=self.softcap,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            memory_budget_bytes=self.memory_budget_bytes,
            accum_dtype=self.accum_dtype,
            backend=self.backend,
        )
