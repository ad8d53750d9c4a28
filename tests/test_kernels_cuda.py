"""The Triton kernels compiled for a real GPU (no interpreter), against the torch reference path.

Skipped without CUDA; the GPU CI workflow (.github/workflows/gpu.yml) runs this file with
TRITON_INTERPRET unset, at shapes that exercise the real tiling (V and S larger than one block).
Tolerances: bf16 inputs, fp32 accumulation on both paths -> relative Frobenius error under 2e-2.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA GPU and compiled Triton (TRITON_INTERPRET unset)",
)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize("n,v", [(4096, 32000), (1024, 128256), (333, 50257)])
def test_cross_entropy_cuda(n, v):
    from kernels import cross_entropy

    g = torch.Generator(device="cuda").manual_seed(n + v)
    x = torch.randn(n, v, device="cuda", generator=g, dtype=torch.bfloat16) * 4
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    t[::7] = -100
    grads = []
    for backend in ("triton", "torch"):
        xi = x.clone().requires_grad_()
        loss = cross_entropy(xi, t, backend=backend, label_smoothing=0.1, inplace=False)
        loss.backward()
        grads.append((loss.detach(), xi.grad))
    assert _rel(grads[0][0], grads[1][0]) < 1e-3
    assert _rel(grads[0][1], grads[1][1]) < 2e-2


def test_fused_linear_cross_entropy_cuda():
    from kernels import fused_linear_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(2048, 1024, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(32000, 1024, device="cuda", generator=g, dtype=torch.bfloat16) * 0.02
    t = torch.randint(0, 32000, (2048,), device="cuda", generator=g)
    out = []
    for backend in ("triton", "torch"):
        hi, wi = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fused_linear_cross_entropy(hi, wi, t, backend=backend, chunk_size=512)
        loss.backward()
        out.append((loss.detach(), hi.grad, wi.grad))
    for a, b in zip(*out, strict=False):
        assert _rel(a, b) < 2e-2


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128, 80])
def test_flash_attention_cuda_dense_and_padded(causal, d):
    from kernels import flash_attention, flash_attention_padded

    g = torch.Generator(device="cuda").manual_seed(d + causal)
    b, s, hq, hkv = 2, 1024, 8, 2
    q = torch.randn(b, s, hq, d, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(b, s, hkv, d, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(b, s, hkv, d, device="cuda", generator=g, dtype=torch.bfloat16)
    mask = torch.ones(b, s, dtype=torch.long, device="cuda")
    mask[1, 700:] = 0
    for fn, extra in ((flash_attention, ()), (flash_attention_padded, (mask,))):
        res = []
        for backend in ("triton", "torch"):
            qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
            o = fn(qi, ki, vi, *extra, causal=causal, backend=backend)
            o.float().square().sum().backward()
            res.append((o.detach(), qi.grad, ki.grad, vi.grad))
        for a, b_ in zip(*res, strict=False):
            if extra:  # padded query rows are zero on both paths; compare the real ones
                keep = mask.bool()
                a, b_ = a[keep], b_[keep]
            assert _rel(a, b_) < 2e-2
