"""Triton forward kernel of FlashAttention-2 style attention (dense and varlen), plus shared helpers.

Imported only when triton is importable (``kernels.attention`` guards the import).

Conventions shared with ``kernels.attention_bwd``:

- Every kernel works on a *batch of sequences*: dense inputs are ``B`` sequences of length ``S``
  (``stride_*b`` = batch stride, sequence start 0), varlen inputs are the sequences of a packed
  ``(T, H, D)`` tensor delimited by ``cu_seqlens`` (``stride_*b`` = 0, sequence start = ``cu_seqlens[b]``).
- The grid is ``(num_blocks(max_seqlen), heads, batch)``; a program whose block starts past its sequence's
  length exits at once, so varlen costs no FLOPs for the difference between ``max_seqlen`` and a sequence.
- Scores are kept in base-2 units: ``s2 = (q . k) * softmax_scale * log2(e)``, and the saved
  log-sum-exp is ``lse2 = m + log2(l)`` (fp32, one per query row and head), so ``p = exp2(s2 - lse2)``.
- Head dims that are not powers of two (80, 96) are handled by padding the head-dim block ``BLOCK_D`` to the
  next power of two and masking loads/stores with ``offs_d < HEAD_DIM``.
- Dropout uses a counter-based RNG: ``keep = tl.rand(seed, ((bh * MAXS) + i) * MAXS + j) >= p`` where ``bh``
  is ``sequence * num_q_heads + q_head`` and ``i``/``j`` the query/key index inside the sequence (int64
  offsets, so every element of every head gets its own Philox counter). The forward and both backward
  kernels evaluate the same expression, hence the same mask.
- The causal mask is aligned top-left (query ``i`` sees keys ``j <= i`` of its own sequence); queries and keys
  always have the same length here, where top-left and bottom-right alignment coincide.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from . import tuning

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _dropout_keep(seed, off_bh, rows, cols, MAXS, dropout_p):
    """Keep mask (True = keep) for query indices ``rows`` and key indices ``cols`` (broadcastable 2-D)."""
    rng_offs = (off_bh.to(tl.int64) * MAXS + rows.to(tl.int64)) * MAXS + cols.to(tl.int64)
    return tl.rand(seed, rng_offs) >= dropout_p


@triton.jit
def _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN: tl.constexpr):
    """(first token, length) of sequence ``off_b``."""
    if VARLEN:
        seq_start = tl.load(CU_SEQLENS + off_b)
        seqlen = tl.load(CU_SEQLENS + off_b + 1) - seq_start
    else:
        seq_start = off_b * 0
        seqlen = SEQLEN + off_b * 0
    return seq_start, seqlen


@triton.jit
def _make_src(
    BASE,
    seqlen,
    stride_s,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Source of ``BLOCK_R x BLOCK_D`` row tiles of one (sequence, head): a device-side TMA descriptor whose
    shape is exactly ``[seqlen, HEAD_DIM]`` (out-of-range rows/columns read as 0, stores are clipped), or the
    base pointer itself (pointer path: masks do the same job)."""
    if USE_TMA:
        return tl.make_tensor_descriptor(
            BASE, shape=[seqlen, HEAD_DIM], strides=[stride_s, 1], block_shape=[BLOCK_R, BLOCK_D]
        )
    else:
        return BASE


@triton.jit
def _load_tile(
    src,
    start,
    seqlen,
    stride_s,
    offs_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_TMA: tl.constexpr,
    MASK_ROWS: tl.constexpr,
):
    """Rows ``[start, start + BLOCK_R)`` x head dim of a source made by :func:`_make_src` (zeros outside)."""
    if USE_TMA:
        return src.load([start, 0])
    else:
        offs_r = start + tl.arange(0, BLOCK_R)
        # 64-bit row offsets: row * stride_s passes 2**31 once one sequence's slice does
        ptrs = src + offs_r.to(tl.int64)[:, None] * stride_s + offs_d[None, :]
        if MASK_ROWS:
            return tl.load(ptrs, mask=(offs_r[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        elif HEAD_DIM == BLOCK_D:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def _store_tile(
    dst,
    start,
    seqlen,
    stride_s,
    offs_d,
    value,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Store a ``BLOCK_R x BLOCK_D`` tile at rows ``[start, ...)``, clipped to ``seqlen`` x HEAD_DIM."""
    if USE_TMA:
        dst.store([start, 0], value)
    else:
        offs_r = start + tl.arange(0, BLOCK_R)
        tl.store(
            dst + offs_r.to(tl.int64)[:, None] * stride_s + offs_d[None, :],
            value,
            mask=(offs_r[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM),
        )


@triton.jit
def _attn_fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_src,
    v_src,
    stride_ks,
    stride_vs,
    offs_m,
    offs_d,
    lo,
    hi,
    seqlen,
    qk_scale,
    seed,
    off_bh,
    MAXS,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    MASK: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Online-softmax sweep of one query tile over key blocks ``[lo, hi)``; ``MASK`` adds the causal and
    key-bound masks (only the diagonal and last partial blocks need them)."""
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        # -- load the K and V tiles --
        k = _load_tile(k_src, start_n, seqlen, stride_ks, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D, USE_TMA, MASK)
        v = _load_tile(v_src, start_n, seqlen, stride_vs, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D, USE_TMA, MASK)
        # -- compute qk (base-2 units) --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASK:
            offs_n = start_n + offs_n0
            valid = (offs_n < seqlen)[None, :]
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            qk = tl.where(valid, qk, float("-inf"))
        # -- update m_i and l_i --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # -- rescale acc, apply dropout to p --
        acc = acc * alpha[:, None]
        if DROPOUT:
            keep = _dropout_keep(seed, off_bh, offs_m[:, None], (start_n + offs_n0)[None, :], MAXS, dropout_p)
            p = tl.where(keep, p, 0.0)
        # -- acc += p v --
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["seed"])
def _attn_fwd_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    CU_SEQLENS,
    sm_scale,
    seed,
    dropout_p,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ob,
    stride_os,
    stride_oh,
    stride_lb,
    stride_lh,
    SEQLEN,
    NUM_HEADS,
    GROUP,
    MAXS,
    SEQ_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    VARLEN: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """O = softmax(scale * Q K^T [+ causal mask]) V, and lse2 = log2-sum-exp of the scores, for one
    (query block, q head, sequence); grid ``(cdiv(max_seqlen, BLOCK_M), q heads, sequences)``.

    Tiling: the program keeps one ``BLOCK_M x BLOCK_D`` query tile in registers and streams ``BLOCK_N x
    BLOCK_D`` K/V tiles of kv head ``q_head // GROUP`` (TMA descriptors on Hopper+, masked pointer loads
    otherwise), carrying the running max ``m_i``, running sum ``l_i`` and the un-normalised ``BLOCK_M x
    BLOCK_D`` accumulator in fp32 (online softmax). Key blocks fully inside the sequence (and, when causal,
    fully below the diagonal) run without score masks; only the diagonal and last partial blocks are masked.
    Causal launches run the heaviest (last) query blocks first. Writes O (input dtype) and ``lse2`` (fp32)
    for the rows of the block that lie inside the sequence.
    """
    num_m = tl.num_programs(0)
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = num_m - 1 - pid_m  # heaviest (last) query blocks first
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    seq_start, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen:
        return
    # 64-bit base offsets: batch, sequence start and head strides can each pass 2**31 elements
    off_kvh = (off_h // GROUP).to(tl.int64)
    off_b64 = off_b.to(tl.int64)
    start64 = seq_start.to(tl.int64)
    off_h64 = off_h.to(tl.int64)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen

    q_src = _make_src(
        Q + off_b64 * stride_qb + start64 * stride_qs + off_h64 * stride_qh,
        seqlen,
        stride_qs,
        HEAD_DIM,
        BLOCK_M,
        BLOCK_D,
        USE_TMA,
    )
    k_src = _make_src(
        K + off_b64 * stride_kb + start64 * stride_ks + off_kvh * stride_kh,
        seqlen,
        stride_ks,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        USE_TMA,
    )
    v_src = _make_src(
        V + off_b64 * stride_vb + start64 * stride_vs + off_kvh * stride_vh,
        seqlen,
        stride_vs,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        USE_TMA,
    )
    q = _load_tile(q_src, start_m, seqlen, stride_qs, offs_d, HEAD_DIM, BLOCK_M, BLOCK_D, USE_TMA, True)

    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    off_bh = off_b * NUM_HEADS + off_h

    if CAUSAL:
        full_hi = (start_m // BLOCK_N) * BLOCK_N  # keys below the block's first row: visible to every row
        hi = tl.minimum(start_m + BLOCK_M, seqlen)
    else:
        full_hi = (seqlen // BLOCK_N) * BLOCK_N
        hi = seqlen
    # key blocks every row of the tile sees in full: no masks
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_src=k_src,
        v_src=v_src,
        stride_ks=stride_ks,
        stride_vs=stride_vs,
        offs_m=offs_m,
        offs_d=offs_d,
        lo=0,
        hi=full_hi,
        seqlen=seqlen,
        qk_scale=qk_scale,
        seed=seed,
        off_bh=off_bh,
        MAXS=MAXS,
        dropout_p=dropout_p,
        HEAD_DIM=HEAD_DIM,
        BLOCK_D=BLOCK_D,
        BLOCK_N=BLOCK_N,
        CAUSAL=CAUSAL,
        MASK=False,
        DROPOUT=DROPOUT,
        DOT_PREC=DOT_PREC,
        USE_TMA=USE_TMA,
    )
    # the diagonal block(s) when causal and the last partial key block: masked
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_src=k_src,
        v_src=v_src,
        stride_ks=stride_ks,
        stride_vs=stride_vs,
        offs_m=offs_m,
        offs_d=offs_d,
        lo=full_hi,
        hi=hi,
        seqlen=seqlen,
        qk_scale=qk_scale,
        seed=seed,
        off_bh=off_bh,
        MAXS=MAXS,
        dropout_p=dropout_p,
        HEAD_DIM=HEAD_DIM,
        BLOCK_D=BLOCK_D,
        BLOCK_N=BLOCK_N,
        CAUSAL=CAUSAL,
        MASK=True,
        DROPOUT=DROPOUT,
        DOT_PREC=DOT_PREC,
        USE_TMA=USE_TMA,
    )

    inv_l = 1.0 / l_i
    if DROPOUT:
        inv_l = inv_l / (1.0 - dropout_p)
    out = acc * inv_l[:, None]
    lse2 = m_i + tl.math.log2(l_i)
    tl.store(LSE + off_b64 * stride_lb + off_h64 * stride_lh + start64 + offs_m, lse2, mask=m_ok)
    o_dst = _make_src(
        Out + off_b64 * stride_ob + start64 * stride_os + off_h64 * stride_oh,
        seqlen,
        stride_os,
        HEAD_DIM,
        BLOCK_M,
        BLOCK_D,
        USE_TMA,
    )
    _store_tile(
        o_dst, start_m, seqlen, stride_os, offs_d, out.to(Out.dtype.element_ty), HEAD_DIM, BLOCK_M, USE_TMA
    )


@triton.jit(do_not_specialize=["seed"])
def _dropout_mask_kernel(
    OUT,
    CU_SEQLENS,
    seed,
    dropout_p,
    SEQLEN,
    NUM_HEADS,
    MAXS,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Materialise the dropout keep mask the attention kernels use: OUT[b, h, i, j] (uint8, ``MAXS x MAXS``
    per sequence and head; entries past a sequence's length are left untouched). Test/debug helper."""
    start_m = tl.program_id(0) * BLOCK_M
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    seq_start, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    if start_m >= seqlen:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    off_bh = off_b * NUM_HEADS + off_h
    base = OUT + off_bh.to(tl.int64) * MAXS * MAXS
    for start_n in range(0, seqlen, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, off_bh, offs_m[:, None], offs_n[None, :], MAXS, dropout_p)
        ok = (offs_m[:, None] < seqlen) & (offs_n[None, :] < seqlen)
        tl.store(base + offs_m[:, None] * MAXS + offs_n[None, :], keep.to(tl.uint8), mask=ok)


# --------------------------------------------------------------------------------------------------------
# Tile configurations
# --------------------------------------------------------------------------------------------------------

# Used under the interpreter / off-GPU (tests): small tiles, no autotuning. Tests may override the sizes.
INTERPRET_FWD_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16}


def tile_configs(kernel: str) -> list:
    """Every tile config ``kernel`` ("fwd" | "dkdv" | "dq") may autotune over; ``kernels.tuning.prune`` keeps
    the ones the launch's GPU, dtype, head dim and dropout allow."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in tuning.all_tiles(kernel)
    ]


_attn_fwd_tuned = tuning.autotuner_per_gpu(
    _attn_fwd_kernel,
    kernel="fwd",
    configs=tile_configs("fwd"),
    key=["HEAD_DIM", "SEQ_BUCKET", "CAUSAL", "VARLEN", "DROPOUT", "USE_TMA"],
)


def seq_bucket(max_seqlen: int) -> int:
    """Autotuning key for sequence length: next power of two, clamped to [64, 16384]."""
    return max(64, min(16384, triton.next_power_of_2(max(1, int(max_seqlen)))))


def dot_precision(dtype) -> str:
    import torch

    # fp32 inputs: exact fp32 products (the tests compare against float64); 16-bit inputs ignore this.
    return "ieee" if dtype == torch.float32 else "tf32"


def use_autotune(device) -> bool:
    """Compiled, autotuned kernels (on a GPU, or for the compile audit's ``tuning.TARGET``); else the
    interpreter with the fixed small tiles."""
    return tuning.TARGET is not None or (device.type == "cuda" and not interpreting())


# None = automatic (TMA descriptors on Hopper+ GPUs and under the interpreter, when strides allow); tests set
# True/False to force one load/store path.
FORCE_TMA = None


def use_tma(*tensors) -> bool:
    """Whether the kernels may read/write these tensors through TMA tensor descriptors: device-side
    descriptors need a contiguous last dim, 16-byte aligned base and 16-byte multiple strides, sm_90+, and
    16-bit inputs on a GPU (fp32 runs the pointer path; the interpreter runs TMA for every dtype)."""
    if FORCE_TMA is not None:
        return bool(FORCE_TMA)
    import torch

    t0 = tensors[0]
    if use_autotune(t0.device):
        # fp32: the IEEE fp32 dot products get no tensor cores, and on the TMA path they spill heavily
        if tuning.target_of(t0.device).capability < 90 or t0.dtype == torch.float32:
            return False
    elif not interpreting():
        return False
    for t in tensors:
        if t.stride(-1) != 1 or t.data_ptr() % 16:
            return False
        if any(
            st <= 0 or (st * t.element_size()) % 16
            for st, n in zip(t.stride()[:-1], t.shape[:-1], strict=False)
            if n > 1
        ):
            return False
    return True


def ensure_allocator(device) -> None:
    """Device-side TMA descriptors need a global-memory scratch allocator (set per thread: autograd's
    backward runs in its own thread). Installs a torch allocator unless one is already set. The allocator
    allocates on the *current* CUDA device at launch time (the launches run under ``torch.cuda.device`` of
    their tensors), so one process driving several GPUs gets each kernel's scratch on its own GPU."""
    if device.type != "cuda" or interpreting():
        return
    import torch

    try:
        from triton.runtime import _allocation

        if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            return
    except Exception:  # private API moved: set ours
        pass

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device=torch.device("cuda", torch.cuda.current_device()))

    triton.set_allocator(alloc)


def on_device(device):
    """``torch.cuda.device(device)`` for CUDA tensors (kernels launch on the current device), else a no-op."""
    import contextlib

    import torch

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def attn_fwd(q, k, v, out, lse, cu_seqlens, seqlen, nbatch, max_seqlen, causal, sm_scale, dropout_p, seed):
    """Launch the forward kernel.

    Dense: q/k/v/out ``(B, S, H, D)``, lse ``(B, Hq, S)``, ``cu_seqlens=None``.
    Varlen: q/k/v/out ``(T, H, D)``, lse ``(Hq, T)``, ``cu_seqlens`` int32 ``(nbatch + 1,)``.
    """
    varlen = cu_seqlens is not None
    hq, d = q.shape[-2], q.shape[-1]
    hkv = k.shape[-2]
    block_d = max(16, triton.next_power_of_2(d))
    tma = use_tma(q, k, v, out)
    if use_autotune(q.device):
        tuning.check_supported(
            device=q.device, dtype=q.dtype, head_dim=d, block_d=block_d, dropout=dropout_p > 0.0, tma=tma
        )
    args = dict(
        Q=q,
        K=k,
        V=v,
        Out=out,
        LSE=lse,
        CU_SEQLENS=cu_seqlens if varlen else q,
        sm_scale=sm_scale,
        seed=seed,
        dropout_p=dropout_p,
        **named_strides("q", q, varlen),
        **named_strides("k", k, varlen),
        **named_strides("v", v, varlen),
        **named_strides("o", out, varlen),
        **named_lse_strides(lse, varlen),
        SEQLEN=seqlen,
        NUM_HEADS=hq,
        GROUP=hq // hkv,
        MAXS=max_seqlen,
        SEQ_BUCKET=seq_bucket(max_seqlen),
        HEAD_DIM=d,
        BLOCK_D=block_d,
        CAUSAL=bool(causal),
        VARLEN=varlen,
        DROPOUT=dropout_p > 0.0,
        DOT_PREC=dot_precision(q.dtype),
        USE_TMA=tma,
    )
    if tma:
        ensure_allocator(q.device)
    with on_device(q.device):
        if use_autotune(q.device):
            grid = lambda META: (triton.cdiv(max_seqlen, META["BLOCK_M"]), hq, nbatch)  # noqa: E731
            _attn_fwd_tuned(q.device)[grid](**args)
        else:
            cfg = INTERPRET_FWD_CONFIG
            grid = (triton.cdiv(max_seqlen, cfg["BLOCK_M"]), hq, nbatch)
            _attn_fwd_kernel[grid](**args, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"])


def named_strides(prefix: str, t, varlen: bool) -> dict:
    """``stride_{prefix}b/s/h`` keyword arguments of a kernel: (batch, sequence, head) strides in elements;
    batch stride 0 for packed varlen tensors."""
    sb, ss, sh = strides3(t, varlen)
    return {f"stride_{prefix}b": sb, f"stride_{prefix}s": ss, f"stride_{prefix}h": sh}


def named_lse_strides(lse, varlen: bool) -> dict:
    """``stride_lb`` / ``stride_lh`` keyword arguments for an LSE/delta buffer (see :func:`lse_strides`)."""
    sb, sh = lse_strides(lse, varlen)
    return {"stride_lb": sb, "stride_lh": sh}


def strides3(t, varlen: bool):
    """(batch, sequence, head) strides in elements; batch stride 0 for packed varlen tensors."""
    if varlen:
        return (0, t.stride(0), t.stride(1))
    return (t.stride(0), t.stride(1), t.stride(2))


def lse_strides(lse, varlen: bool):
    """(batch, head) strides of an fp32 LSE/delta buffer: (B, H, S) dense or (H, T) varlen; token stride 1."""
    return (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


def dropout_keep_mask(cu_seqlens, seqlen, nbatch, num_heads, max_seqlen, dropout_p, seed, device):
    """(nbatch, num_heads, max_seqlen, max_seqlen) bool keep mask, exactly as the kernels draw it."""
    import torch

    out = torch.zeros((nbatch, num_heads, max_seqlen, max_seqlen), dtype=torch.uint8, device=device)
    varlen = cu_seqlens is not None
    grid = (triton.cdiv(max_seqlen, 16), num_heads, nbatch)
    _dropout_mask_kernel[grid](
        OUT=out,
        CU_SEQLENS=cu_seqlens if varlen else out,
        seed=seed,
        dropout_p=dropout_p,
        SEQLEN=seqlen,
        NUM_HEADS=num_heads,
        MAXS=max_seqlen,
        VARLEN=varlen,
        BLOCK_M=16,
        BLOCK_N=16,
    )
    return out.bool()
