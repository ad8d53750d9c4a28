"""Use ``kernels.attention`` (Triton flash attention, varlen/padding aware) inside Hugging Face models.

Two mechanisms, matching how transformers 4.57 structures the families:

- Decoders (Llama / Qwen2 / Mistral) route attention through
  ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``.
  :func:`patch_llama_family` registers :func:`sft_flash_attention_forward` under the name ``"sft_flash"`` with
  ``AttentionInterface`` and a matching mask function with ``AttentionMaskInterface`` that hands the attention
  the *2-D* padding mask (``(B, S)`` bool, or ``None`` when nothing is padded) instead of a 4-D additive mask,
  then switches the model to ``"sft_flash"``. The attention function then picks:

  * padding in the 2-D mask -> unpad, varlen kernel, re-pad (padding costs no FLOPs; padded query rows are 0);
  * no mask, ``position_ids`` restarting inside a row (packed sequences, e.g. ``DataCollatorWithFlattening``)
    -> sequence starts where ``position_ids[t] != position_ids[t-1] + 1`` (and at each row start) -> varlen;
  * otherwise the dense kernel. Causal (top-left; q and k lengths are equal in training) for decoders.
  * Fallback to masked SDPA (same maths, no kernel) for what the kernel does not cover: query length != key
    length (generation with a KV cache), a sliding window shorter than the keys, or a custom 4-D mask.

- Encoders (BERT / RoBERTa / DistilBERT) do not use ``AttentionInterface`` in 4.57 (eager/sdpa self-attention
  classes). :func:`patch_bert_family` replaces the ``forward`` of every self-attention module with one that
  computes q/k/v with the module's own projections and calls :func:`kernels.attention.flash_attention_padded`
  (bidirectional) with the 2-D key-padding mask recovered from whatever mask the model passes (2-D, or the
  4-D additive mask after checking it is exactly a key-padding mask). Cross-attention, KV caches,
  ``output_attentions``, ``head_mask`` and relative position embeddings fall back to the original forward.

Attention dropout is supported (the kernel draws its own Philox mask, identical in forward and backward): the
model's configured attention dropout is applied in ``train()`` mode and not in ``eval()`` mode, as in eager.
The dropout *mask* differs from eager's (different RNG), so train-mode outputs are not bit-comparable.

``patch_model(model, backend="auto")`` dispatches on ``config.model_type``; returns the patched module names.
"""

from __future__ import annotations

import types
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from kernels._backend import resolve_backend
from kernels.attention import (
    _padded_from_indices,
    cu_seqlens_from_mask,
    flash_attention,
    flash_attention_padded,
)

__all__ = [
    "ATTN_IMPLEMENTATION",
    "DECODER_FAMILIES",
    "ENCODER_FAMILIES",
    "patch_model",
    "patch_llama_family",
    "patch_bert_family",
    "unpatch_model",
    "register_attention",
    "sft_flash_attention_forward",
]

ATTN_IMPLEMENTATION = "sft_flash"
DECODER_FAMILIES = ("llama", "qwen2", "mistral")
ENCODER_FAMILIES = ("bert", "roberta", "distilbert")
_BACKEND_ATTR = "_sft_attn_backend"


# --------------------------------------------------------------------------------------------------------
# One-entry caches: the same mask / position_ids tensor object is handed to every layer of one forward, so the
# host sync that builds cu_seqlens happens once per forward instead of once per layer.
# --------------------------------------------------------------------------------------------------------


class _OneEntryCache:
    def __init__(self):
        self._ref = None
        self._key = None
        self._value = None

    def get(self, t: torch.Tensor, extra: Any, build):
        key = (t._version, tuple(t.shape), t.device, extra)
        if self._ref is not None and self._ref() is t and self._key == key:
            return self._value
        value = build()
        self._ref, self._key, self._value = weakref.ref(t), key, value
        return value


_unpad_cache = _OneEntryCache()
_packed_cache = _OneEntryCache()
_encoder_mask_cache = _OneEntryCache()


def _unpad_info(mask2d: torch.Tensor):
    """(indices, cu_seqlens, max_seqlen) of a (B, S) bool mask with 1 = real token."""

    def build():
        m = mask2d.to(torch.bool)
        indices = torch.nonzero(m.flatten(), as_tuple=False).flatten()
        cu, max_len = cu_seqlens_from_mask(m)
        return indices, cu, max_len

    return _unpad_cache.get(mask2d, None, build)


def _packed_info(position_ids: torch.Tensor, batch: int, seqlen: int):
    """cu_seqlens/max_seqlen over the flattened ``batch * seqlen`` tokens, or None if no row is packed."""

    def build():
        pos = position_ids.expand(batch, seqlen)
        starts = torch.ones_like(pos, dtype=torch.bool)
        starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
        n_starts = int(starts.sum().item())
        if n_starts == batch:
            return None
        idx = torch.nonzero(starts.flatten(), as_tuple=False).flatten().to(torch.int32)
        cu = torch.cat([idx, idx.new_tensor([batch * seqlen])])
        max_len = int((cu[1:] - cu[:-1]).max().item())
        return cu, max_len

    return _packed_cache.get(position_ids, (batch, seqlen), build)


# --------------------------------------------------------------------------------------------------------
# Decoder families: AttentionInterface
# --------------------------------------------------------------------------------------------------------


def _sft_mask_interface(
    batch_size: int,
    cache_position: torch.Tensor,
    kv_length: int,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
):
    """Mask function registered next to the attention: the 2-D (B, kv_length) bool padding mask, or None."""
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:]
    if bool(attention_mask.all()):
        return None
    return attention_mask


def _sdpa_fallback(query, key, value, mask2d, scaling, dropout, causal, sliding_window):
    """Masked SDPA on (B, H, S, D) inputs covering cache decode (bottom-right causal) and sliding windows."""
    b, hq, sq, d = query.shape
    skv = key.shape[2]
    if key.shape[1] != hq:
        rep = hq // key.shape[1]
        key = key.repeat_interleave(rep, dim=1)
        value = value.repeat_interleave(rep, dim=1)
    q_pos = torch.arange(skv - sq, skv, device=query.device)[:, None]
    k_pos = torch.arange(skv, device=query.device)[None, :]
    allowed = torch.ones(sq, skv, dtype=torch.bool, device=query.device)
    if causal:
        allowed = allowed & (k_pos <= q_pos)
        if sliding_window is not None:
            allowed = allowed & (k_pos > q_pos - sliding_window)
    allowed = allowed[None].expand(b, sq, skv)
    if mask2d is not None:
        allowed = allowed & mask2d[:, None, -skv:].to(torch.bool)
    empty = ~allowed.any(dim=-1, keepdim=True)  # rows with no visible key (padded queries): output 0, no NaN
    allowed = allowed | empty
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed[:, None], dropout_p=dropout, scale=scaling
    )
    out = out.masked_fill(empty[:, None], 0.0)
    return out.transpose(1, 2).contiguous()


def sft_flash_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
):
    """``AttentionInterface`` function: q (B, Hq, S, D), k/v (B, Hkv, S, D) -> ((B, S, Hq, D), None)."""
    backend = getattr(module, _BACKEND_ATTR, "auto")
    b, hq, sq, d = query.shape
    skv = key.shape[2]
    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", True)
    causal = bool(causal)
    sliding_window = kwargs.get("sliding_window")
    if attention_mask is not None and attention_mask.dim() != 2:
        # A 4-D mask (custom, or prepared by another mask function): plain SDPA with it, keeps correctness.
        out = F.scaled_dot_product_attention(
            query,
            key.repeat_interleave(hq // key.shape[1], dim=1),
            value.repeat_interleave(hq // key.shape[1], dim=1),
            attn_mask=attention_mask[:, :, :, :skv],
            dropout_p=dropout,
            scale=scaling,
            is_causal=False,
        )
        return out.transpose(1, 2).contiguous(), None
    if sq != skv or (sliding_window is not None and skv > sliding_window):
        return _sdpa_fallback(
            query, key, value, attention_mask, scaling, dropout, causal, sliding_window
        ), None

    q = query.transpose(1, 2)  # (B, S, H, D) views; the kernels take strides
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)
    use = resolve_backend(backend, query.device)
    if attention_mask is not None:
        if use == "triton":
            indices, cu, max_len = _unpad_info(attention_mask)
            out = _padded_from_indices(q, k, v, indices, cu, max_len, b, sq, causal, scaling, dropout)
        else:
            out = flash_attention_padded(
                q,
                k,
                v,
                attention_mask,
                causal=causal,
                softmax_scale=scaling,
                dropout_p=dropout,
                backend="torch",
            )
        return out, None
    position_ids = kwargs.get("position_ids")
    packed = None
    if position_ids is not None and sq > 1 and position_ids.shape[-1] == sq:
        packed = _packed_info(position_ids, b, sq)
    if packed is not None:
        cu, max_len = packed
        out = flash_attention(
            q.reshape(b * sq, hq, d),
            k.reshape(b * sq, k.shape[2], d),
            v.reshape(b * sq, v.shape[2], d),
            causal=causal,
            softmax_scale=scaling,
            cu_seqlens=cu,
            max_seqlen=max_len,
            dropout_p=dropout,
            backend=use,
        )
        return out.view(b, sq, hq, d), None
    out = flash_attention(q, k, v, causal=causal, softmax_scale=scaling, dropout_p=dropout, backend=use)
    return out, None


def register_attention() -> None:
    """Register ``"sft_flash"`` with AttentionInterface and AttentionMaskInterface (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, sft_flash_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _sft_mask_interface)


def _set_backend_on_attention_modules(model: torch.nn.Module, backend: str) -> list[str]:
    names = []
    for name, m in model.named_modules():
        if type(m).__name__.endswith("Attention") and hasattr(m, "num_key_value_groups"):
            setattr(m, _BACKEND_ATTR, backend)
            names.append(name)
    return names


def patch_llama_family(model: torch.nn.Module | None = None, backend: str = "auto") -> list[str]:
    """Llama / Qwen2 / Mistral: register ``"sft_flash"`` and switch ``model`` to it.

    With ``model=None`` only the registration happens (then load with ``attn_implementation="sft_flash"``).
    Returns the names of the attention modules now running through the kernel.
    """
    from kernels._backend import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    register_attention()
    if model is None:
        return []
    previous = model.config._attn_implementation
    if previous != ATTN_IMPLEMENTATION:
        model._sft_previous_attn_implementation = previous
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        raise RuntimeError(
            f"could not switch {type(model).__name__} to attn_implementation={ATTN_IMPLEMENTATION!r} "
            f"(still {model.config._attn_implementation!r})"
        )
    names = _set_backend_on_attention_modules(model, backend)
    if not names:
        raise ValueError(f"no attention modules found in {type(model).__name__}")
    return names


patch_qwen2 = patch_llama_family
patch_mistral = patch_llama_family


# --------------------------------------------------------------------------------------------------------
# Encoder families: replace self-attention forward
# --------------------------------------------------------------------------------------------------------


class _NotAPaddingMask(Exception):
    pass


def _key_padding_from_mask(mask: torch.Tensor | None, b: int, s: int, causal: bool) -> torch.Tensor | None:
    """(B, S) bool (True = real key) from a 2-D 0/1 mask or a 4-D additive/bool mask; None if no padding.

    A 4-D mask is accepted only if it is exactly ``key_padding`` (and ``causal``) broadcast over queries;
    otherwise :class:`_NotAPaddingMask` is raised and the caller falls back to the original attention.
    """
    if mask is None:
        return None
    if mask.dim() == 2:
        real = mask != 0 if mask.dtype != torch.bool else mask
        return None if bool(real.all()) else real

    def build():
        m = mask
        if m.dim() == 3:
            m = m[:, None]
        if (
            m.dim() != 4
            or m.shape[0] != b
            or m.shape[1] != 1
            or m.shape[-1] != s
            or m.shape[-2] not in (1, s)
        ):
            return _NotAPaddingMask
        if m.dtype == torch.bool:
            allowed = m[:, 0]
        else:
            allowed = m[:, 0] == 0
            blocked = m[:, 0] <= -1.0e4
            if not bool((allowed | blocked).all()):
                return _NotAPaddingMask
        key_real = allowed[:, -1, :]
        expected = key_real[:, None, :]
        if causal and allowed.shape[1] == s:
            expected = expected & torch.ones(s, s, dtype=torch.bool, device=m.device).tril()
        if not bool((allowed == expected.expand(b, allowed.shape[1], s)).all()):
            return _NotAPaddingMask
        return None if bool(key_real.all()) else key_real

    out = _encoder_mask_cache.get(mask, (b, s, causal), build)
    if out is _NotAPaddingMask:
        raise _NotAPaddingMask
    return out


def _run_padded(module, q, k, v, key_real, causal, dropout_p):
    backend = getattr(module, _BACKEND_ATTR, "auto")
    use = resolve_backend(backend, q.device)
    b, s = q.shape[:2]
    if key_real is not None and use == "triton":
        indices, cu, max_len = _unpad_info(key_real)
        return _padded_from_indices(q, k, v, indices, cu, max_len, b, s, causal, None, dropout_p)
    return flash_attention_padded(q, k, v, key_real, causal=causal, dropout_p=dropout_p, backend=use)


def _bert_self_attention_forward(
    self,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    past_key_values=None,
    output_attentions: bool | None = False,
    cache_position: torch.Tensor | None = None,
    **kwargs,
):
    """Drop-in for ``BertSelfAttention.forward`` / ``RobertaSelfAttention.forward`` (and Sdpa variants)."""
    past = past_key_values if past_key_values is not None else kwargs.get("past_key_value")

    def original():
        return self._sft_orig_forward(
            hidden_states,
            attention_mask=attention_mask,
            head_mask=head_mask,
            encoder_hidden_states=encoder_hidden_states,
            past_key_values=past,
            output_attentions=output_attentions,
            cache_position=cache_position,
        )

    if (
        encoder_hidden_states is not None
        or past is not None
        or output_attentions
        or head_mask is not None
        or getattr(self, "position_embedding_type", "absolute") != "absolute"
    ):
        return original()
    b, s, _ = hidden_states.shape
    h, d = self.num_attention_heads, self.attention_head_size
    causal = bool(getattr(self, "is_decoder", False))
    try:
        key_real = _key_padding_from_mask(attention_mask, b, s, causal)
    except _NotAPaddingMask:
        return original()
    q = self.query(hidden_states).view(b, s, h, d)
    k = self.key(hidden_states).view(b, s, h, d)
    v = self.value(hidden_states).view(b, s, h, d)
    p = self.dropout.p if self.training else 0.0
    out = _run_padded(self, q, k, v, key_real, causal, p)
    return out.reshape(b, s, h * d), None


def _distilbert_attention_forward(
    self,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    head_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
):
    """Drop-in for DistilBERT ``MultiHeadSelfAttention.forward`` (self-attention: query is key is value)."""
    if output_attentions or head_mask is not None or key is not query or value is not query:
        return self._sft_orig_forward(query, key, value, mask, head_mask, output_attentions)
    b, s, _ = query.shape
    h = self.n_heads
    d = self.dim // h
    try:
        key_real = _key_padding_from_mask(mask, b, s, False)
    except _NotAPaddingMask:
        return self._sft_orig_forward(query, key, value, mask, head_mask, output_attentions)
    q = self.q_lin(query).view(b, s, h, d)
    k = self.k_lin(query).view(b, s, h, d)
    v = self.v_lin(query).view(b, s, h, d)
    p = self.dropout.p if self.training else 0.0
    out = _run_padded(self, q, k, v, key_real, False, p)
    return (self.out_lin(out.reshape(b, s, h * d)),)


def _is_bert_self_attention(m: torch.nn.Module) -> bool:
    return all(
        hasattr(m, a)
        for a in ("query", "key", "value", "num_attention_heads", "attention_head_size", "dropout")
    )


def _is_distilbert_attention(m: torch.nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("q_lin", "k_lin", "v_lin", "out_lin", "n_heads", "dim", "dropout"))


def patch_bert_family(model: torch.nn.Module, backend: str = "auto") -> list[str]:
    """BERT / RoBERTa / DistilBERT: route every self-attention module through the kernel (bidirectional).

    Idempotent (re-patching only updates the backend). Returns the patched module names.
    """
    names = []
    for name, m in model.named_modules():
        if _is_bert_self_attention(m):
            fn = _bert_self_attention_forward
        elif _is_distilbert_attention(m):
            fn = _distilbert_attention_forward
        else:
            continue
        if not hasattr(m, "_sft_orig_forward"):
            m._sft_orig_forward = m.forward
            m.forward = types.MethodType(fn, m)
        setattr(m, _BACKEND_ATTR, backend)
        names.append(name)
    if not names:
        raise ValueError(f"no BERT-style self-attention modules found in {type(model).__name__}")
    return names


# --------------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------------


def patch_model(model: torch.nn.Module, backend: str = "auto") -> list[str]:
    """Patch ``model``'s attention to use the flash kernel; returns the names of the patched modules.

    ``backend``: ``"auto"`` (Triton on CUDA, torch reference elsewhere), ``"triton"`` or ``"torch"``.
    Raises ``ValueError`` for model families not listed in ``DECODER_FAMILIES`` / ``ENCODER_FAMILIES``.
    """
    from kernels._backend import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in DECODER_FAMILIES:
        return patch_llama_family(model, backend=backend)
    if model_type in ENCODER_FAMILIES:
        return patch_bert_family(model, backend=backend)
    raise ValueError(
        f"flash attention patch: unsupported model type {model_type!r} ({type(model).__name__}); supported: "
        f"{', '.join(DECODER_FAMILIES + ENCODER_FAMILIES)}"
    )


def unpatch_model(model: torch.nn.Module) -> None:
    """Undo :func:`patch_model` (restore the original attention)."""
    for m in model.modules():
        if hasattr(m, "_sft_orig_forward"):
            if hasattr(
                m, "_sft_unpad_orig_forward"
            ):  # sft.unpad wraps this patch: it now chains to the class's
                m._sft_unpad_orig_forward = m._sft_orig_forward
            else:
                del m.forward  # the instance attribute; the class's forward is visible again
            del m._sft_orig_forward
        if hasattr(m, _BACKEND_ATTR):
            delattr(m, _BACKEND_ATTR)
    previous = getattr(model, "_sft_previous_attn_implementation", None)
    if previous is not None:
        model.set_attn_implementation(previous)
        del model._sft_previous_attn_implementation
