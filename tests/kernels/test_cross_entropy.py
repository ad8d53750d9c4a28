"""Fused cross-entropy and fused linear+cross-entropy against a float64 reference (loss, lse and gradients).

Triton cases run on CPU under the Triton interpreter (TRITON_INTERPRET=1) with small shapes; ``_MAX_BLOCK`` is
lowered per case so that rows longer than one block exercise the V loop (odd V: 37, 1000, 4099). Both backends
("triton" and "torch") are compared against ``F.cross_entropy`` on float64 copies of the same (rounded)
inputs, plus our own float64 z-loss and soft-cap maths; gradients come from float64 autograd. Buffers the
kernels must fully write (loss/lse rows, and the gradient buffer when ``inplace=False``) are allocated filled
with NaN (``_POISON_OUTPUTS``); with ``inplace=True`` an unwritten element would keep its logit and fail the
comparison.

Tolerances: |got - ref| <= atol * max|ref| + rtol * |ref| (``assert_close`` with atol scaled by the largest
reference magnitude, so tiny gradient entries are judged against the row's scale):

- fp32: rtol 1e-5, atol 1e-6 x max. All maths is fp32 (one exp/log per element, a sum over <= 4099 terms):
  errors are a few ulps (~1e-7 relative), far inside 1e-5.
- bf16: rtol 1.6e-2, atol 1e-2 x max. Logits are rounded to bf16 before the reference sees them, so only the
  outputs differ: the loss and the stored gradient are rounded once to bf16 (8 significant bits, relative
  error <= 2**-8 = 3.9e-3) after fp32 maths. 1.6e-2 leaves 4x margin; the loss is a sum of fp32 rows rounded
  once at the end.
- fp16: rtol 4e-3, atol 2e-3 x max: one rounding to 11 significant bits (<= 2**-11 = 4.9e-4, 8x margin);
  gradient entries below fp16's normal range (6e-5) lose relative precision, which the max-scaled atol covers.
- fused linear+CE: fp32 rtol 1e-4, atol 1e-5 x max (three fp32 matmuls over H=16..24 / N tokens, summed in
  different orders than the float64 reference); bf16 rtol 5e-2, atol 2e-2 x max (logits, dlogits and
  dhidden are each rounded to bf16 in the chunked pipeline, as in any bf16 LM head).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels._backend import triton_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

TOL = {  # dtype: (rtol, atol as a fraction of max|ref|)
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (4e-3, 2e-3),
}
FUSED_TOL = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (5e-2, 2e-2)}


def _interpreted_modules():
    """triton.jit picks interpreter vs compiler when the kernel is defined: if kernels.cross_entropy was
    imported before TRITON_INTERPRET was set (by another test module), re-import it (and its dependant)."""
    # import_module, not "import kernels.cross_entropy as": the package exports a function of that name
    ce = importlib.import_module("kernels.cross_entropy")
    flce = importlib.import_module("kernels.fused_linear_cross_entropy")

    if triton_available():
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(ce._ce_fwd_kernel, InterpretedFunction):
            ce = importlib.reload(ce)
            flce = importlib.reload(flce)
    return ce, flce


CE, FLCE = _interpreted_modules()

BACKENDS = [
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            not triton_available() or os.environ.get("TRITON_INTERPRET") != "1",
            reason="Triton kernel tests need triton and TRITON_INTERPRET=1 (CPU interpreter)",
        ),
    ),
    "torch",
]


@pytest.fixture(autouse=True)
def ce_poison(monkeypatch):
    monkeypatch.setattr(CE, "_POISON_OUTPUTS", True)


def _gen(*params) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(params).encode()))


def _close(got, ref, dtype, what, tol=TOL):
    rtol, atol = tol[dtype]
    got = got.detach().double()
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = ref.abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(
        got, ref, rtol=rtol, atol=atol * max(scale, 1e-30), msg=lambda m: f"{what}: {m}"
    )


def reference(
    logits,
    target,
    *,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    lse_square_scale=0.0,
    softcap=None,
    reduction="mean",
):
    """float64 (loss, lse masked to 0 on ignored rows, leaf whose .grad receives dloss/dlogits)."""
    x = logits.detach().double().requires_grad_()
    z = softcap * torch.tanh(x / softcap) if softcap else x
    loss = F.cross_entropy(
        z,
        target,
        weight=None if weight is None else weight.double(),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    valid = target != ignore_index
    lse = torch.logsumexp(z, 1)
    zl = lse_square_scale * lse.pow(2) * valid
    if reduction == "none":
        loss = loss + zl
    elif reduction == "sum":
        loss = loss + zl.sum()
    else:
        assert valid.any(), "the reference mean needs one non-ignored row (all-ignored is tested separately)"
        loss = loss + zl.sum() / valid.sum()
    return loss, torch.where(valid, lse, 0.0).detach(), x


def _inputs(gen, n, v, dtype, n_ignored, ignore_index=-100, spread=4.0):
    logits = (torch.randn(n, v, generator=gen) * spread).to(dtype)
    target = torch.randint(0, v, (n,), generator=gen)
    if n_ignored:
        target[torch.randperm(n, generator=gen)[:n_ignored]] = ignore_index
    return logits, target


# (id, V, _MAX_BLOCK or None, dtype, options, ignored rows). A block below V runs the V loop; None: one block.
CASES = [
    ("v37-mean", 37, None, torch.float32, {}, 1),
    ("v1000-sum-loop", 1000, 256, torch.float32, dict(reduction="sum"), 2),
    ("v4099-none-loop", 4099, 1024, torch.float32, dict(reduction="none", inplace=False), 1),
    ("ignore-index-3", 37, None, torch.float32, dict(ignore_index=3), 2),
    ("weight-mean-loop", 1000, 256, torch.float32, dict(weight=True), 2),
    ("weight-smooth-mean", 37, None, torch.float32, dict(weight=True, label_smoothing=0.2), 1),
    (
        "weight-smooth-none-loop",
        1000,
        256,
        torch.float32,
        dict(weight=True, label_smoothing=0.1, reduction="none"),
        1,
    ),
    ("smooth-sum", 1000, None, torch.float32, dict(label_smoothing=0.3, reduction="sum", inplace=False), 0),
    ("zloss-mean-loop", 1000, 256, torch.float32, dict(lse_square_scale=1e-2), 2),
    ("softcap-mean-loop", 4099, 1024, torch.float32, dict(softcap=4.0, inplace=False), 1),
    (
        "all-mean-loop",
        1000,
        256,
        torch.float32,
        dict(weight=True, label_smoothing=0.1, lse_square_scale=1e-3, softcap=6.0, return_lse=True),
        2,
    ),
    (
        "all-sum",
        37,
        None,
        torch.float32,
        dict(
            weight=True,
            label_smoothing=0.05,
            lse_square_scale=1e-2,
            softcap=3.0,
            reduction="sum",
            return_lse=True,
            inplace=False,
        ),
        1,
    ),
    (
        "all-none-loop",
        1000,
        128,
        torch.float32,
        dict(weight=True, label_smoothing=0.1, lse_square_scale=1e-2, softcap=5.0, reduction="none"),
        2,
    ),
    ("bf16-mean-loop", 1000, 256, torch.bfloat16, dict(label_smoothing=0.1, lse_square_scale=1e-2), 1),
    (
        "bf16-all-none",
        37,
        None,
        torch.bfloat16,
        dict(
            weight=True,
            label_smoothing=0.1,
            lse_square_scale=1e-3,
            softcap=5.0,
            reduction="none",
            return_lse=True,
        ),
        1,
    ),
    ("fp16-softcap-mean-loop", 4099, 1024, torch.float16, dict(softcap=8.0, inplace=False), 1),
    ("fp16-weight-sum", 37, None, torch.float16, dict(weight=True, reduction="sum", return_lse=True), 1),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cross_entropy_matches_reference(case, backend, monkeypatch):
    name, v, max_block, dtype, opts, n_ignored = case
    if max_block:
        monkeypatch.setattr(CE, "_MAX_BLOCK", max_block)
    n = 6
    gen = _gen(name, backend)
    opts = dict(opts)
    ignore_index = opts.get("ignore_index", -100)
    logits, target = _inputs(gen, n, v, dtype, n_ignored, ignore_index)
    if opts.pop("weight", False):
        opts["weight"] = torch.rand(v, generator=gen) + 0.25
    return_lse = opts.pop("return_lse", False)
    inplace = opts.pop("inplace", True)
    reduction = opts.get("reduction", "mean")

    ref_loss, ref_lse, ref_x = reference(logits, target, **opts)
    # grad_output: random per row for 'none', a non-unit scalar for 'sum' (exercises the backward scaling)
    if reduction == "none":
        gout = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    else:
        gout = torch.tensor(1.0 if reduction == "mean" else 0.75, dtype=torch.float64)
    ref_loss.backward(gout)

    x = logits.clone().requires_grad_()
    out = CE.cross_entropy(x, target, return_lse=return_lse, inplace=inplace, backend=backend, **opts)
    loss, lse = out if return_lse else (out, None)
    assert loss.dtype == dtype and loss.shape == ref_loss.shape
    _close(loss, ref_loss.detach(), dtype, "loss")
    if return_lse:
        assert lse.dtype == torch.float32 and not lse.requires_grad
        _close(lse, ref_lse, torch.float32, "lse")  # fp32 maths on the same rounded inputs in every dtype
    loss.backward(gout.to(dtype))
    _close(x.grad, ref_x.grad, dtype, "grad")
    assert torch.all(x.grad[target == ignore_index] == 0), "ignored rows must get exactly zero gradient"
    if inplace:  # the gradient lives in the logits' own storage: no second N x V buffer
        assert x.grad.data_ptr() == x.data_ptr()
    else:
        assert x.grad.data_ptr() != x.data_ptr()
        assert torch.equal(x.detach(), logits), "inplace=False must leave the logits unchanged"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_and_grads(reduction, backend, monkeypatch):
    monkeypatch.setattr(CE, "_MAX_BLOCK", 64)
    gen = _gen("all-ignored", reduction, backend)
    logits = torch.randn(5, 100, generator=gen).requires_grad_()
    target = torch.full((5,), -100)
    loss, lse = CE.cross_entropy(
        logits,
        target,
        weight=torch.rand(100, generator=gen),
        label_smoothing=0.1,
        lse_square_scale=1e-2,
        reduction=reduction,
        return_lse=True,
        backend=backend,
    )
    assert torch.equal(loss.detach(), torch.zeros_like(loss)), f"loss {loss}"
    assert torch.equal(lse, torch.zeros(5))
    loss.sum().backward()
    assert torch.equal(logits.grad, torch.zeros(5, 100))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits(dtype, backend, monkeypatch):
    monkeypatch.setattr(CE, "_MAX_BLOCK", 256)
    v = 1000
    gen = _gen("extreme", dtype, backend)
    logits = torch.full((5, v), -1e4)
    target = torch.randint(0, v, (5,), generator=gen)
    logits[0, target[0]] = 1e4  # confident and right: loss ~ 0
    logits[1, (target[1] + 1) % v] = 1e4  # confident and wrong: loss ~ 2e4
    logits[2] = 1e4  # all equal and huge: loss = log(V)
    logits[3] = (torch.rand(v, generator=gen) * 2 - 1) * 1e4
    logits[4, :500] = 1e4  # max in the first block, then a block of -1e4
    logits = logits.to(dtype)
    ref_loss, _, ref_x = reference(logits, target, lse_square_scale=1e-4, reduction="none")
    ref_loss.sum().backward()
    x = logits.clone().requires_grad_()
    loss = CE.cross_entropy(x, target, lse_square_scale=1e-4, reduction="none", backend=backend)
    _close(loss, ref_loss.detach(), dtype, "loss")
    loss.sum().backward()
    _close(x.grad, ref_x.grad, dtype, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_leaves_logits_untouched(backend):
    gen = _gen("no-grad", backend)
    logits, target = _inputs(gen, 4, 37, torch.float32, 1)
    x = logits.clone()
    loss = CE.cross_entropy(x, target, inplace=True, backend=backend)
    assert torch.equal(x, logits)
    _close(loss, reference(logits, target)[0].detach(), torch.float32, "loss")


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_matches_functional_and_backward_runs_once(backend):
    gen = _gen("module", backend)
    logits, target = _inputs(gen, 4, 37, torch.float32, 1)
    w = torch.rand(37, generator=gen)
    mod = CE.CrossEntropyLoss(
        weight=w, label_smoothing=0.1, softcap=5.0, lse_square_scale=1e-3, backend=backend
    )
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    l1 = mod(x1, target)
    l2 = CE.cross_entropy(
        x2, target, weight=w, label_smoothing=0.1, softcap=5.0, lse_square_scale=1e-3, backend=backend
    )
    assert torch.equal(l1.detach(), l2.detach())
    l1.backward(retain_graph=True)
    l2.backward()
    assert torch.equal(x1.grad, x2.grad)
    with pytest.raises(RuntimeError, match="once"):
        l1.backward()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reduction="avg"), "reduction"),
        (dict(label_smoothing=1.5), "label_smoothing"),
        (dict(lse_square_scale=-1.0), "lse_square_scale"),
        (dict(softcap=0.0), "softcap"),
        (dict(weight=torch.ones(5)), "weight"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CE.cross_entropy(torch.randn(3, 7), torch.zeros(3, dtype=torch.long), **kwargs)


def test_invalid_inputs_raise():
    t = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="2-D"):
        CE.cross_entropy(torch.randn(3, 7, 2), t)
    with pytest.raises(ValueError, match="dtype"):
        CE.cross_entropy(torch.randn(3, 7, dtype=torch.float64), t)
    with pytest.raises(ValueError, match="target"):
        CE.cross_entropy(torch.randn(3, 7), t.float())
    with pytest.raises(ValueError, match="target"):
        CE.cross_entropy(torch.randn(3, 7), torch.zeros(4, dtype=torch.long))
    h, w = torch.randn(3, 4), torch.randn(7, 4)
    with pytest.raises(ValueError, match="dtype"):
        FLCE.fused_linear_cross_entropy(h, w.half(), t)
    with pytest.raises(ValueError, match="weight"):
        FLCE.fused_linear_cross_entropy(h, torch.randn(7, 5), t)
    with pytest.raises(ValueError, match="bias"):
        FLCE.fused_linear_cross_entropy(h, w, t, torch.randn(6))
    with pytest.raises(ValueError, match="chunk_size"):
        FLCE.fused_linear_cross_entropy(h, w, t, chunk_size=0)


def test_importable_and_torch_path_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import importlib, torch\n"
        "ce = importlib.import_module('kernels.cross_entropy')\n"
        "fl = importlib.import_module('kernels.fused_linear_cross_entropy')\n"
        "from kernels._backend import triton_available; assert not triton_available()\n"
        "x = torch.randn(4, 9, requires_grad=True); t = torch.tensor([1, 2, -100, 3])\n"
        "ce.cross_entropy(x, t).backward(); assert x.grad is not None\n"
        "h = torch.randn(4, 5, requires_grad=True)\n"
        "fl.fused_linear_cross_entropy(h, torch.randn(9, 5), t).backward(); print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# --------------------------------------------------------------------------------------------------------
# Fused linear + cross-entropy
# --------------------------------------------------------------------------------------------------------

# (id, N, H, V, dtype, bias, chunk_size or ("budget", bytes), options, ignored rows, _MAX_BLOCK)
FUSED_CASES = [
    ("mean-chunk4", 13, 16, 37, torch.float32, False, 4, {}, 2, None),
    (
        "sum-bias-chunk5-all-opts",
        13,
        16,
        100,
        torch.float32,
        True,
        5,
        dict(reduction="sum", label_smoothing=0.1, lse_square_scale=1e-2, softcap=5.0),
        1,
        64,
    ),
    (
        "none-bias-chunk3",
        13,
        24,
        37,
        torch.float32,
        True,
        3,
        dict(reduction="none", lse_square_scale=1e-3, softcap=4.0),
        2,
        None,
    ),
    ("mean-one-chunk", 13, 16, 37, torch.float32, True, 13, dict(label_smoothing=0.2), 0, None),
    (
        "mean-budget-3rows",
        13,
        16,
        37,
        torch.float32,
        False,
        ("budget", 3 * 37 * 4),
        dict(lse_square_scale=1e-2),
        1,
        None,
    ),
    (
        "bf16-mean-bias-chunk6",
        13,
        16,
        100,
        torch.bfloat16,
        True,
        6,
        dict(label_smoothing=0.1, softcap=5.0),
        1,
        64,
    ),
]


def _fused_reference(hidden, weight, bias, target, gout, **opts):
    h, w = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    b = bias.detach().double().requires_grad_() if bias is not None else None
    logits = h @ w.t() + (b if b is not None else 0.0)
    loss, _, x = reference(logits.detach(), target, **opts)
    loss.backward(gout)
    logits.backward(x.grad)
    return loss.detach(), h.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", FUSED_CASES, ids=[c[0] for c in FUSED_CASES])
def test_fused_linear_matches_unfused_reference(case, backend, monkeypatch):
    name, n, hdim, v, dtype, with_bias, chunk, opts, n_ignored, max_block = case
    if max_block:
        monkeypatch.setattr(CE, "_MAX_BLOCK", max_block)
    gen = _gen("fused", name, backend)
    hidden = torch.randn(n, hdim, generator=gen).to(dtype)
    weight = (torch.randn(v, hdim, generator=gen) * hdim**-0.5 * 3).to(dtype)
    bias = torch.randn(v, generator=gen).to(dtype) if with_bias else None
    target = torch.randint(0, v, (n,), generator=gen)
    target[torch.randperm(n, generator=gen)[:n_ignored]] = -100
    reduction = opts.get("reduction", "mean")
    gout = (
        torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
        if reduction == "none"
        else torch.tensor(0.5 if reduction == "sum" else 1.0, dtype=torch.float64)
    )
    ref = _fused_reference(hidden, weight, bias, target, gout=gout, **opts)

    chunk_kw = dict(memory_budget_bytes=chunk[1]) if isinstance(chunk, tuple) else dict(chunk_size=chunk)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    b = bias.clone().requires_grad_() if bias is not None else None
    loss = FLCE.fused_linear_cross_entropy(h, w, target, b, backend=backend, **chunk_kw, **opts)
    assert loss.dtype == dtype and loss.shape == ref[0].shape
    loss.backward(gout.to(dtype))
    for got, want, what in zip(
        (loss, h.grad, w.grad, None if b is None else b.grad),
        ref,
        ("loss", "dhidden", "dweight", "dbias"),
        strict=False,
    ):
        if want is not None:
            assert got.dtype == dtype, what
            _close(got, want, dtype, what, tol=FUSED_TOL)
    assert torch.equal(h.detach(), hidden) and torch.equal(w.detach(), weight)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_frozen_weight_weight_dtype_accum_and_module(backend):
    gen = _gen("fused-misc", backend)
    hidden, weight = torch.randn(9, 8, generator=gen), torch.randn(37, 8, generator=gen)
    target = torch.randint(0, 37, (9,), generator=gen)
    one = torch.tensor(1.0, dtype=torch.float64)
    ref_loss, ref_dh, _, _ = _fused_reference(hidden, weight, None, target, one)
    h = hidden.clone().requires_grad_()
    module = FLCE.FusedLinearCrossEntropyLoss(chunk_size=4, accum_dtype=None, backend=backend)
    loss = module(h, weight, target)
    loss.backward()
    _close(loss, ref_loss, torch.float32, "loss", tol=FUSED_TOL)
    _close(h.grad, ref_dh, torch.float32, "dhidden", tol=FUSED_TOL)
    assert weight.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_matches_torch_autocast(backend):
    """Under autocast: fp32 loss like F.cross_entropy; the fused op runs its matmuls in the autocast dtype and
    returns gradients in each input's dtype, matching torch's own autocast linear + cross-entropy."""
    gen = _gen("autocast", backend)
    logits, target = _inputs(gen, 4, 37, torch.bfloat16, 1)
    hidden, weight = torch.randn(9, 16, generator=gen), torch.randn(37, 16, generator=gen) * 0.5
    bias, t9 = torch.randn(37, generator=gen), torch.randint(0, 37, (9,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = CE.cross_entropy(logits.clone(), target, backend=backend)
        assert loss.dtype == torch.float32
        ref = F.cross_entropy(logits, target)
        assert ref.dtype == torch.float32
        _close(loss, ref.double(), torch.float32, "ce loss")

        got_p = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        ref_p = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        got = FLCE.fused_linear_cross_entropy(got_p[0], got_p[1], t9, got_p[2], chunk_size=4, backend=backend)
        want = F.cross_entropy(F.linear(ref_p[0], ref_p[1], ref_p[2]), t9)
    assert got.dtype == torch.float32
    _close(got, want.detach().double(), torch.bfloat16, "fused loss", tol=FUSED_TOL)
    got.backward()
    want.backward()
    for g, r, what in zip(got_p, ref_p, ("dhidden", "dweight", "dbias"), strict=False):
        assert g.grad.dtype == torch.float32, what
        _close(g.grad, r.grad.double(), torch.bfloat16, what, tol=FUSED_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_all_ignored(backend):
    gen = _gen("fused-ignored", backend)
    h = torch.randn(5, 8, generator=gen).requires_grad_()
    w = torch.randn(37, 8, generator=gen).requires_grad_()
    b = torch.randn(37, generator=gen).requires_grad_()
    loss = FLCE.fused_linear_cross_entropy(
        h, w, torch.full((5,), -100), b, chunk_size=2, lse_square_scale=1e-2, backend=backend
    )
    assert loss.item() == 0.0
    loss.backward()
    for g in (h.grad, w.grad, b.grad):
        assert torch.equal(g, torch.zeros_like(g))


def test_chunk_rows_from_budget():
    assert FLCE.chunk_rows(1000, 37, 4, chunk_size=7) == 7
    assert FLCE.chunk_rows(5, 37, 4, chunk_size=7) == 5
    assert FLCE.chunk_rows(1000, 37, 4, memory_budget_bytes=3 * 37 * 4 + 5) == 3
    assert FLCE.chunk_rows(10**6, 131072, 2, memory_budget_bytes=2**30) == 4096
    assert FLCE.chunk_rows(10**6, 128000, 2, memory_budget_bytes=2**30) == 4096  # 4194 rounded down to 256s
    assert FLCE.chunk_rows(10**6, 10**9, 4, memory_budget_bytes=2**20) == 1
    assert FLCE.chunk_rows(10**6, 131072, 2) * 131072 * 2 <= FLCE.DEFAULT_MEMORY_BUDGET_BYTES


# --------------------------------------------------------------------------------------------------------
# Benchmark harness
# --------------------------------------------------------------------------------------------------------


def test_bench_cpu_smoke(tmp_path):
    from bench import kernels_cross_entropy as bench

    payload = bench.run_cpu_smoke(out_dir=tmp_path)
    record = json.loads((tmp_path / "kernels_cross_entropy_cpu_smoke.json").read_text())
    assert (tmp_path / "kernels_cross_entropy_cpu_smoke.png").stat().st_size > 0
    assert record["ce"] == json.loads(json.dumps(payload["ce"]))
    assert {r["arm"] for r in record["ce"]} == {"ours(torch path)", "eager"}
    for r in record["ce"] + record["flce"]:
        assert r["status"] == "ok", r
        assert r["fwd_bwd_ms"] > 0
    assert all(r["loss_err"] < 1e-4 for r in record["ce"])
    assert all(r["loss_diff"] < 1e-4 for r in record["flce"])
    assert {r["arm"] for r in record["flce"]} >= {"ours", "unfused"}
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            bench.main(["--out", str(tmp_path / "gpu")])
        assert exc.value.code == 2
        assert not (tmp_path / "gpu").exists()
