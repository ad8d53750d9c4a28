"""Unpadded training path for BERT-style encoders: padded positions cost no FLOPs.

A runtime patch (like :mod:`sft.patch_attention`; weights, config and ``save_pretrained`` output unchanged).
:func:`apply_unpadding` replaces the ``forward`` of the encoder (``BertModel``, ``RobertaModel``,
``XLMRobertaModel``, ``DistilBertModel`` instances inside the model, also under peft/LoRA) and of its
self-attention modules. When the encoder is in ``train()`` mode and the 2-D attention mask has padding:

1. the real tokens are gathered once (``input_ids``, ``token_type_ids`` and the position ids the padded model
   would use, so each sequence keeps its positions) and embedded as one ``(1, total_tokens, hidden)`` row;
2. every layer runs on that row: linear layers, LayerNorm, GELU and dropout are per-token, and attention gets
   a :class:`VarlenBatch` in place of the mask, run as varlen attention (the Triton varlen kernel on CUDA, on
   CPU SDPA over a few length buckets padded within the bucket, the fastest torch path measured here);
3. the output is scattered back to ``(batch, seq, hidden)`` with zeros at padded positions (a copy of
   ``batch * seq * hidden`` values, cheap next to the layers), so heads, losses and the pooler are unchanged.
   Padded positions get 0 where the padded model had values that no loss reads.

Everything else takes the original path: ``eval()`` mode (evaluation, export, pipelines), batches without
padding, ``inputs_embeds``, head masks, ``output_attentions``/``output_hidden_states``, decoders and
cross-attention. Gradient checkpointing still works (the layers are called through their own ``__call__``).

For the joint masked-LM loss, :func:`apply_unpadding` on a ``*ForMaskedLM`` model also runs its prediction
head only on the labeled (masked) positions instead of every position; the loss is the same mean.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kernels._backend import resolve_backend

__all__ = [
    "MODES",
    "SUPPORTED_FAMILIES",
    "VarlenBatch",
    "apply_unpadding",
    "remove_unpadding",
    "varlen_attention",
]

MODES = ("auto", "off")
SUPPORTED_FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert")
CPU_BUCKETS = 4  # CPU attention length buckets: 2, 4, 8 measured alike on SST-2 batches of 32, 1 slower
_ORIG = "_sft_unpad_orig_forward"


@dataclass
class VarlenBatch:
    """Handed to the patched attention in place of the mask: where each sequence sits in the packed row."""

    cu_seqlens: torch.Tensor  # (nseq + 1,) int32
    max_seqlen: int
    backend: str  # "triton" | "torch"
    lengths: list[int] = field(default_factory=list)
    _buckets: list | None = None
    _inverse: torch.Tensor | None = None

    def buckets(self, n_buckets: int = CPU_BUCKETS):
        """Per bucket: (gather index (b*s,) into the packed tokens, b, s, key mask (b,1,1,s) or None, real
        positions (b*s,) of the bucket grid); and the permutation putting the buckets' rows back in order."""
        if self._buckets is None:
            device = self.cu_seqlens.device
            lengths = torch.tensor(self.lengths)
            starts = self.cu_seqlens[:-1].to("cpu", torch.long)
            order = torch.argsort(lengths, stable=True)
            out, dest = [], []
            for chunk in order.chunk(min(n_buckets, len(order))):
                lens, s = lengths[chunk], int(lengths[chunk].max())
                pos = torch.arange(s)
                real = pos[None] < lens[:, None]
                gather = (starts[chunk, None] + pos[None]).masked_fill(~real, 0).flatten()
                sel = real.flatten().nonzero().flatten()
                mask = None if bool(real.all()) else real[:, None, None, :].to(device)
                out.append((gather.to(device), len(chunk), s, mask, sel.to(device)))
                dest.append(gather[sel])
            self._buckets = out
            self._inverse = torch.argsort(torch.cat(dest)).to(device)
        return self._buckets, self._inverse


def varlen_attention(q, k, v, batch: VarlenBatch, dropout_p: float = 0.0) -> torch.Tensor:
    """Bidirectional attention within each sequence of the packed ``(T, H, D)`` q/k/v -> ``(T, H, D)``."""
    if batch.backend == "triton":
        from kernels.attention import flash_attention

        return flash_attention(
            q,
            k,
            v,
            cu_seqlens=batch.cu_seqlens,
            max_seqlen=batch.max_seqlen,
            dropout_p=dropout_p,
            backend="triton",
        )
    buckets, inverse = batch.buckets()
    h, d = q.shape[1:]
    pieces = []
    for gather, b, s, mask, sel in buckets:

        def grid(t, gather=gather, b=b, s=s):
            return t.index_select(0, gather).view(b, s, h, d).transpose(1, 2)

        o = F.scaled_dot_product_attention(grid(q), grid(k), grid(v), attn_mask=mask, dropout_p=dropout_p)
        pieces.append(o.transpose(1, 2).reshape(b * s, h, d).index_select(0, sel))
    return torch.cat(pieces).index_select(0, inverse)


# --------------------------------------------------------------------------------------------------------
# Self-attention: the VarlenBatch path, anything else goes to the previous forward
# --------------------------------------------------------------------------------------------------------


def _bert_self_attention(self, hidden_states, attention_mask=None, *args, **kwargs):
    if not isinstance(attention_mask, VarlenBatch):
        return getattr(self, _ORIG)(hidden_states, attention_mask, *args, **kwargs)
    t = hidden_states.shape[1]
    h, d = self.num_attention_heads, self.attention_head_size
    x = hidden_states[0]
    q, k, v = (proj(x).view(t, h, d) for proj in (self.query, self.key, self.value))
    out = varlen_attention(q, k, v, attention_mask, self.dropout.p if self.training else 0.0)
    return out.reshape(1, t, h * d), None


def _distilbert_attention(self, query, key, value, mask, head_mask=None, output_attentions=False):
    if not isinstance(mask, VarlenBatch):
        return getattr(self, _ORIG)(query, key, value, mask, head_mask, output_attentions)
    t = query.shape[1]
    h = self.n_heads
    d = self.dim // h
    x = query[0]
    q, k, v = (proj(x).view(t, h, d) for proj in (self.q_lin, self.k_lin, self.v_lin))
    out = varlen_attention(q, k, v, mask, self.dropout.p if self.training else 0.0)
    return (self.out_lin(out.reshape(1, t, h * d)),)


# --------------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------------


class _Unpadded:
    """The gathered inputs of one padded batch."""

    def __init__(self, mask2d: torch.Tensor, backend: str):
        real = mask2d.to(torch.bool)
        self.shape = real.shape
        self.indices = real.flatten().nonzero().flatten()
        lengths = real.sum(1, dtype=torch.int32)
        cu = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        lens = lengths.tolist()
        self.varlen = VarlenBatch(cu, max(lens), resolve_backend(backend, real.device), lens)
        # packed tokens are row-major (nonzero order): each row's tokens are contiguous, any padding side

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t.expand(self.shape).reshape(-1).index_select(0, self.indices)[None]

    def scatter(self, hidden: torch.Tensor) -> torch.Tensor:
        b, s = self.shape
        out = hidden.new_zeros(b * s, hidden.shape[-1]).index_copy(0, self.indices, hidden[0])
        return out.view(b, s, -1)


def _eligible(self, input_ids, attention_mask, *unsupported) -> bool:
    return (
        self.training
        and getattr(self, "_sft_unpad_on", False)
        and input_ids is not None
        and attention_mask is not None
        and attention_mask.dim() == 2
        and not any(u for u in unsupported[:-1])
        and all(v is None for v in unsupported[-1].values())  # extra kwargs (cache_position, ...) set
        and not torch.jit.is_tracing()
        and not bool(attention_mask.all())
        and bool(attention_mask.any(1).all())  # an all-padding row keeps the padded path
    )


def _bert_model_forward(
    self,
    input_ids=None,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    head_mask=None,
    inputs_embeds=None,
    encoder_hidden_states=None,
    encoder_attention_mask=None,
    past_key_values=None,
    use_cache=None,
    output_attentions=None,
    output_hidden_states=None,
    return_dict=None,
    **kwargs,
):
    """BertModel / RobertaModel / XLMRobertaModel.forward with the unpadded path in training."""
    cfg = self.config
    if not _eligible(
        self,
        input_ids,
        attention_mask,
        head_mask is not None,
        inputs_embeds is not None,
        encoder_hidden_states is not None,
        past_key_values is not None,
        output_attentions if output_attentions is not None else cfg.output_attentions,
        output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states,
        cfg.is_decoder,
        getattr(cfg, "position_embedding_type", "absolute") != "absolute",
        kwargs,
    ):
        return getattr(self, _ORIG)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    u = _Unpadded(attention_mask, self._sft_unpad_backend)
    emb = self.embeddings
    if position_ids is None:
        padding_idx = getattr(emb, "padding_idx", None)
        if padding_idx is not None and cfg.model_type != "bert":  # RoBERTa family: count real ids from pad+1
            real = input_ids.ne(padding_idx).int()
            position_ids = torch.cumsum(real, dim=1).type_as(real) * real + padding_idx
        else:
            position_ids = emb.position_ids[:, : input_ids.shape[1]]
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    hidden = emb(
        input_ids=u.gather(input_ids),
        token_type_ids=u.gather(token_type_ids),
        position_ids=u.gather(position_ids.long()),
    )
    for layer in self.encoder.layer:
        hidden = layer(hidden, attention_mask=u.varlen)[0]
    sequence_output = u.scatter(hidden)
    pooled = self.pooler(sequence_output) if self.pooler is not None else None
    if return_dict is False or (return_dict is None and not cfg.use_return_dict):
        return (sequence_output, pooled)
    return BaseModelOutputWithPoolingAndCrossAttentions(
        last_hidden_state=sequence_output, pooler_output=pooled
    )


def _distilbert_model_forward(
    self,
    input_ids=None,
    attention_mask=None,
    head_mask=None,
    inputs_embeds=None,
    output_attentions=None,
    output_hidden_states=None,
    return_dict=None,
    **kwargs,
):
    cfg = self.config
    if not _eligible(
        self,
        input_ids,
        attention_mask,
        head_mask is not None,
        inputs_embeds is not None,
        output_attentions if output_attentions is not None else cfg.output_attentions,
        output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states,
        kwargs,
    ):
        return getattr(self, _ORIG)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )
    from transformers.modeling_outputs import BaseModelOutput

    u = _Unpadded(attention_mask, self._sft_unpad_backend)
    emb = self.embeddings
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    x = emb.word_embeddings(u.gather(input_ids)) + emb.position_embeddings(u.gather(positions))
    hidden = emb.dropout(emb.LayerNorm(x))
    for layer in self.transformer.layer:
        hidden = layer(hidden, attn_mask=u.varlen)[-1]
    out = u.scatter(hidden)
    if return_dict is False or (return_dict is None and not cfg.use_return_dict):
        return (out,)
    return BaseModelOutput(last_hidden_state=out)


# --------------------------------------------------------------------------------------------------------
# Masked-LM head on the labeled positions only
# --------------------------------------------------------------------------------------------------------


def _mlm_head(model):
    if hasattr(model, "cls"):  # BERT
        return model.cls
    if hasattr(model, "lm_head"):  # RoBERTa, XLM-R
        return model.lm_head
    return lambda h: model.vocab_projector(  # DistilBERT
        model.vocab_layer_norm(model.activation(model.vocab_transform(h)))
    )


def _masked_lm_forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
    if (
        not (self.training and labels is not None and getattr(self, "_sft_unpad_on", False))
        or kwargs.get("return_dict") is False
    ):
        return getattr(self, _ORIG)(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
        )
    from transformers.modeling_outputs import MaskedLMOutput

    base = getattr(self, self.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
    chosen = labels.reshape(-1).ne(-100).nonzero().flatten()
    scores = _mlm_head(self)(hidden.reshape(-1, hidden.shape[-1]).index_select(0, chosen))
    loss = F.cross_entropy(scores.float(), labels.reshape(-1).index_select(0, chosen))
    return MaskedLMOutput(loss=loss, logits=None)


# --------------------------------------------------------------------------------------------------------
# Patching
# --------------------------------------------------------------------------------------------------------


def _encoder_classes():
    from transformers import BertModel, DistilBertModel, RobertaModel, XLMRobertaModel

    return {
        BertModel: _bert_model_forward,
        RobertaModel: _bert_model_forward,
        XLMRobertaModel: _bert_model_forward,
        DistilBertModel: _distilbert_model_forward,
    }


def _masked_lm_classes():
    from transformers import BertForMaskedLM, DistilBertForMaskedLM, RobertaForMaskedLM, XLMRobertaForMaskedLM

    return (BertForMaskedLM, RobertaForMaskedLM, XLMRobertaForMaskedLM, DistilBertForMaskedLM)


def _replace_forward(module, fn) -> None:
    if not hasattr(module, _ORIG):
        setattr(module, _ORIG, module.forward)  # may itself be a patch (sft.patch_attention); we chain to it
        module.forward = types.MethodType(fn, module)
    module._sft_unpad_on = True


def apply_unpadding(
    model: torch.nn.Module, *, task: str, mode: str = "auto", backend: str = "auto"
) -> tuple[torch.nn.Module, list[str]]:
    """Patch ``model`` (also a peft model) to train on unpadded tokens; returns (model, lines to print).

    ``task``: ``"sequence-classification"``, ``"token-classification"`` or ``"masked-lm"`` (the joint MLM
    objective's model). ``mode``: ``"auto"`` (on where supported) or ``"off"`` (nothing changes).
    ``backend``: the attention backend (``"auto"``: the Triton varlen kernel on CUDA, torch buckets on CPU).
    A model without a supported encoder keeps the padded path, with one line saying so.
    """
    from sft.patch_attention import _is_bert_self_attention, _is_distilbert_attention

    if mode not in MODES:
        raise ValueError(f"unpad mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return model, ["unpadding: off (--no-unpad): padded positions run through every layer"]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if task == "causal-lm":
        return model, [f"unpadding: not for {task} (decoders take the padded/packed path)"]
    encoders = [(m, fn) for m in model.modules() for cls, fn in _encoder_classes().items() if type(m) is cls]
    if not encoders:
        return model, [
            f"unpadding: {model_type or type(model).__name__} is not supported "
            f"({', '.join(SUPPORTED_FAMILIES)}); training on padded batches"
        ]
    patched = 0
    for encoder, fn in encoders:
        encoder._sft_unpad_backend = backend
        _replace_forward(encoder, fn)
        for m in encoder.modules():
            if _is_bert_self_attention(m):
                _replace_forward(m, _bert_self_attention)
                patched += 1
            elif _is_distilbert_attention(m):
                _replace_forward(m, _distilbert_attention)
                patched += 1
    for m in model.modules():
        if isinstance(m, _masked_lm_classes()):
            _replace_forward(m, _masked_lm_forward)
    attn = {
        "auto": "Triton varlen kernel on CUDA, torch SDPA buckets on CPU",
        "triton": "Triton varlen kernel",
    }
    attn = attn.get(backend, "torch SDPA buckets")
    return model, [
        f"unpadding: {model_type} {task} trains on real tokens only ({patched} attention layers, {attn})"
    ]


def remove_unpadding(model: torch.nn.Module) -> None:
    """Undo :func:`apply_unpadding` (the padded path everywhere)."""
    for m in model.modules():
        if hasattr(m, _ORIG):
            m.forward = getattr(m, _ORIG)
            if m.forward.__func__ is type(m).forward:
                del m.forward  # the class's forward is visible again
            delattr(m, _ORIG)
        for attr in ("_sft_unpad_on", "_sft_unpad_backend"):
            if hasattr(m, attr):
                delattr(m, attr)
