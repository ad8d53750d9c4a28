"""Triton backward kernels of FlashAttention-2 style attention (dense and varlen).

Three launches, all deterministic (no atomics):

1. ``_attn_bwd_preprocess``: ``delta[i] = sum_d dO[i, d] * O[i, d]`` (fp32), one value per query row and head.
2. ``_attn_bwd_dkdv``: one program per (key block, kv head, sequence). It keeps its K/V tile and fp32 dK/dV
   accumulators in registers and loops over the ``GROUP`` query heads that share the kv head (GQA/MQA: the
   group sum happens in registers) and over their query blocks, recomputing ``P^T = exp2(K Q^T * c - lse2)``.
3. ``_attn_bwd_dq``: one program per (query block, q head, sequence), looping over key blocks.

With ``S = scale * Q K^T``, ``P = softmax(S)``, dropout keep mask ``Z`` and ``r = 1 / (1 - p_drop)``:
``dV = (P o Z r)^T dO``, ``dP = (dO V^T) o Z r``, ``dS = P o (dP - delta)``, ``dQ = scale * dS K``,
``dK = scale * dS^T Q``. See ``kernels.attention_fwd`` for the layout, RNG and masking conventions.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import tuning
from .attention_fwd import (
    _dropout_keep,
    _load_tile,
    _make_src,
    _seq_bounds,
    _store_tile,
    dot_precision,
    ensure_allocator,
    named_lse_strides,
    named_strides,
    on_device,
    seq_bucket,
    tile_configs,
    use_autotune,
    use_tma,
)


@triton.jit
def _attn_bwd_preprocess(
    Out,
    DO,
    DELTA,
    CU_SEQLENS,
    stride_ob,
    stride_os,
    stride_oh,
    stride_dob,
    stride_dos,
    stride_doh,
    stride_lb,
    stride_lh,
    SEQLEN,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O) in fp32 for one (query block of ``BLOCK_M`` rows, head, sequence); grid
    ``(cdiv(max_seqlen, BLOCK_M), q heads, sequences)``, one ``BLOCK_M x BLOCK_D`` tile of O and dO each."""
    start_m = tl.program_id(0) * BLOCK_M
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2)
    seq_start, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    if start_m >= seqlen:
        return
    off_b64 = off_b.to(tl.int64)
    start64 = seq_start.to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_m64 = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(
        Out
        + off_b64 * stride_ob
        + start64 * stride_os
        + off_h * stride_oh
        + offs_m64[:, None] * stride_os
        + offs_d[None, :],
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        DO
        + off_b64 * stride_dob
        + start64 * stride_dos
        + off_h * stride_doh
        + offs_m64[:, None] * stride_dos
        + offs_d[None, :],
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    delta = tl.sum(o * do, axis=1)
    tl.store(DELTA + off_b64 * stride_lb + off_h * stride_lh + start64 + offs_m, delta, mask=offs_m < seqlen)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_src,
    do_src,
    lse_base,
    delta_base,
    stride_qs,
    stride_dos,
    offs_n,
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
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
    MASK: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Accumulate dK/dV of one key block over query blocks ``[lo, hi)`` of one query head (transposed tiles:
    ``P^T = exp2(K Q^T * c - lse2)`` is ``BLOCK_N x BLOCK_M``)."""
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        # -- load the Q and dO tiles and their rows' lse2 / delta --
        q = _load_tile(q_src, start_m, seqlen, stride_qs, offs_d, HEAD_DIM, BLOCK_M, BLOCK_D, USE_TMA, MASK)
        do = _load_tile(
            do_src, start_m, seqlen, stride_dos, offs_d, HEAD_DIM, BLOCK_M, BLOCK_D, USE_TMA, MASK
        )
        if MASK:
            m_ok = offs_m < seqlen
            lse = tl.load(lse_base + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
        else:
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        # -- recompute p^T from the saved lse2 --
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASK:
            valid = (offs_m < seqlen)[None, :]
            if CAUSAL:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(valid, pT, 0.0)
        # -- compute dp^T = v dO^T, apply the dropout mask to p^T and dp^T --
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        if DROPOUT:
            keep = _dropout_keep(seed, off_bh, offs_m[None, :], offs_n[:, None], MAXS, dropout_p)
            rp = 1.0 / (1.0 - dropout_p)
            pdT = tl.where(keep, pT * rp, 0.0)
            dpT = tl.where(keep, dpT * rp, 0.0)
        else:
            pdT = pT
        # -- dv += p^T dO --
        dv = tl.dot(pdT.to(do.dtype), do, dv, input_precision=DOT_PREC)
        # -- ds^T = p^T (dp^T - delta); dk += ds^T q --
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PREC)
    return dk, dv


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
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
    stride_dob,
    stride_dos,
    stride_doh,
    stride_dkb,
    stride_dks,
    stride_dkh,
    stride_dvb,
    stride_dvs,
    stride_dvh,
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
    """dK, dV for one (key block, kv head, sequence); grid ``(cdiv(max_seqlen, BLOCK_N), kv heads,
    sequences)``.

    Tiling: the program keeps its ``BLOCK_N x BLOCK_D`` K and V tiles and the fp32 dK/dV accumulators in
    registers and loops over the ``GROUP`` query heads of its kv head (the GQA sum happens in registers, no
    atomics), and for each over ``BLOCK_M``-row Q/dO tiles: when causal only the query blocks at or after
    the key block, those crossing the diagonal masked, the rest unmasked; the last partial query block is
    masked against the sequence end. dK is scaled by ``sm_scale`` once at the end.
    """
    start_n = tl.program_id(0) * BLOCK_N
    off_kvh = tl.program_id(1).to(tl.int64)  # 64-bit head offsets (see the forward kernel)
    off_b = tl.program_id(2)
    seq_start, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    if start_n >= seqlen:
        return
    off_b64 = off_b.to(tl.int64)
    start64 = seq_start.to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
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
    k = _load_tile(k_src, start_n, seqlen, stride_ks, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D, USE_TMA, True)
    v = _load_tile(v_src, start_n, seqlen, stride_vs, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D, USE_TMA, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
        mid = tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M  # first query block entirely below the diagonal
    else:
        lo = 0
        mid = 0
    full_end = (seqlen // BLOCK_M) * BLOCK_M
    for g in range(0, GROUP):
        off_h = off_kvh * GROUP + g
        off_bh = off_b * NUM_HEADS + off_h
        q_src = _make_src(
            Q + off_b64 * stride_qb + start64 * stride_qs + off_h * stride_qh,
            seqlen,
            stride_qs,
            HEAD_DIM,
            BLOCK_M,
            BLOCK_D,
            USE_TMA,
        )
        do_src = _make_src(
            DO + off_b64 * stride_dob + start64 * stride_dos + off_h * stride_doh,
            seqlen,
            stride_dos,
            HEAD_DIM,
            BLOCK_M,
            BLOCK_D,
            USE_TMA,
        )
        lse_base = LSE + off_b64 * stride_lb + off_h * stride_lh + start64
        delta_base = DELTA + off_b64 * stride_lb + off_h * stride_lh + start64
        # query blocks crossing the diagonal (causal only): masked
        dk, dv = _attn_bwd_dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_src=q_src,
            do_src=do_src,
            lse_base=lse_base,
            delta_base=delta_base,
            stride_qs=stride_qs,
            stride_dos=stride_dos,
            offs_n=offs_n,
            offs_d=offs_d,
            lo=lo,
            hi=tl.minimum(mid, seqlen),
            seqlen=seqlen,
            qk_scale=qk_scale,
            seed=seed,
            off_bh=off_bh,
            MAXS=MAXS,
            dropout_p=dropout_p,
            HEAD_DIM=HEAD_DIM,
            BLOCK_D=BLOCK_D,
            BLOCK_M=BLOCK_M,
            CAUSAL=CAUSAL,
            MASK=True,
            DROPOUT=DROPOUT,
            DOT_PREC=DOT_PREC,
            USE_TMA=USE_TMA,
        )
        # full query blocks after the diagonal: unmasked
        dk, dv = _attn_bwd_dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_src=q_src,
            do_src=do_src,
            lse_base=lse_base,
            delta_base=delta_base,
            stride_qs=stride_qs,
            stride_dos=stride_dos,
            offs_n=offs_n,
            offs_d=offs_d,
            lo=mid,
            hi=full_end,
            seqlen=seqlen,
            qk_scale=qk_scale,
            seed=seed,
            off_bh=off_bh,
            MAXS=MAXS,
            dropout_p=dropout_p,
            HEAD_DIM=HEAD_DIM,
            BLOCK_D=BLOCK_D,
            BLOCK_M=BLOCK_M,
            CAUSAL=CAUSAL,
            MASK=False,
            DROPOUT=DROPOUT,
            DOT_PREC=DOT_PREC,
            USE_TMA=USE_TMA,
        )
        # last partial query block: masked
        dk, dv = _attn_bwd_dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_src=q_src,
            do_src=do_src,
            lse_base=lse_base,
            delta_base=delta_base,
            stride_qs=stride_qs,
            stride_dos=stride_dos,
            offs_n=offs_n,
            offs_d=offs_d,
            lo=tl.maximum(mid, full_end),
            hi=seqlen,
            seqlen=seqlen,
            qk_scale=qk_scale,
            seed=seed,
            off_bh=off_bh,
            MAXS=MAXS,
            dropout_p=dropout_p,
            HEAD_DIM=HEAD_DIM,
            BLOCK_D=BLOCK_D,
            BLOCK_M=BLOCK_M,
            CAUSAL=CAUSAL,
            MASK=True,
            DROPOUT=DROPOUT,
            DOT_PREC=DOT_PREC,
            USE_TMA=USE_TMA,
        )
    dk = dk * sm_scale
    dk_dst = _make_src(
        DK + off_b64 * stride_dkb + start64 * stride_dks + off_kvh * stride_dkh,
        seqlen,
        stride_dks,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        USE_TMA,
    )
    dv_dst = _make_src(
        DV + off_b64 * stride_dvb + start64 * stride_dvs + off_kvh * stride_dvh,
        seqlen,
        stride_dvs,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        USE_TMA,
    )
    _store_tile(
        dk_dst, start_n, seqlen, stride_dks, offs_d, dk.to(DK.dtype.element_ty), HEAD_DIM, BLOCK_N, USE_TMA
    )
    _store_tile(
        dv_dst, start_n, seqlen, stride_dvs, offs_d, dv.to(DV.dtype.element_ty), HEAD_DIM, BLOCK_N, USE_TMA
    )


@triton.jit
def _attn_bwd_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
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
    """Accumulate dQ of one query block over key blocks ``[lo, hi)``."""
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        # -- load the K and V tiles --
        k = _load_tile(k_src, start_n, seqlen, stride_ks, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D, USE_TMA, MASK)
        v = _load_tile(v_src, start_n, seqlen, stride_vs, offs_d, HEAD_DIM, BLOCK_N, BLOCK_D, USE_TMA, MASK)
        # -- recompute p from the saved lse2 --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASK:
            offs_n = start_n + offs_n0
            valid = (offs_n < seqlen)[None, :]
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            p = tl.where(valid, p, 0.0)
        # -- compute dp = dO v^T (dropped and rescaled like p in the forward) --
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        if DROPOUT:
            keep = _dropout_keep(seed, off_bh, offs_m[:, None], (start_n + offs_n0)[None, :], MAXS, dropout_p)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        # -- ds = p (dp - delta); dq += ds k --
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dq(
    Q,
    K,
    V,
    DO,
    DQ,
    LSE,
    DELTA,
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
    stride_dob,
    stride_dos,
    stride_doh,
    stride_dqb,
    stride_dqs,
    stride_dqh,
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
    """dQ for one (query block, q head, sequence); grid ``(cdiv(max_seqlen, BLOCK_M), q heads, sequences)``.

    Tiling: the program keeps its ``BLOCK_M x BLOCK_D`` Q and dO tiles, their rows' lse2/delta and the fp32
    dQ accumulator in registers and streams ``BLOCK_N``-row K/V tiles of kv head ``q_head // GROUP`` with
    the same unmasked/masked split as the forward kernel.
    """
    num_m = tl.num_programs(0)
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = num_m - 1 - pid_m
    off_h = tl.program_id(1).to(tl.int64)  # 64-bit head offsets (see the forward kernel)
    off_b = tl.program_id(2)
    seq_start, seqlen = _seq_bounds(CU_SEQLENS, off_b, SEQLEN, VARLEN)
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen:
        return
    off_kvh = off_h // GROUP
    off_b64 = off_b.to(tl.int64)
    start64 = seq_start.to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen
    q_src = _make_src(
        Q + off_b64 * stride_qb + start64 * stride_qs + off_h * stride_qh,
        seqlen,
        stride_qs,
        HEAD_DIM,
        BLOCK_M,
        BLOCK_D,
        USE_TMA,
    )
    do_src = _make_src(
        DO + off_b64 * stride_dob + start64 * stride_dos + off_h * stride_doh,
        seqlen,
        stride_dos,
        HEAD_DIM,
        BLOCK_M,
        BLOCK_D,
        USE_TMA,
    )
    q = _load_tile(q_src, start_m, seqlen, stride_qs, offs_d, HEAD_DIM, BLOCK_M, BLOCK_D, USE_TMA, True)
    do = _load_tile(do_src, start_m, seqlen, stride_dos, offs_d, HEAD_DIM, BLOCK_M, BLOCK_D, USE_TMA, True)
    lse = tl.load(LSE + off_b64 * stride_lb + off_h * stride_lh + start64 + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + off_b64 * stride_lb + off_h * stride_lh + start64 + offs_m, mask=m_ok, other=0.0)
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
    qk_scale = sm_scale * 1.4426950408889634
    off_bh = off_b * NUM_HEADS + off_h
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if CAUSAL:
        full_hi = (start_m // BLOCK_N) * BLOCK_N
        hi = tl.minimum(start_m + BLOCK_M, seqlen)
    else:
        full_hi = (seqlen // BLOCK_N) * BLOCK_N
        hi = seqlen
    # key blocks every row of the tile sees in full: no masks
    dq = _attn_bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
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
    dq = _attn_bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
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
    dq = dq * sm_scale
    dq_dst = _make_src(
        DQ + off_b64 * stride_dqb + start64 * stride_dqs + off_h * stride_dqh,
        seqlen,
        stride_dqs,
        HEAD_DIM,
        BLOCK_M,
        BLOCK_D,
        USE_TMA,
    )
    _store_tile(
        dq_dst, start_m, seqlen, stride_dqs, offs_d, dq.to(DQ.dtype.element_ty), HEAD_DIM, BLOCK_M, USE_TMA
    )


# --------------------------------------------------------------------------------------------------------
# Tile configurations
# --------------------------------------------------------------------------------------------------------

# Under the interpreter / off-GPU (tests): small tiles, no autotuning. Tests may override the sizes.
INTERPRET_BWD_CONFIG = {"DKDV_BLOCK_M": 16, "DKDV_BLOCK_N": 16, "DQ_BLOCK_M": 16, "DQ_BLOCK_N": 16}

# Tile lists per GPU / dtype / head dim / dropout: kernels.tuning (checked by the compile audit).
_TUNE_KEY = ["HEAD_DIM", "SEQ_BUCKET", "CAUSAL", "VARLEN", "DROPOUT", "USE_TMA"]
_attn_bwd_dkdv_tuned = tuning.autotuner_per_gpu(
    _attn_bwd_dkdv, kernel="dkdv", configs=tile_configs("dkdv"), key=_TUNE_KEY
)
_attn_bwd_dq_tuned = tuning.autotuner_per_gpu(
    _attn_bwd_dq, kernel="dq", configs=tile_configs("dq"), key=_TUNE_KEY
)


def attn_bwd(
    q,
    k,
    v,
    out,
    do,
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
    sm_scale,
    dropout_p,
    seed,
):
    """Launch preprocess, dK/dV and dQ kernels; ``dq``/``dk``/``dv``/``delta`` are preallocated outputs."""
    varlen = cu_seqlens is not None
    hq, d = q.shape[-2], q.shape[-1]
    hkv = k.shape[-2]
    block_d = max(16, triton.next_power_of_2(d))
    cu = cu_seqlens if varlen else q
    assert delta.stride() == lse.stride()
    tma = use_tma(q, k, v, do, dq, dk, dv)
    meta = dict(
        HEAD_DIM=d,
        BLOCK_D=block_d,
        CAUSAL=bool(causal),
        VARLEN=varlen,
        DROPOUT=dropout_p > 0.0,
        DOT_PREC=dot_precision(q.dtype),
        USE_TMA=tma,
    )
    if use_autotune(q.device):
        tuning.check_supported(
            device=q.device, dtype=q.dtype, head_dim=d, block_d=block_d, dropout=dropout_p > 0.0, tma=tma
        )
    if tma:
        ensure_allocator(q.device)
    with on_device(q.device):
        pre_bm = 64 if use_autotune(q.device) else 16
        _attn_bwd_preprocess[(triton.cdiv(max_seqlen, pre_bm), hq, nbatch)](
            Out=out,
            DO=do,
            DELTA=delta,
            CU_SEQLENS=cu,
            **named_strides("o", out, varlen),
            **named_strides("do", do, varlen),
            **named_lse_strides(lse, varlen),
            SEQLEN=seqlen,
            HEAD_DIM=d,
            BLOCK_D=block_d,
            VARLEN=varlen,
            BLOCK_M=pre_bm,
        )
        shared = dict(
            Q=q,
            K=k,
            V=v,
            DO=do,
            LSE=lse,
            DELTA=delta,
            CU_SEQLENS=cu,
            sm_scale=sm_scale,
            seed=seed,
            dropout_p=dropout_p,
            **named_strides("q", q, varlen),
            **named_strides("k", k, varlen),
            **named_strides("v", v, varlen),
            **named_strides("do", do, varlen),
            **named_lse_strides(lse, varlen),
            SEQLEN=seqlen,
            NUM_HEADS=hq,
            GROUP=hq // hkv,
            MAXS=max_seqlen,
            SEQ_BUCKET=seq_bucket(max_seqlen),
            **meta,
        )
        dkdv_args = dict(
            shared,
            DK=dk,
            DV=dv,
            **named_strides("dk", dk, varlen),
            **named_strides("dv", dv, varlen),
            USE_TMA=tuning.kernel_uses_tma("dkdv", block_d, tma),
        )
        dq_args = dict(shared, DQ=dq, **named_strides("dq", dq, varlen))
        if use_autotune(q.device):
            _attn_bwd_dkdv_tuned(q.device)[lambda M: (triton.cdiv(max_seqlen, M["BLOCK_N"]), hkv, nbatch)](
                **dkdv_args
            )
            _attn_bwd_dq_tuned(q.device)[lambda M: (triton.cdiv(max_seqlen, M["BLOCK_M"]), hq, nbatch)](
                **dq_args
            )
        else:
            c = INTERPRET_BWD_CONFIG
            _attn_bwd_dkdv[(triton.cdiv(max_seqlen, c["DKDV_BLOCK_N"]), hkv, nbatch)](
                **dkdv_args, BLOCK_M=c["DKDV_BLOCK_M"], BLOCK_N=c["DKDV_BLOCK_N"]
            )
            _attn_bwd_dq[(triton.cdiv(max_seqlen, c["DQ_BLOCK_M"]), hq, nbatch)](
                **dq_args, BLOCK_M=c["DQ_BLOCK_M"], BLOCK_N=c["DQ_BLOCK_N"]
            )
