"""GPU hazards of the attention kernels that a CPU can check (issue 14).

- the dropout seed never causes a new kernel specialization;
- the TMA scratch allocator allocates on the current device at launch time, not on the first device seen;
- row offsets are 64-bit: a strided view whose rows lie more than 2**31 elements apart (4 GiB of virtual
  memory, a few pages touched) runs correctly on the interpreter;
- the tile tables: no config over the GPU's shared memory, a clear error (or the torch path) where none fits.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import interpreter_ready  # noqa: E402

from kernels import attention as A  # noqa: E402
from kernels import tuning  # noqa: E402

triton = pytest.importorskip("triton")

INTERPRETER_READY = interpreter_ready()
needs_interpreter = pytest.mark.skipif(not INTERPRETER_READY, reason="needs TRITON_INTERPRET=1 and triton")


def _compiled_mode(kernel):
    """The kernel as a compiled-mode JITFunction (under the interpreter, rebuilt with the same decorator
    arguments) and the binder the launcher would use on an sm_90 GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    if not isinstance(kernel, JITFunction):
        kernel = JITFunction(kernel.fn, **kernel.kwargs)
    binder = create_function_from_signature(
        kernel.signature, kernel.params, make_backend(GPUTarget("cuda", 90, 32))
    )
    return kernel, binder


def _seed_specializations(kernel, seeds):
    kernel, binder = _compiled_mode(kernel)
    index = kernel.arg_names.index("seed")
    dummy = {name: 0 for name in kernel.arg_names}
    return {tuple(binder(**{**dummy, "seed": s})[1][index]) for s in seeds}


@pytest.mark.parametrize(
    "name", ["_attn_fwd_kernel", "_attn_bwd_dkdv", "_attn_bwd_dq", "_dropout_mask_kernel"]
)
def test_dropout_seed_never_specializes(name):
    from kernels import attention_bwd, attention_fwd

    kernel = getattr(attention_fwd, name, None) or getattr(attention_bwd, name)
    torch.manual_seed(0)
    seeds = [A._new_seed() for _ in range(64)] + [2**31, 2**31 + 16, 2**40, 2**62 - 1]
    assert all(2**31 <= s < 2**62 for s in seeds)
    assert _seed_specializations(kernel, seeds) == {("i64", None)}


def test_seed_check_can_fail():
    """Without do_not_specialize, a seed divisible by 16 is a second specialization (what the test guards)."""
    from triton.runtime.jit import JITFunction

    from kernels import attention_fwd

    plain = JITFunction(attention_fwd._attn_fwd_kernel.fn)
    assert len(_seed_specializations(plain, [2**31 + 1, 2**31 + 16])) == 2


def test_tma_allocator_follows_current_device(monkeypatch):
    """The scratch allocator installed for the first GPU must allocate on whichever GPU is current at launch
    (the launches run under ``torch.cuda.device`` of their tensors)."""
    from triton.runtime import _allocation

    from kernels import attention_fwd

    monkeypatch.setattr(attention_fwd, "interpreting", lambda: False)
    token = _allocation._allocator.set(_allocation.NullAllocator())
    try:
        attention_fwd.ensure_allocator(torch.device("cuda", 0))
        alloc = _allocation._allocator.get()
        assert not isinstance(alloc, _allocation.NullAllocator)
        seen = []
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: seen.append(kw["device"]))
        for current in (0, 1, 0):
            monkeypatch.setattr(torch.cuda, "current_device", lambda c=current: c)
            alloc(128, 16, None)
        assert seen == [torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 0)]
    finally:
        _allocation._allocator.reset(token)


@needs_interpreter
@pytest.mark.parametrize("force_tma", [False, None])
def test_rows_more_than_2_31_elements_apart(monkeypatch, force_tma):
    """q/k/v rows 2**30 elements apart: row 2 starts at element 2**31, past int32. A 32-bit row offset reads
    the wrong memory (or faults); with 64-bit offsets the result matches the contiguous copy."""
    from kernels import attention_fwd

    monkeypatch.setattr(attention_fwd, "FORCE_TMA", force_tma)
    s, d, row = 3, 16, 2**30
    try:
        storage = torch.empty(2 * row + 3 * d, dtype=torch.float16)  # 4 GiB virtual; only 9 rows touched
    except RuntimeError:
        pytest.skip("cannot reserve 4 GiB of virtual memory here")
    gen = torch.Generator().manual_seed(0)
    views = []
    for i in range(3):  # q, k, v interleaved in the same rows
        view = storage.as_strided((1, s, 1, d), (s * row, row, d, 1), storage_offset=i * d)
        view.copy_(torch.randn(1, s, 1, d, generator=gen).half())
        views.append(view)
    q, k, v = (t.requires_grad_() for t in views)
    out = A.flash_attention(q, k, v, causal=True, backend="triton")
    got = (out, *torch.autograd.grad(out.float().square().sum(), (q, k, v)))
    ref = [t.detach().contiguous().float().requires_grad_() for t in views]
    out_ref = A.flash_attention(*ref, causal=True, backend="torch")
    want = (out_ref, *torch.autograd.grad(out_ref.square().sum(), ref))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w, atol=5e-3, rtol=5e-3)


# --------------------------------------------------------------------------------------------------------
# Tile tables
# --------------------------------------------------------------------------------------------------------

TARGETS = [tuning.Target(80, 166912), tuning.Target(86, 101376), tuning.Target(90, 232448)]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"sm_{t.capability}")
@pytest.mark.parametrize("elt", [2, 4])
@pytest.mark.parametrize("block_d", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("dropout", [False, True])
def test_tiles_fit_the_shared_memory_estimate(target, elt, block_d, dropout):
    for kernel in ("fwd", "dkdv", "dq"):
        for tma in (False, True):
            tiles = tuning.tiles_for(kernel, target, elt_bytes=elt, block_d=block_d, dropout=dropout, tma=tma)
            for t in tiles:
                est = tuning.smem_estimate(kernel, t, elt_bytes=elt, block_d=block_d, dropout=dropout)
                assert est <= target.smem_bytes, (kernel, t, est)
            if elt == 2 and block_d <= 128:  # bf16/fp16 up to head dim 128 run on every GPU class
                assert tiles, (kernel, target, block_d, dropout, tma)


def test_unsupported_variant_is_a_clear_error_or_the_torch_path(monkeypatch):
    monkeypatch.setattr(tuning, "TARGET", tuning.Target(80, 166912))
    q = torch.empty(2, 64, 4, 256, dtype=torch.float32, device="meta")
    with pytest.raises(ValueError, match=r"no Triton fwd tile config for float32 head dim 256 fits sm_80"):
        A._triton_fits(q, q, q, 0.0, explicit=True)
    A._FALLBACK_WARNED.clear()
    with pytest.warns(UserWarning, match="using the torch path"):
        assert A._triton_fits(q, q, q, 0.0, explicit=False) is False
    q16 = torch.empty(2, 64, 4, 128, dtype=torch.bfloat16, device="meta")
    assert A._triton_fits(q16, q16, q16, 0.1, explicit=True)
    # A10 / L4 / RTX (99 KiB): bf16 head dim 256 gets the small tiles; fp32 head dim 128 has none (torch path)
    monkeypatch.setattr(tuning, "TARGET", tuning.Target(86, 101376))
    q256 = torch.empty(2, 64, 4, 256, dtype=torch.bfloat16, device="meta")
    assert A._triton_fits(q256, q256, q256, 0.0, explicit=True)
    q32 = torch.empty(2, 64, 4, 128, dtype=torch.float32, device="meta")
    with pytest.raises(ValueError, match=r"float32 head dim 128 fits sm_86 \(99 KiB"):
        A._triton_fits(q32, q32, q32, 0.0, explicit=True)


def test_each_kind_of_gpu_gets_its_own_autotuner(monkeypatch):
    """A tile chosen (and pruned) for one GPU is never reused on another kind in the same process: the
    autotuner, and so its cache of choices, is per (capability, shared memory)."""
    from kernels import attention_bwd, attention_fwd

    tuned = (
        attention_fwd._attn_fwd_tuned,
        attention_bwd._attn_bwd_dkdv_tuned,
        attention_bwd._attn_bwd_dq_tuned,
    )
    h100 = tuning.Target(90, tuning.SMEM_LIMITS[90])
    l4 = tuning.Target(89, tuning.SMEM_LIMITS[89])
    monkeypatch.setattr(tuning, "TARGET", h100)
    first = [for_device("cuda:0") for for_device in tuned]
    assert [for_device("cuda:0") for for_device in tuned] == first  # one tuner per target, kept
    monkeypatch.setattr(tuning, "TARGET", l4)
    second = [for_device("cuda:1") for for_device in tuned]
    assert all(a is not b for a, b in zip(first, second, strict=True))
    assert all(type(t).__name__ == "Autotuner" for t in first + second)
