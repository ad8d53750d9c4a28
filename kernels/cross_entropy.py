"""Fused softmax cross-entropy: one Triton kernel computes the loss and writes the gradient in place.

Public API::

    cross_entropy(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  lse_square_scale=0.0, softcap=None, reduction="mean", return_lse=False,
                  inplace=True, backend="auto")
    CrossEntropyLoss(nn.Module)

``logits`` ``(N, V)`` fp32/bf16/fp16, ``target`` ``(N,)`` int64 in ``[0, V)`` or ``ignore_index``.
Semantics are those of ``torch.nn.functional.cross_entropy`` (class ``weight``, ``ignore_index``,
``label_smoothing``, ``reduction``), plus:

- ``softcap=c``: logits become ``c * tanh(logits / c)`` before the softmax (the gradient goes through tanh).
- ``lse_square_scale=s``: the z-loss ``s * lse**2`` is added for every non-ignored row (not class-weighted).
  With ``reduction="mean"`` the cross-entropy part is divided by the sum of the weights of the non-ignored
  targets (torch's definition) and the z-loss part by the number of non-ignored rows.
- all rows ignored: ``reduction="mean"`` gives 0 (torch gives NaN) and all gradients are 0.
- ``return_lse=True`` also returns the fp32 log-sum-exp per row (of the soft-capped logits; 0 on ignored rows;
  not differentiable).

The loss has the dtype of ``logits`` (fp32 under autocast), like torch; everything is computed in fp32.

How it works (Triton path): one program per row. Pass 1 streams the row in ``BLOCK``-wide chunks keeping an
online max and sum of exponentials (and the label-smoothing sum), giving the log-sum-exp and the row loss.
Pass 2 streams the row again (last chunk first, while it is still in cache) and writes
``dloss/dlogits`` over the logits (``inplace=True``, the default) or into a new buffer (``inplace=False``).
When ``V <= BLOCK`` the row is loaded once and kept in registers. The backward only multiplies the stored
gradient by ``grad_output`` (per row for ``reduction="none"``), in place, and skips the work when it is 1.

``inplace=True`` destroys ``logits`` when a gradient is needed: pass ``inplace=False`` if the logits are used
afterwards or saved by another autograd node. The backward can run once (the gradient is stored, not
recomputed).
The forward never synchronises with the host ('mean' divides by a count kept on the device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._backend import resolve_backend, triton_available

__all__ = ["cross_entropy", "CrossEntropyLoss"]

_REDUCTIONS = ("mean", "sum", "none")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Largest chunk of a row one program holds at a time (elements). Tests lower it so the V loop runs on small V.
_MAX_BLOCK = 16384

# Tests set this to True: buffers the kernels must fully write are then allocated filled with NaN.
_POISON_OUTPUTS = False


@dataclass(frozen=True)
class _CEOptions:
    ignore_index: int = -100
    label_smoothing: float = 0.0
    lse_square_scale: float = 0.0
    softcap: float | None = None


def _alloc(shape, dtype, device) -> torch.Tensor:
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _check_options(label_smoothing, lse_square_scale, softcap, reduction) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not float(lse_square_scale) >= 0.0:
        raise ValueError(f"lse_square_scale must be >= 0, got {lse_square_scale}")
    if softcap is not None and not float(softcap) > 0.0:
        raise ValueError(f"softcap must be None or > 0, got {softcap}")


def _row_stats(target, weight, opts: _CEOptions, reduction: str, n_classes: int) -> torch.Tensor:
    """fp32 ``[ce_scale, z_scale, weight_sum]`` on the device, without a host sync.

    ``ce_scale``/``z_scale`` multiply the per-row cross-entropy and z-loss terms: 1 for 'sum'/'none'; for
    'mean' the reciprocal of the sum of non-ignored target weights / of the non-ignored row count (0 when that
    is 0, so an all-ignored batch gives loss 0 and zero gradients instead of NaN).
    """
    dev = target.device
    if reduction == "mean":
        valid = target != opts.ignore_index
        n_valid = valid.sum(dtype=torch.float32)
        if weight is not None:
            w_rows = weight[torch.where(valid, target, 0)]
            denom = torch.where(valid, w_rows, 0.0).sum(dtype=torch.float32)
        else:
            denom = n_valid
        ce_scale = torch.where(denom != 0, denom.reciprocal(), 0.0)
        z_scale = torch.where(n_valid != 0, n_valid.reciprocal(), 0.0)
    else:
        ce_scale = z_scale = torch.ones((), dtype=torch.float32, device=dev)
    w_sum = (
        weight.sum(dtype=torch.float32)
        if weight is not None
        else torch.full((), float(n_classes), dtype=torch.float32, device=dev)
    )
    return torch.stack([ce_scale.float(), z_scale.float(), w_sum.float()])


# --------------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------------

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _tanh(x):
        # exp-based: exp(-2|x|) underflows to 0 for large |x|: saturates at +-1 without overflow.
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(x >= 0, t, -t)

    @triton.jit
    def _prepare(x, mask, softcap, HAS_SOFTCAP: tl.constexpr):
        """fp32 logits after the soft cap, -inf on masked lanes; also tanh (for the cap's derivative)."""
        t = x
        if HAS_SOFTCAP:
            t = _tanh(x / softcap)
            x = softcap * t
        return tl.where(mask, x, float("-inf")), t

    @triton.jit
    def _grad_block(
        x,
        t,
        cols,
        mask,
        y,
        lse,
        coef_p,
        coef_y,
        coef_w,
        W_ptr,
        HAS_WEIGHT: tl.constexpr,
        HAS_SMOOTHING: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
    ):
        """dlogits = coef_p * softmax - coef_y * onehot(y) - coef_w * w_j (times the cap's derivative)."""
        g = coef_p * tl.exp(x - lse) - tl.where(cols == y, coef_y, 0.0)
        if HAS_SMOOTHING:
            if HAS_WEIGHT:
                g -= coef_w * tl.load(W_ptr + cols, mask=mask, other=0.0)
            else:
                g -= coef_w
        if HAS_SOFTCAP:
            g = g * (1.0 - t * t)
        return g

    @triton.jit
    def _ce_fwd_kernel(
        X_ptr,
        stride_x,
        G_ptr,
        stride_g,
        Y_ptr,
        W_ptr,
        STATS_ptr,
        GO_ptr,
        stride_go,
        LOSS_ptr,
        LSE_ptr,
        n_cols,
        ignore_index,
        label_smoothing,
        lse_square_scale,
        softcap,
        HAS_WEIGHT: tl.constexpr,
        HAS_SMOOTHING: tl.constexpr,
        HAS_ZLOSS: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
        COMPUTE_GRAD: tl.constexpr,
        HAS_GRAD_SCALE: tl.constexpr,
        SINGLE_PASS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Loss, log-sum-exp and (optionally) the gradient of one row of logits.

        Tiling: program ``i`` owns row ``i`` (int64 offsets: N*V may exceed 2**31) and walks it in ``BLOCK``
        columns. Pass 1: online max ``m`` / sum ``d`` of ``exp(x - m)`` (one exp per element) and, for label
        smoothing, the (weighted) sum of logits. Pass 2 (``COMPUTE_GRAD``): reload each block (in reverse,
        so the blocks read last in pass 1 are reused from cache) and store the gradient into ``G`` (which may
        alias ``X``). ``SINGLE_PASS`` (V <= BLOCK): the row is read once and kept in registers.
        """
        row = tl.program_id(0).to(tl.int64)
        x_row = X_ptr + row * stride_x
        g_row = G_ptr + row * stride_g
        offs = tl.arange(0, BLOCK)
        y = tl.load(Y_ptr + row)

        if y == ignore_index:
            tl.store(LOSS_ptr + row, 0.0)
            tl.store(LSE_ptr + row, 0.0)
            if COMPUTE_GRAD:
                zeros = tl.zeros([BLOCK], dtype=G_ptr.dtype.element_ty)
                for off in range(0, n_cols, BLOCK):
                    tl.store(g_row + off + offs, zeros, mask=off + offs < n_cols)
            return

        # ---- pass 1: log-sum-exp (and the smoothing sum) -------------------------------------------------
        if SINGLE_PASS:
            mask = offs < n_cols
            x_raw = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
            x, t = _prepare(x_raw, mask, softcap, HAS_SOFTCAP)
            m = tl.max(x, 0)
            d = tl.sum(tl.exp(x - m), 0)
            sx = 0.0
            if HAS_SMOOTHING:
                if HAS_WEIGHT:
                    sx = tl.sum(tl.where(mask, x, 0.0) * tl.load(W_ptr + offs, mask=mask, other=0.0), 0)
                else:
                    sx = tl.sum(tl.where(mask, x, 0.0), 0)
        else:
            m = float("-inf")
            d = 0.0
            sx = 0.0
            for off in range(0, n_cols, BLOCK):
                cols = off + offs
                mask = cols < n_cols
                xb = tl.load(x_row + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
                xb, _ = _prepare(xb, mask, softcap, HAS_SOFTCAP)
                m_new = tl.maximum(m, tl.max(xb, 0))
                d = d * tl.exp(m - m_new) + tl.sum(tl.exp(xb - m_new), 0)
                m = m_new
                if HAS_SMOOTHING:
                    if HAS_WEIGHT:
                        sx += tl.sum(tl.where(mask, xb, 0.0) * tl.load(W_ptr + cols, mask=mask, other=0.0), 0)
                    else:
                        sx += tl.sum(tl.where(mask, xb, 0.0), 0)
        lse = m + tl.log(d)

        # ---- row loss ---------------------------------------------------------------------------------
        y_ok = (y >= 0) & (y < n_cols)  # out-of-range targets are not checked (no host sync); never read OOB
        x_y = tl.load(x_row + y, mask=y_ok, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            x_y = softcap * _tanh(x_y / softcap)
        if HAS_WEIGHT:
            w_y = tl.load(W_ptr + y, mask=y_ok, other=0.0)
            w_sum = tl.load(STATS_ptr + 2)
        else:
            w_y = 1.0
            w_sum = n_cols * 1.0
        ce_scale = tl.load(STATS_ptr)
        z_scale = tl.load(STATS_ptr + 1)
        eps = label_smoothing
        ce = (1.0 - eps) * w_y * (lse - x_y)
        if HAS_SMOOTHING:
            ce += eps / n_cols * (w_sum * lse - sx)
        loss = ce * ce_scale
        if HAS_ZLOSS:
            loss += lse_square_scale * lse * lse * z_scale
        tl.store(LOSS_ptr + row, loss)
        tl.store(LSE_ptr + row, lse)

        # ---- pass 2: gradient -------------------------------------------------------------------------
        if COMPUTE_GRAD:
            coef_y = ce_scale * (1.0 - eps) * w_y
            coef_p = coef_y
            coef_w = ce_scale * eps / n_cols
            if HAS_SMOOTHING:
                coef_p += coef_w * w_sum
            if HAS_ZLOSS:
                coef_p += z_scale * 2.0 * lse_square_scale * lse
            if HAS_GRAD_SCALE:
                go = tl.load(GO_ptr + row * stride_go).to(tl.float32)
                coef_p *= go
                coef_y *= go
                coef_w *= go
            if SINGLE_PASS:
                g = _grad_block(
                    x,
                    t,
                    offs,
                    mask,
                    y,
                    lse,
                    coef_p,
                    coef_y,
                    coef_w,
                    W_ptr,
                    HAS_WEIGHT,
                    HAS_SMOOTHING,
                    HAS_SOFTCAP,
                )
                tl.store(g_row + offs, g.to(G_ptr.dtype.element_ty), mask=mask)
            else:
                n_blocks = tl.cdiv(n_cols, BLOCK)
                for i in range(0, n_blocks):
                    cols = (n_blocks - 1 - i) * BLOCK + offs
                    mask = cols < n_cols
                    xb = tl.load(x_row + cols, mask=mask, other=0.0, eviction_policy="evict_first")
                    xb, tb = _prepare(xb.to(tl.float32), mask, softcap, HAS_SOFTCAP)
                    g = _grad_block(
                        xb,
                        tb,
                        cols,
                        mask,
                        y,
                        lse,
                        coef_p,
                        coef_y,
                        coef_w,
                        W_ptr,
                        HAS_WEIGHT,
                        HAS_SMOOTHING,
                        HAS_SOFTCAP,
                    )
                    tl.store(g_row + cols, g.to(G_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _scale_rows_kernel(G_ptr, stride_g, GO_ptr, stride_go, n_cols, BLOCK: tl.constexpr):
        """``G[i, :] *= GO[i * stride_go]`` in place (stride 0: a scalar); skips rows whose factor is 1."""
        row = tl.program_id(0).to(tl.int64)
        go = tl.load(GO_ptr + row * stride_go).to(tl.float32)
        if go != 1.0:
            g_row = G_ptr + row * stride_g
            offs = tl.arange(0, BLOCK)
            for off in range(0, n_cols, BLOCK):
                mask = off + offs < n_cols
                g = tl.load(g_row + off + offs, mask=mask, other=0.0)
                tl.store(g_row + off + offs, (g.to(tl.float32) * go).to(g.dtype), mask=mask)


def _launch_config(n_cols: int) -> tuple[int, int, bool]:
    """``(BLOCK, num_warps, single_pass)`` for rows of ``n_cols`` elements.

    16 elements per thread, up to 16384-element blocks at 32 warps: big blocks keep many bytes in flight and
    amortise the two block reductions per chunk, and one 1024-thread program per SM keeps the rows being read
    (V=128k bf16: 132 x 256 KiB) inside H100's L2 for the second pass. ptxas (sm_90) fits the two-pass kernel
    in <= 64 registers without spills (32768-element blocks at 32 warps spill). Rows up to ``_MAX_BLOCK``
    are read once.
    """
    block = min(triton.next_power_of_2(n_cols), _MAX_BLOCK)
    num_warps = min(32, max(4, block // 512))
    return block, num_warps, n_cols <= block


def _ce_rows_triton(logits, target, weight, stats, opts, grad_out, grad_scale, loss_out, lse_out):
    n_rows, n_cols = logits.shape
    block, num_warps, single = _launch_config(n_cols)
    compute_grad = grad_out is not None
    g = grad_out if compute_grad else logits  # never written when not computing the gradient
    go = grad_scale if grad_scale is not None else stats
    _ce_fwd_kernel[(n_rows,)](
        X_ptr=logits,
        stride_x=logits.stride(0),
        G_ptr=g,
        stride_g=g.stride(0),
        Y_ptr=target,
        W_ptr=weight if weight is not None else stats,
        STATS_ptr=stats,
        GO_ptr=go,
        stride_go=go.stride(0) if go.dim() == 1 else 0,
        LOSS_ptr=loss_out,
        LSE_ptr=lse_out,
        n_cols=n_cols,
        ignore_index=opts.ignore_index,
        label_smoothing=float(opts.label_smoothing),
        lse_square_scale=float(opts.lse_square_scale),
        softcap=float(opts.softcap or 1.0),
        HAS_WEIGHT=weight is not None,
        HAS_SMOOTHING=opts.label_smoothing > 0,
        HAS_ZLOSS=opts.lse_square_scale > 0,
        HAS_SOFTCAP=opts.softcap is not None,
        COMPUTE_GRAD=compute_grad,
        HAS_GRAD_SCALE=grad_scale is not None,
        SINGLE_PASS=single,
        BLOCK=block,
        num_warps=num_warps,
    )


# --------------------------------------------------------------------------------------------------------
# Torch reference path (same buffers, same formulas, fp32)
# --------------------------------------------------------------------------------------------------------


def _ce_rows_torch(logits, target, weight, stats, opts, grad_out, grad_scale, loss_out, lse_out):
    n_cols = logits.shape[1]
    ce_scale, z_scale, w_sum = stats[0], stats[1], stats[2]
    x = logits.float()
    if opts.softcap is not None:
        t = torch.tanh(x / opts.softcap)
        x = opts.softcap * t
    valid = target != opts.ignore_index
    safe_t = torch.where(valid, target, 0).unsqueeze(1)
    lse = torch.logsumexp(x, dim=1)
    x_y = x.gather(1, safe_t).squeeze(1)
    w_y = weight[safe_t.squeeze(1)] if weight is not None else torch.ones_like(lse)
    eps = float(opts.label_smoothing)
    ce = (1.0 - eps) * w_y * (lse - x_y)
    if eps > 0:
        sx = (x * weight).sum(1) if weight is not None else x.sum(1)
        ce = ce + eps / n_cols * (w_sum * lse - sx)
    loss = ce * ce_scale
    if opts.lse_square_scale > 0:
        loss = loss + opts.lse_square_scale * lse * lse * z_scale
    loss_out.copy_(torch.where(valid, loss, 0.0))
    lse_out.copy_(torch.where(valid, lse, 0.0))
    if grad_out is None:
        return
    coef_y = ce_scale * (1.0 - eps) * w_y
    coef_w = ce_scale * eps / n_cols
    coef_p = coef_y + coef_w * w_sum
    if opts.lse_square_scale > 0:
        coef_p = coef_p + z_scale * 2.0 * opts.lse_square_scale * lse
    if grad_scale is not None:
        go = grad_scale.float().expand(lse.shape)
        coef_p, coef_y, coef_w = coef_p * go, coef_y * go, coef_w * go.unsqueeze(1)
    g = torch.exp(x - lse.unsqueeze(1)) * coef_p.unsqueeze(1)
    g.scatter_add_(1, safe_t, -coef_y.unsqueeze(1))
    if eps > 0:
        g -= coef_w * (weight if weight is not None else 1.0)
    if opts.softcap is not None:
        g *= 1.0 - t * t
    grad_out.copy_(torch.where(valid.unsqueeze(1), g, 0.0))


def _ce_rows(backend, logits, target, weight, stats, opts, *, grad_out, grad_scale, loss_out, lse_out):
    """Per-row loss/lse into ``loss_out``/``lse_out`` (fp32) and, if ``grad_out`` is given, the gradient
    (times ``grad_scale``, a scalar or per-row tensor, if given) into ``grad_out`` (may alias ``logits``)."""
    if logits.shape[0] == 0:
        return
    fn = _ce_rows_triton if backend == "triton" else _ce_rows_torch
    fn(logits, target, weight, stats, opts, grad_out, grad_scale, loss_out, lse_out)


def _scale_(backend: str, t: torch.Tensor, factor: torch.Tensor) -> None:
    """``t *= factor`` in place; ``factor`` is a scalar tensor or has one entry per row of the 2-D ``t``."""
    if t.numel() == 0:
        return
    if backend == "torch":
        t.mul_(factor.reshape(-1, 1) if factor.dim() == 1 else factor)
        return
    t2 = t if t.dim() == 2 else t.view(1, -1)
    block = min(triton.next_power_of_2(t2.shape[1]), 8192)
    _scale_rows_kernel[(t2.shape[0],)](
        G_ptr=t2,
        stride_g=t2.stride(0),
        GO_ptr=factor,
        stride_go=factor.stride(0) if factor.dim() == 1 else 0,
        n_cols=t2.shape[1],
        BLOCK=block,
        num_warps=min(16, max(4, block // 1024)),
    )


# --------------------------------------------------------------------------------------------------------
# Autograd and public API
# --------------------------------------------------------------------------------------------------------


class _CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, opts, reduction, inplace, loss_dtype, backend):
        n_rows, n_cols = logits.shape
        stats = _row_stats(target, weight, opts, reduction, n_cols)
        compute_grad = ctx.needs_input_grad[0]
        grad = None
        if compute_grad:
            # detach(): a fresh alias of the logits' storage that only we reference, so that autograd adopts
            # the returned gradient as .grad instead of cloning it (it clones tensors referenced elsewhere)
            grad = logits.detach() if inplace else _alloc(logits.shape, logits.dtype, logits.device)
        loss_rows = _alloc((n_rows,), torch.float32, logits.device)
        lse = _alloc((n_rows,), torch.float32, logits.device)
        _ce_rows(
            backend,
            logits,
            target,
            weight,
            stats,
            opts,
            grad_out=grad,
            grad_scale=None,
            loss_out=loss_rows,
            lse_out=lse,
        )
        ctx.grad = grad
        ctx.backend = backend
        ctx.mark_non_differentiable(lse)
        loss = loss_rows if reduction == "none" else loss_rows.sum()
        return loss.to(loss_dtype), lse

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "cross_entropy: backward can run once per forward (the gradient is stored in place)"
            )
        ctx.grad = None
        _scale_(ctx.backend, grad, grad_loss)
        return grad, None, None, None, None, None, None, None


def cross_entropy(
    logits,
    target,
    *,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    lse_square_scale=0.0,
    softcap=None,
    reduction="mean",
    return_lse=False,
    inplace=True,
    backend="auto",
):
    """Cross-entropy of ``logits`` ``(N, V)`` against ``target`` ``(N,)`` (see the module docstring).

    Returns the loss (scalar, or ``(N,)`` for ``reduction="none"``) in the dtype of ``logits``, or
    ``(loss, lse)`` with ``return_lse=True``. ``inplace=True`` overwrites ``logits`` with its gradient when a
    gradient is needed.
    """
    _check_options(label_smoothing, lse_square_scale, softcap, reduction)
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, V), got shape {tuple(logits.shape)}")
    if logits.dtype not in _DTYPES:
        raise ValueError(f"logits dtype must be one of {_DTYPES}, got {logits.dtype}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
    if target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target must be int64 (or int32), got {target.dtype}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device}, logits on {logits.device}")
    if weight is not None:
        if weight.shape != logits.shape[1:]:
            raise ValueError(f"weight must have shape ({logits.shape[1]},), got {tuple(weight.shape)}")
        weight = weight.detach().to(device=logits.device, dtype=torch.float32).contiguous()
    resolved = resolve_backend(backend, logits.device)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    opts = _CEOptions(
        int(ignore_index),
        float(label_smoothing),
        float(lse_square_scale),
        None if softcap is None else float(softcap),
    )
    # under autocast, torch computes cross_entropy in fp32 and returns an fp32 loss: so do we
    loss_dtype = torch.float32 if _autocast_on(logits.device.type) else logits.dtype
    loss, lse = _CrossEntropyFunction.apply(
        logits, target.contiguous(), weight, opts, reduction, bool(inplace), loss_dtype, resolved
    )
    return (loss, lse) if return_lse else loss


class CrossEntropyLoss(torch.nn.Module):
    """Module form of :func:`cross_entropy` (``forward(logits, target)``)."""

    def __init__(
        self,
        weight=None,
        ignore_index=-100,
        label_smoothing=0.0,
        lse_square_scale=0.0,
        softcap=None,
        reduction="mean",
        return_lse=False,
        inplace=True,
        backend="auto",
    ):
        super().__init__()
        _check_options(label_smoothing, lse_square_scale, softcap, reduction)
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.lse_square_scale = lse_square_scale
        self.softcap = softcap
        self.reduction = reduction
        self.return_lse = return_lse
        self.inplace = inplace
        self.backend = backend

    def forward(self, logits, target):
        return cross_entropy(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            lse_square_scale=self.lse_square_scale,
            softcap=self.softcap,
            reduction=self.reduction,
            return_lse=self.return_lse,
            inplace=self.inplace,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"lse_square_scale={self.lse_square_scale}, softcap={self.softcap}, "
            f"reduction={self.reduction!r}, inplace={self.inplace}, backend={self.backend!r}"
        )
