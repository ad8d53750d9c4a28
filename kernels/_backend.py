"""Choosing between the Triton kernels and the torch reference path.

Every op in this package takes ``backend="auto" | "triton" | "torch"``:

- ``"auto"``: Triton when the tensors are on CUDA and Triton imports, else the torch reference.
- ``"triton"``: always the Triton kernel. On CPU tensors this only works under ``TRITON_INTERPRET=1``
  (the interpreter the tests use); otherwise it raises with a clear message.
- ``"torch"``: the pure-PyTorch reference with the same API and results (within stated tolerances).
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return ``"triton"`` or ``"torch"`` for tensors living on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    on_cuda = device.type == "cuda"
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError("backend='triton' requested but triton is not importable")
    if not on_cuda and not interpreting():
        raise RuntimeError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (the Triton interpreter)"
        )
    return "triton"
