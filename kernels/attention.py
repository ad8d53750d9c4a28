"""Flash attention (FlashAttention-2 style) with Triton forward/backward kernels and a torch reference path.

Public API::

    flash_attention(q, k, v, *, causal=False, softmax_scale=None, cu_seqlens=None, max_seqlen=None,
                    dropout_p=0.0, backend="auto")
    flash_attention_padded(q, k, v, attention_mask, *, causal=False, softmax_scale=None, dropout_p=0.0,
                           backend="auto")
    unpad_input(x, attention_mask) -> (x_unpadded, indices, cu_seqlens, max_seqlen)
    pad_input(x_unpadded, indices, batch, seqlen) -> x
    cu_seqlens_from_mask(attention_mask) / cu_seqlens_from_lengths(lengths)
    FlashAttention(nn.Module)

Layouts (the "BSHD" layout of flash-attn, not the "BHSD" layout of SDPA):

- dense: ``q`` ``(B, S, Hq, D)``, ``k``/``v`` ``(B, S, Hkv, D)``, ``Hq % Hkv == 0`` (GQA/MQA)
  -> ``(B, S, Hq, D)``.
- varlen: ``q`` ``(T, Hq, D)``, ``k``/``v`` ``(T, Hkv, D)``: sequences packed back to back, delimited by
  ``cu_seqlens`` (int32, ``(nseq + 1,)``, ``cu_seqlens[0] = 0``, ``cu_seqlens[-1] = T``); no attention across
  sequences -> ``(T, Hq, D)``.

``causal=True`` masks key ``j > i`` inside each sequence (top-left aligned; queries and keys always have the
same length here, so this is also bottom-right aligned). ``dropout_p > 0`` drops attention probabilities with
a counter-based RNG (Philox via ``tl.rand``) seeded from torch's default CPU generator: the backward pass
regenerates the same mask. Dropout is applied whenever ``dropout_p > 0`` — callers pass 0 in eval mode.

Head dims: bf16/fp16 any ``D <= 256`` on the Triton path (non-powers of two such as 80/96 pad the head-dim
tile to the next power of two under masks); 32/64/80/96/128 are tested. fp32 (full IEEE products, meant for
tests): ``D <= 128``. The tiles per GPU come from ``kernels.tuning`` (checked by the compile audit,
``bench.compile``); a variant no tile fits on the GPU (fp32 with ``D > 128``) raises a clear ``ValueError``
with ``backend="triton"`` and takes the torch path, with a warning, under ``backend="auto"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._backend import resolve_backend, triton_available

__all__ = [
    "flash_attention",
    "flash_attention_padded",
    "unpad_input",
    "pad_input",
    "cu_seqlens_from_mask",
    "cu_seqlens_from_lengths",
    "FlashAttention",
]

if triton_available():
    from . import attention_bwd as _bwd
    from . import attention_fwd as _fwd
else:  # pragma: no cover - exercised only where triton is missing
    _fwd = _bwd = None

# Tests set this to True: outputs of the Triton kernels are then allocated filled with NaN, so that an element
# the kernels forget to write makes the comparison fail instead of silently holding zeros.
_POISON_OUTPUTS = False


def _alloc(shape, dtype, device):
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------------
# Padding helpers
# --------------------------------------------------------------------------------------------------------


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """``[0, l0, l0+l1, ...]`` as int32 on the lengths' device."""
    lengths = lengths.to(torch.int32)
    return F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))


def cu_seqlens_from_mask(attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """cu_seqlens (int32) and max_seqlen of the real tokens of a ``(B, S)`` 0/1 mask (one host sync)."""
    lengths = attention_mask.to(torch.bool).sum(dim=-1, dtype=torch.int32)
    return cu_seqlens_from_lengths(lengths), int(lengths.max().item()) if lengths.numel() else 0


def unpad_input(x: torch.Tensor, attention_mask: torch.Tensor):
    """Gather the real tokens of a padded batch.

    ``x`` ``(B, S, ...)``, ``attention_mask`` ``(B, S)`` with 1 = real token, 0 = padding (left, right or
    anywhere). Returns ``(x_unpadded (T, ...), indices (T,) int64 into the flattened B*S tokens,
    cu_seqlens (B+1,) int32, max_seqlen int)``. Differentiable in ``x``.
    """
    if attention_mask.shape != x.shape[:2]:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != x.shape[:2] {tuple(x.shape[:2])}"
        )
    mask = attention_mask.to(torch.bool)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu_seqlens, max_seqlen = cu_seqlens_from_mask(mask)
    x_unpad = x.reshape(-1, *x.shape[2:]).index_select(0, indices)
    return x_unpad, indices, cu_seqlens, max_seqlen


def pad_input(x_unpadded: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: scatter ``(T, ...)`` rows to ``(batch, seqlen, ...)``, 0 elsewhere."""
    out = torch.zeros(
        (batch * seqlen, *x_unpadded.shape[1:]), dtype=x_unpadded.dtype, device=x_unpadded.device
    )
    out = out.index_copy(0, indices, x_unpadded)
    return out.view(batch, seqlen, *x_unpadded.shape[1:])


# --------------------------------------------------------------------------------------------------------
# Torch reference path
# --------------------------------------------------------------------------------------------------------


def _sdpa_bshd(q, k, v, causal, scale, dropout_p, attn_mask=None):
    """SDPA on (B, S, H, D) tensors with GQA expanded explicitly; returns (B, S, Hq, D)."""
    hq, hkv = q.shape[-2], k.shape[-2]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=-2)
        v = v.repeat_interleave(hq // hkv, dim=-2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=causal and attn_mask is None,
        scale=scale,
    )
    return out.transpose(1, 2)


def _torch_dense(q, k, v, causal, scale, dropout_p):
    return _sdpa_bshd(q, k, v, causal, scale, dropout_p)


def _torch_varlen(q, k, v, cu_seqlens, causal, scale, dropout_p):
    bounds = cu_seqlens.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=False):
        if e > s:
            outs.append(_sdpa_bshd(q[None, s:e], k[None, s:e], v[None, s:e], causal, scale, dropout_p)[0])
    if not outs:
        return q.new_zeros(q.shape)
    out = torch.cat(outs, dim=0)
    if out.shape[0] != q.shape[0]:  # tokens past cu_seqlens[-1] (not part of any sequence) -> 0
        out = torch.cat([out, out.new_zeros((q.shape[0] - out.shape[0], *out.shape[1:]))], dim=0)
    return out


def _torch_padded(q, k, v, attention_mask, causal, scale, dropout_p):
    """Masked SDPA in one batched call; padded query rows get a dummy self-key (no NaN) and are zeroed."""
    b, s = attention_mask.shape
    real = attention_mask.to(torch.bool)
    allowed = real[:, None, :].expand(b, s, s)
    if causal:
        allowed = allowed & torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    eye = torch.eye(s, dtype=torch.bool, device=q.device)
    allowed = allowed | (eye[None] & ~real[:, :, None])
    out = _sdpa_bshd(q, k, v, False, scale, dropout_p, attn_mask=allowed[:, None])
    return out.masked_fill(~real[:, :, None, None], 0.0)


# --------------------------------------------------------------------------------------------------------
# Triton path
# --------------------------------------------------------------------------------------------------------


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _new_seed() -> int:
    """A dropout seed in [2**31, 2**62): always an int64 kernel argument (an int32-sized seed would compile a
    second specialization; the kernels also mark ``seed`` do_not_specialize, so divisibility never does)."""
    return int(torch.randint(2**31, 2**62, (1,), dtype=torch.int64).item())


class _FlashAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, causal, scale, dropout_p):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        varlen = cu_seqlens is not None
        hq = q.shape[-2]
        if varlen:
            nbatch, seqlen = cu_seqlens.numel() - 1, 0
            lse = _alloc((hq, q.shape[0]), torch.float32, q.device)
        else:
            nbatch, seqlen = q.shape[0], q.shape[1]
            max_seqlen = seqlen
            lse = _alloc((nbatch, hq, seqlen), torch.float32, q.device)
        out = _alloc(q.shape, q.dtype, q.device)
        seed = _new_seed() if dropout_p > 0.0 else 0
        if out.numel() > 0 and nbatch > 0 and max_seqlen > 0:
            _fwd.attn_fwd(
                q, k, v, out, lse, cu_seqlens, seqlen, nbatch, max_seqlen, causal, scale, dropout_p, seed
            )
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.meta = (nbatch, seqlen, max_seqlen, causal, scale, dropout_p, seed)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        nbatch, seqlen, max_seqlen, causal, scale, dropout_p, seed = ctx.meta
        dout = _last_dim_contiguous(dout)
        dq = _alloc(q.shape, q.dtype, q.device)
        dk = _alloc(k.shape, k.dtype, k.device)
        dv = _alloc(v.shape, v.dtype, v.device)
        delta = _alloc(lse.shape, torch.float32, lse.device)
        if out.numel() > 0 and nbatch > 0 and max_seqlen > 0:
            _bwd.attn_bwd(
                q,
                k,
                v,
                out,
                dout,
                lse,
                dq,
                dk,
                dv,
                delta,
                cu_seqlens,
                seqlen,
                nbatch,
                max_seqlen,
                causal,
                scale,
                dropout_p,
                seed,
            )
        return dq, dk, dv, None, None, None, None, None


def _dropout_keep_mask(q, cu_seqlens, max_seqlen, dropout_p, seed):
    """Test helper: the dropout keep mask the Triton kernels draw for ``seed`` ((nseq, Hq, S, S) bool)."""
    hq = q.shape[-2]
    if cu_seqlens is None:
        return _fwd.dropout_keep_mask(None, q.shape[1], q.shape[0], hq, q.shape[1], dropout_p, seed, q.device)
    return _fwd.dropout_keep_mask(
        cu_seqlens, 0, cu_seqlens.numel() - 1, hq, max_seqlen, dropout_p, seed, q.device
    )


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def _check_heads(q, k, v):
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    hq, hkv = q.shape[-2], k.shape[-2]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"number of q heads ({hq}) must be a multiple of kv heads ({hkv})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


_FALLBACK_WARNED: set = set()


def _triton_fits(q, k, v, dropout_p, *, explicit: bool) -> bool:
    """Whether the Triton kernels have a tile config for this dtype / head dim / dropout on q's GPU
    (``kernels.tuning``). No: ``backend="triton"`` raises the reason; ``"auto"`` warns once and the caller
    takes the torch path (e.g. fp32 with head dim 256)."""
    if not _fwd.use_autotune(q.device):  # interpreter: fixed 16x16 tiles
        return True
    from . import tuning

    d = q.shape[-1]
    tma = _fwd.use_tma(q, k, v)
    try:
        tuning.check_supported(
            device=q.device,
            dtype=q.dtype,
            head_dim=d,
            block_d=max(16, 1 << (d - 1).bit_length()),
            dropout=dropout_p > 0.0,
            tma=tma,
        )
    except ValueError as exc:
        if explicit:
            raise
        key = (str(q.dtype), d, dropout_p > 0.0, str(q.device))
        if key not in _FALLBACK_WARNED:
            _FALLBACK_WARNED.add(key)
            import warnings

            warnings.warn(f"{exc}; using the torch path", stacklevel=3)
        return False
    return True


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """softmax(q k^T * softmax_scale [causal mask]) v, per head, with GQA/MQA (kv head = q head // group).

    Dense: ``q`` ``(B, S, Hq, D)``, ``k``/``v`` ``(B, S, Hkv, D)`` -> ``(B, S, Hq, D)``.
    Varlen: ``q`` ``(T, Hq, D)``, ``k``/``v`` ``(T, Hkv, D)`` with ``cu_seqlens`` int32 ``(nseq + 1,)`` and
    ``max_seqlen`` (computed with one host sync when omitted) -> ``(T, Hq, D)``.
    ``softmax_scale`` defaults to ``1/sqrt(D)``. ``dropout_p`` is applied whenever > 0 (training only: pass 0
    in eval). ``backend``: ``"auto" | "triton" | "torch"`` (see ``kernels._backend``).
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    _check_heads(q, k, v)
    if cu_seqlens is None:
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError(
                f"dense flash_attention expects 4-D (B, S, H, D) tensors, got q {tuple(q.shape)}"
            )
        if q.shape[:2] != k.shape[:2]:
            raise ValueError(
                f"q and k must have the same (batch, seqlen), got {tuple(q.shape)} vs {tuple(k.shape)}"
            )
    else:
        if q.dim() != 3 or k.dim() != 3:
            raise ValueError(f"varlen flash_attention expects 3-D (T, H, D) tensors, got q {tuple(q.shape)}")
        if q.shape[0] != k.shape[0]:
            raise ValueError(f"q and k must have the same number of tokens, got {q.shape[0]} vs {k.shape[0]}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise ValueError("cu_seqlens must be a 1-D tensor of nseq + 1 offsets")
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
        max_seqlen = int(max_seqlen)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if resolve_backend(backend, q.device) == "torch":
        if cu_seqlens is None:
            return _torch_dense(q, k, v, causal, scale, dropout_p)
        return _torch_varlen(q, k, v, cu_seqlens, causal, scale, dropout_p)
    if q.shape[-1] > 256:
        raise ValueError(f"head dim {q.shape[-1]} > 256 is not supported by the Triton kernel")
    if not _triton_fits(q, k, v, dropout_p, explicit=backend == "triton"):
        if cu_seqlens is None:
            return _torch_dense(q, k, v, causal, scale, dropout_p)
        return _torch_varlen(q, k, v, cu_seqlens, causal, scale, dropout_p)
    return _FlashAttnFunction.apply(q, k, v, cu_seqlens, max_seqlen, bool(causal), scale, float(dropout_p))


def flash_attention_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention over a padded batch: ``q`` ``(B, S, Hq, D)``, ``k``/``v`` ``(B, S, Hkv, D)``,
    ``attention_mask`` ``(B, S)`` with 1 = real token, 0 = padding (right, left or anywhere: the real tokens
    of a row, in order, form its sequence; ``causal`` is over that order).

    Triton path: gather the real tokens (:func:`unpad_input`), run the varlen kernel, scatter back: padding
    costs no attention FLOPs. Padded query rows of the output are 0. ``attention_mask=None`` = no padding.
    """
    if attention_mask is None:
        return flash_attention(
            q, k, v, causal=causal, softmax_scale=softmax_scale, dropout_p=dropout_p, backend=backend
        )
    if q.dim() != 4 or attention_mask.shape != q.shape[:2] or k.shape[:2] != q.shape[:2]:
        raise ValueError(
            "expected q (B, S, Hq, D), k/v (B, S, Hkv, D) and attention_mask (B, S); "
            f"got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, mask {tuple(attention_mask.shape)}"
        )
    _check_heads(q, k, v)
    if resolve_backend(backend, q.device) == "torch" or not _triton_fits(
        q, k, v, dropout_p, explicit=backend == "triton"
    ):
        scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        if not 0.0 <= dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
        return _torch_padded(q, k, v, attention_mask, causal, scale, dropout_p)
    b, s = attention_mask.shape
    mask = attention_mask.to(torch.bool)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu_seqlens, max_seqlen = cu_seqlens_from_mask(mask)
    return _padded_from_indices(
        q, k, v, indices, cu_seqlens, max_seqlen, b, s, causal, softmax_scale, dropout_p
    )


def _padded_from_indices(q, k, v, indices, cu_seqlens, max_seqlen, b, s, causal, softmax_scale, dropout_p):
    """Triton padded path from precomputed unpadding (callers may cache indices/cu_seqlens across layers)."""

    def gather(t):
        return t.reshape(b * s, *t.shape[2:]).index_select(0, indices)

    out = flash_attention(
        gather(q),
        gather(k),
        gather(v),
        causal=causal,
        softmax_scale=softmax_scale,
        cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen,
        dropout_p=dropout_p,
        backend="triton",
    )
    return pad_input(out, indices, b, s)


class FlashAttention(torch.nn.Module):
    """Module wrapper: ``forward(q, k, v, attention_mask=None)`` on (B, S, H, D) tensors.

    ``dropout_p`` is applied only in training mode.
    """

    def __init__(
        self,
        causal: bool = False,
        softmax_scale: float | None = None,
        dropout_p: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        self.causal, self.softmax_scale, self.dropout_p, self.backend = (
            causal,
            softmax_scale,
            dropout_p,
            backend,
        )

    def forward(self, q, k, v, attention_mask=None):
        return flash_attention_padded(
            q,
            k,
            v,
            attention_mask,
            causal=self.causal,
            softmax_scale=self.softmax_scale,
            dropout_p=self.dropout_p if self.training else 0.0,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"causal={self.causal}, dropout_p={self.dropout_p}, backend={self.backend!r}"
