"""Triton kernels for fine-tuning, each with a torch reference path behind the same API.

Imports only torch and triton (never transformers). Every op takes ``backend="auto"|"triton"|"torch"``
(see ``kernels._backend``): auto runs Triton on CUDA tensors and the torch reference elsewhere.

- ``cross_entropy`` / ``CrossEntropyLoss``: softmax cross-entropy that never materializes the softmax;
  the gradient is written into the logits buffer during the forward.
- ``fused_linear_cross_entropy`` / ``FusedLinearCrossEntropyLoss``: LM head + cross-entropy in token
  chunks, so the N x V logits never exist.
- ``flash_attention`` / ``flash_attention_padded``: FlashAttention-2 style forward and backward, causal or
  not, GQA, packed (cu_seqlens) and padded batches.
"""

from ._backend import resolve_backend, triton_available
from .attention import flash_attention, flash_attention_padded, pad_input, unpad_input
from .cross_entropy import CrossEntropyLoss, cross_entropy
from .fused_linear_cross_entropy import FusedLinearCrossEntropyLoss, fused_linear_cross_entropy

__all__ = [
    "CrossEntropyLoss",
    "FusedLinearCrossEntropyLoss",
    "cross_entropy",
    "flash_attention",
    "flash_attention_padded",
    "fused_linear_cross_entropy",
    "pad_input",
    "resolve_backend",
    "triton_available",
    "unpad_input",
]
