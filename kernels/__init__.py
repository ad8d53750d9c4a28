"""Triton kernels for fine-tuning, each with a torch reference path behind the same API.

Imports only torch and triton (never transformers). Every op takes ``backend="auto"|"triton"|"torch"``:
see ``kernels._backend``.
"""

from ._backend import resolve_backend, triton_available

__all__ = ["resolve_backend", "triton_available"]
