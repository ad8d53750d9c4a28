"""Flash attention kernels against a float64 reference (forward, dQ, dK, dV).

Triton cases run on CPU under the Triton interpreter (TRITON_INTERPRET=1) with tiny shapes and 16x16 tiles.
Every Triton output (O, LSE, delta, dQ, dK, dV) is allocated filled with NaN (``_POISON_OUTPUTS``), so an
element the kernels fail to write fails the comparison. Each case draws fresh inputs from a generator seeded
from its parameters.

Tolerances (max |got - ref| <= ATOL + RTOL * max|ref|, against float64 maths on the same rounded inputs):
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402
import math  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import interpreter_ready  # noqa: E402

from kernels import attention as A  # noqa: E402

TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),  # fp32 inputs multiply in IEEE fp32 (input_precision="ieee")
    torch.float16: dict(atol=5e-3, rtol=5e-3),  # P and dS are rounded to fp16 before the P@V / dS@K products
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}


INTERPRETER_READY = interpreter_ready()
needs_triton = pytest.mark.skipif(
    not INTERPRETER_READY,
    reason="Triton kernel tests need triton and TRITON_INTERPRET=1 set before triton is first imported",
)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(A, "_POISON_OUTPUTS", True)


def _gen(*params) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(params).encode()))


def _randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype).requires_grad_()


def _ref_seq(q, k, v, causal, scale, keep=None, p=0.0):
    """float64 attention of one sequence: q (L, Hq, D), k/v (L, Hkv, D); keep (Hq, L, L) dropout keep mask."""
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = torch.einsum("ihd,jhd->hij", q, k) * scale
    if causal:
        n = q.shape[0]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    prob = s.softmax(-1)
    if keep is not None:
        prob = prob * keep.double() / (1.0 - p)
    return torch.einsum("hij,jhd->ihd", prob, v)


def _ref_dense(q, k, v, causal, scale, keep=None, p=0.0):
    return torch.stack(
        [
            _ref_seq(q[b], k[b], v[b], causal, scale, None if keep is None else keep[b], p)
            for b in range(q.shape[0])
        ]
    )


def _ref_varlen(q, k, v, cu, causal, scale, keep=None, p=0.0):
    outs = []
    bounds = cu.tolist()
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:], strict=False)):
        kp = None if keep is None else keep[i, :, : e - s, : e - s]
        outs.append(_ref_seq(q[s:e], k[s:e], v[s:e], causal, scale, kp, p))
    return torch.cat(outs)


def _assert_close(got, ref, dtype, what):
    tol = TOL[dtype]
    got = got.double()
    assert torch.isfinite(got).all(), f"{what}: non-finite values (unwritten output?)"
    err = (got - ref).abs().max().item()
    bound = tol["atol"] + tol["rtol"] * ref.abs().max().item()
    assert err <= bound, f"{what}: max abs err {err:.3e} > {bound:.3e}"


def _check_fwd_bwd(run, ref, inputs, dtype, gen):
    """run(*inputs) -> out; ref(*float64 inputs) -> out. Compares out and the three input gradients."""
    out = run(*inputs)
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, inputs, dout)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref_out = ref(*ref_inputs)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, dout.double())
    _assert_close(out, ref_out, dtype, "out")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads, strict=False):
        _assert_close(g, rg, dtype, name)
    return out, grads


# ------------------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter
# ------------------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_dense(causal, hq, hkv):
    gen = _gen("dense", causal, hq, hkv)
    b, s, d = 2, 27, 32
    q, k, v = _randn(gen, b, s, hq, d), _randn(gen, b, s, hkv, d), _randn(gen, b, s, hkv, d)
    scale = 1 / math.sqrt(d)
    _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(q, k, v, causal=causal, backend="triton"),
        lambda q, k, v: _ref_dense(q, k, v, causal, scale),
        (q, k, v),
        torch.float32,
        gen,
    )


@needs_triton
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128])
def test_head_dims(d):
    gen = _gen("head_dim", d)
    b, s, hq, hkv = 1, 21, 2, 1
    q, k, v = _randn(gen, b, s, hq, d), _randn(gen, b, s, hkv, d), _randn(gen, b, s, hkv, d)
    causal = d in (80, 128)
    scale = 0.3  # a non-default scale
    _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(q, k, v, causal=causal, softmax_scale=scale, backend="triton"),
        lambda q, k, v: _ref_dense(q, k, v, causal, scale),
        (q, k, v),
        torch.float32,
        gen,
    )


@needs_triton
def test_non_contiguous_bhsd_views():
    """q/k/v as transposed views of (B, H, S, D) tensors (what HF hands over): the kernels use strides."""
    gen = _gen("views")
    b, s, hq, hkv, d = 2, 19, 4, 2, 32
    q = torch.randn(b, hq, s, d, generator=gen).requires_grad_()
    k = torch.randn(b, hkv, s, d, generator=gen).requires_grad_()
    v = torch.randn(b, hkv, s, d, generator=gen).requires_grad_()
    scale = 1 / math.sqrt(d)
    _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, backend="triton"
        ),
        lambda q, k, v: _ref_dense(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), True, scale),
        (q, k, v),
        torch.float32,
        gen,
    )


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
def test_varlen(causal):
    gen = _gen("varlen", causal)
    lengths = [17, 1, 33, 5]
    cu = A.cu_seqlens_from_lengths(torch.tensor(lengths))
    t, hq, hkv, d = sum(lengths), 4, 2, 64
    q, k, v = _randn(gen, t, hq, d), _randn(gen, t, hkv, d), _randn(gen, t, hkv, d)
    scale = 1 / math.sqrt(d)
    _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(
            q, k, v, causal=causal, cu_seqlens=cu, max_seqlen=max(lengths), backend="triton"
        ),
        lambda q, k, v: _ref_varlen(q, k, v, cu, causal, scale),
        (q, k, v),
        torch.float32,
        gen,
    )


@needs_triton
@pytest.mark.parametrize("case", ["varlen_d80_gqa", "padded_left_d32"])
def test_pointer_path(monkeypatch, case):
    """The masked-pointer load/store path (used off Hopper or when strides do not allow TMA descriptors)."""
    from kernels import attention_fwd

    monkeypatch.setattr(attention_fwd, "FORCE_TMA", False)
    gen = _gen("pointer", case)
    if case == "varlen_d80_gqa":
        lengths = [19, 1, 28]
        cu = A.cu_seqlens_from_lengths(torch.tensor(lengths))
        d = 80
        q, k, v = _randn(gen, 48, 4, d), _randn(gen, 48, 2, d), _randn(gen, 48, 2, d)
        run = lambda q, k, v: A.flash_attention(q, k, v, causal=True, cu_seqlens=cu, backend="triton")  # noqa: E731
        ref = lambda q, k, v: _ref_varlen(q, k, v, cu, True, 1 / math.sqrt(d))  # noqa: E731
    else:
        mask = _padding_mask(3, 21, "left", gen)
        q, k, v = _randn(gen, 3, 21, 2, 32), _randn(gen, 3, 21, 1, 32), _randn(gen, 3, 21, 1, 32)
        run = lambda q, k, v: A.flash_attention_padded(q, k, v, mask, backend="triton")  # noqa: E731
        ref = lambda q, k, v: _ref_padded(q, k, v, mask, False, 1 / math.sqrt(32))  # noqa: E731
    _check_fwd_bwd(run, ref, (q, k, v), torch.float32, gen)


@needs_triton
def test_tma_selection_and_misaligned_fallback():
    """Contiguous inputs take the TMA-descriptor path; a view whose strides break 16-byte alignment falls back
    to pointers automatically and is still correct."""
    from kernels import attention_fwd

    gen = _gen("misaligned")
    q = torch.randn(1, 16, 2, 32, generator=gen)
    assert attention_fwd.use_tma(q, q, q)
    # last dim contiguous, row stride 66 floats = 264 bytes (not a multiple of 16): no TMA descriptor possible
    q, k, v = (torch.randn(1, 16, 2, 33, generator=gen).requires_grad_()[..., 1:] for _ in range(3))
    assert not attention_fwd.use_tma(q)
    _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(q, k, v, causal=True, backend="triton"),
        lambda q, k, v: _ref_dense(q, k, v, True, 1 / math.sqrt(32)),
        (q, k, v),
        torch.float32,
        gen,
    )


@needs_triton
@pytest.mark.parametrize(
    "tiles", [(32, 16, 16, 32, 32, 16), (16, 32, 32, 16, 16, 32)], ids=["fwd32x16", "fwd16x32"]
)
def test_uneven_tiles(monkeypatch, tiles):
    """BLOCK_M != BLOCK_N in every kernel: exercises the masked/unmasked loop split and diagonal blocks."""
    from kernels import attention_bwd, attention_fwd

    fm, fn, km, kn, qm, qn = tiles
    monkeypatch.setattr(attention_fwd, "INTERPRET_FWD_CONFIG", {"BLOCK_M": fm, "BLOCK_N": fn})
    monkeypatch.setattr(
        attention_bwd,
        "INTERPRET_BWD_CONFIG",
        {"DKDV_BLOCK_M": km, "DKDV_BLOCK_N": kn, "DQ_BLOCK_M": qm, "DQ_BLOCK_N": qn},
    )
    gen = _gen("tiles", tiles)
    lengths = [50, 7, 33]
    cu = A.cu_seqlens_from_lengths(torch.tensor(lengths))
    t, hq, hkv, d = sum(lengths), 2, 1, 32
    q, k, v = _randn(gen, t, hq, d), _randn(gen, t, hkv, d), _randn(gen, t, hkv, d)
    scale = 1 / math.sqrt(d)
    _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(q, k, v, causal=True, cu_seqlens=cu, backend="triton"),
        lambda q, k, v: _ref_varlen(q, k, v, cu, True, scale),
        (q, k, v),
        torch.float32,
        gen,
    )


def _padding_mask(b, s, side, gen):
    lengths = torch.randint(1, s + 1, (b,), generator=gen)
    lengths[0] = s  # one full row
    lengths[1] = 1  # one single-token row
    mask = torch.zeros(b, s, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, s - n :] = 1
    return mask


def _ref_padded(q, k, v, mask, causal, scale):
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i in range(q.shape[0]):
        idx = mask[i].nonzero().flatten()
        out[i, idx] = _ref_seq(q[i, idx], k[i, idx], v[i, idx], causal, scale)
    return out


@needs_triton
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("causal", [False, True])
def test_padded(side, causal):
    gen = _gen("padded", side, causal)
    b, s, hq, hkv, d = 3, 23, 4, 2, 32
    mask = _padding_mask(b, s, side, gen)
    q, k, v = _randn(gen, b, s, hq, d), _randn(gen, b, s, hkv, d), _randn(gen, b, s, hkv, d)
    scale = 1 / math.sqrt(d)
    out, grads = _check_fwd_bwd(
        lambda q, k, v: A.flash_attention_padded(q, k, v, mask, causal=causal, backend="triton"),
        lambda q, k, v: _ref_padded(q, k, v, mask, causal, scale),
        (q, k, v),
        torch.float32,
        gen,
    )
    pad = ~mask.bool()
    assert (out[pad] == 0).all(), "padded query rows must be 0"
    for g in grads:
        assert (g[pad] == 0).all(), "padded positions must get zero gradient"


@needs_triton
@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        pytest.param(
            torch.bfloat16,
            marks=pytest.mark.skipif(
                os.environ.get("TRITON_INTERPRET") == "1",
                reason="Triton 3.x interpreter computes tl.dot on bfloat16 operands wrongly "
                "(numpy has no bf16); "
                "bf16 is exercised on GPU by the benchmark",
            ),
        ),
    ],
)
def test_half_precision(dtype):
    gen = _gen("half", dtype)
    b, s, hq, hkv, d = 1, 40, 2, 1, 64
    q, k, v = (_randn(gen, b, s, h, d, dtype=dtype) for h in (hq, hkv, hkv))
    scale = 1 / math.sqrt(d)
    out, grads = _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(q, k, v, causal=True, backend="triton"),
        lambda q, k, v: _ref_dense(q, k, v, True, scale),
        (q, k, v),
        dtype,
        gen,
    )
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)


@needs_triton
@pytest.mark.parametrize("mode", ["dense", "varlen"])
def test_dropout_matches_reference_with_same_mask(mode):
    """Dropout: the kernels' Philox mask is materialised for the same seed and applied to the reference."""
    gen = _gen("dropout", mode)
    p = 0.3
    hq, hkv, d = 2, 1, 32
    if mode == "dense":
        cu, maxs = None, None
        q, k, v = _randn(gen, 2, 23, hq, d), _randn(gen, 2, 23, hkv, d), _randn(gen, 2, 23, hkv, d)
    else:
        lengths = [9, 1, 30]
        cu, maxs = A.cu_seqlens_from_lengths(torch.tensor(lengths)), max(lengths)
        q, k, v = _randn(gen, 40, hq, d), _randn(gen, 40, hkv, d), _randn(gen, 40, hkv, d)
    scale = 1 / math.sqrt(d)
    torch.manual_seed(1234)
    seed = A._new_seed()  # the seed the kernel will draw after the same manual_seed
    keep = A._dropout_keep_mask(q, cu, maxs, p, seed)
    if mode == "dense":
        ref = lambda q, k, v: _ref_dense(q, k, v, True, scale, keep, p)  # noqa: E731
        valid = keep
    else:
        ref = lambda q, k, v: _ref_varlen(q, k, v, cu, True, scale, keep, p)  # noqa: E731
        valid = torch.cat([keep[i, :, :n, :n].flatten() for i, n in enumerate(lengths)])
    frac = valid.float().mean().item()
    assert abs(frac - (1 - p)) < 0.05, f"keep fraction {frac:.3f} vs {1 - p}"

    def run(q, k, v):
        torch.manual_seed(1234)
        return A.flash_attention(
            q, k, v, causal=True, cu_seqlens=cu, max_seqlen=maxs, dropout_p=p, backend="triton"
        )

    out, grads = _check_fwd_bwd(run, ref, (q, k, v), torch.float32, gen)
    # same torch seed -> same mask (bitwise); another seed -> a different output
    assert torch.equal(run(q, k, v), out)
    torch.manual_seed(999)
    other = A.flash_attention(
        q, k, v, causal=True, cu_seqlens=cu, max_seqlen=maxs, dropout_p=p, backend="triton"
    )
    assert not torch.allclose(other, out)


@needs_triton
def test_backward_is_deterministic():
    gen = _gen("determinism")
    q, k, v = _randn(gen, 1, 33, 4, 32), _randn(gen, 1, 33, 1, 32), _randn(gen, 1, 33, 1, 32)
    dout = torch.randn(1, 33, 4, 32, generator=gen)
    g1 = torch.autograd.grad(A.flash_attention(q, k, v, causal=True, backend="triton"), (q, k, v), dout)
    g2 = torch.autograd.grad(A.flash_attention(q, k, v, causal=True, backend="triton"), (q, k, v), dout)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=False))


# ------------------------------------------------------------------------------------------------------------
# Torch reference path and helpers (no interpreter needed)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_torch_backend_dense_varlen_padded(causal):
    gen = _gen("torch", causal)
    hq, hkv, d = 4, 2, 16
    scale = 1 / math.sqrt(d)
    q, k, v = _randn(gen, 3, 12, hq, d), _randn(gen, 3, 12, hkv, d), _randn(gen, 3, 12, hkv, d)
    _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(q, k, v, causal=causal, backend="torch"),
        lambda q, k, v: _ref_dense(q, k, v, causal, scale),
        (q, k, v),
        torch.float32,
        gen,
    )
    lengths = [5, 1, 12]
    cu = A.cu_seqlens_from_lengths(torch.tensor(lengths))
    q, k, v = _randn(gen, 18, hq, d), _randn(gen, 18, hkv, d), _randn(gen, 18, hkv, d)
    _check_fwd_bwd(
        lambda q, k, v: A.flash_attention(q, k, v, causal=causal, cu_seqlens=cu, backend="torch"),
        lambda q, k, v: _ref_varlen(q, k, v, cu, causal, scale),
        (q, k, v),
        torch.float32,
        gen,
    )
    for side in ("left", "right"):
        mask = _padding_mask(3, 12, side, gen)
        q, k, v = _randn(gen, 3, 12, hq, d), _randn(gen, 3, 12, hkv, d), _randn(gen, 3, 12, hkv, d)
        out, grads = _check_fwd_bwd(
            lambda q, k, v, mask=mask: A.flash_attention_padded(
                q, k, v, mask, causal=causal, backend="torch"
            ),
            lambda q, k, v, mask=mask: _ref_padded(q, k, v, mask, causal, scale),
            (q, k, v),
            torch.float32,
            gen,
        )
        assert all(torch.isfinite(g).all() for g in grads)


def test_unpad_pad_roundtrip():
    gen = _gen("unpad")
    x = torch.randn(3, 7, 2, 4, generator=gen)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0]])
    xu, idx, cu, maxs = A.unpad_input(x, mask)
    assert xu.shape == (14, 2, 4)
    assert cu.tolist() == [0, 7, 12, 14] and cu.dtype == torch.int32 and maxs == 7
    back = A.pad_input(xu, idx, 3, 7)
    assert torch.equal(back, x * mask[:, :, None, None])


def test_api_errors():
    q = torch.randn(1, 8, 3, 16)
    k = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        A.flash_attention(q, k, k, backend="torch")
    with pytest.raises(ValueError, match="dropout_p"):
        A.flash_attention(q, q, q, dropout_p=1.0, backend="torch")
    with pytest.raises(ValueError, match="3-D"):
        A.flash_attention(q, q, q, cu_seqlens=torch.tensor([0, 8], dtype=torch.int32), backend="torch")
    with pytest.raises(ValueError):
        A.flash_attention(q, q, q, backend="nope")


def test_module_wrapper_dropout_only_in_training():
    gen = _gen("module")
    q = torch.randn(2, 10, 2, 16, generator=gen)
    m = A.FlashAttention(causal=True, dropout_p=0.5, backend="torch").eval()
    assert torch.equal(m(q, q, q), A.flash_attention(q, q, q, causal=True, backend="torch"))
    m.train()
    assert not torch.allclose(m(q, q, q), A.flash_attention(q, q, q, causal=True, backend="torch"))


# ------------------------------------------------------------------------------------------------------------
# Benchmark harness (GPU benchmark; --cpu-smoke runs the torch path on tiny shapes)
# ------------------------------------------------------------------------------------------------------------


def test_bench_cpu_smoke(tmp_path):
    from bench import kernels_attention as bench

    assert bench.main(["--cpu-smoke", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "kernels_attention.json").read_text())
    assert record["mode"] == "cpu-smoke" and record["environment"]["device"] == "cpu"
    rows = record["rows"]
    assert len(rows) == 2 and all("error" not in r for r in rows), rows
    for r in rows:
        assert r["fwd_tflops"] > 0 and r["fwdbwd_vs_sdpa"] > 0 and r["pad_fwdbwd_vs_sdpa_masked"] > 0
        assert r["max_abs_err_vs_sdpa"] < 1e-4 and r["pad_max_abs_err_vs_sdpa"] < 1e-4
        assert 0.15 < r["pad_fraction"] < 0.45
    assert (tmp_path / "kernels_attention.png").stat().st_size > 1000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_bench_without_cuda_exits_2(capsys):
    from bench import kernels_attention as bench

    with pytest.raises(SystemExit) as e:
        bench.main([])
    assert e.value.code == 2
    assert "CUDA" in capsys.readouterr().err
