"""sft.patch_attention: patched tiny random-weight models match the unpatched (eager) models.

Forward logits/hidden states at real (non-padded) positions and all parameter gradients, with padded batches,
for backend="torch" and (under TRITON_INTERPRET=1, fp32, tiny shapes) backend="triton". Padded positions are
excluded from comparisons: the kernel writes 0 there, eager attends padded queries to real keys; neither
reaches a loss that ignores padding.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import interpreter_ready  # noqa: E402

transformers = pytest.importorskip("transformers")

from sft.patch_attention import ATTN_IMPLEMENTATION, patch_model, unpatch_model  # noqa: E402

ATOL = 2e-5  # fp32 end to end (the kernel multiplies in IEEE fp32 under the interpreter)
GRAD_RTOL = 1e-4  # parameter gradients: max |diff| <= GRAD_RTOL * max |grad| + ATOL


INTERPRETER_READY = interpreter_ready()

NEEDS_TRITON = pytest.mark.skipif(
    not INTERPRETER_READY,
    reason="triton backend on CPU needs triton and TRITON_INTERPRET=1 set before triton is first imported",
)
BACKENDS = ["torch", pytest.param("triton", marks=NEEDS_TRITON)]


def _pair(model_cls, config):
    """(eager reference, copy with identical weights to be patched); separate config objects."""
    torch.manual_seed(0)
    ref = model_cls(copy.deepcopy(config)).eval()
    other = model_cls(copy.deepcopy(config)).eval()
    other.load_state_dict(ref.state_dict())
    return ref, other


def _llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    base.update(kw)
    return LlamaConfig(**base)


def _bert_config(**kw):
    from transformers import BertConfig

    base = dict(
        vocab_size=101,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    base.update(kw)
    return BertConfig(**base)


def _inputs(b=3, s=16, vocab=101, side="right", seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    cut = [s, s - 5, 3][:b]
    for i, n in enumerate(cut):
        if side == "right":
            mask[i, n:] = 0
        else:
            mask[i, : s - n] = 0
    return ids, mask


def _compare(ref_model, model, out_fn, kwargs, real):
    """Forward (real positions) and parameter gradients of sum(out * w) over real positions."""
    out_ref = out_fn(ref_model(**kwargs))
    out = out_fn(model(**kwargs))
    diff = (out_ref - out)[real].abs().max().item()
    assert diff <= ATOL * max(1.0, out_ref[real].abs().max().item()), f"forward max abs diff {diff:.3e}"
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out_ref * w)[real].sum().backward()
    (out * w)[real].sum().backward()
    params = dict(model.named_parameters())
    for name, p in ref_model.named_parameters():
        if p.grad is None:
            assert params[name].grad is None or params[name].grad.abs().max() == 0, name
            continue
        g = params[name].grad
        assert g is not None, f"no gradient for {name}"
        err = (g - p.grad).abs().max().item()
        assert err <= GRAD_RTOL * p.grad.abs().max().item() + ATOL, f"grad {name}: max abs diff {err:.3e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_llama_gqa_padded_matches_eager(side, backend):
    from transformers import LlamaForCausalLM

    ref, model = _pair(LlamaForCausalLM, _llama_config())
    names = patch_model(model, backend=backend)
    assert names == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert ref.config._attn_implementation == "eager"
    ids, mask = _inputs(side=side, s=12)
    _compare(ref, model, lambda o: o.logits, dict(input_ids=ids, attention_mask=mask), mask.bool())


@pytest.mark.parametrize("backend", BACKENDS)
def test_llama_packed_position_ids_match_separate_sequences(backend):
    """position_ids restarting at 0 (packed sequences, no mask) -> no attention across sequences."""
    from transformers import LlamaForCausalLM

    ref, model = _pair(LlamaForCausalLM, _llama_config())
    patch_model(model, backend=backend)
    lengths = [7, 1, 12]
    ids = torch.randint(0, 101, (1, sum(lengths)), generator=torch.Generator().manual_seed(3))
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos).logits
        starts = [0, 7, 8, 20]
        separate = torch.cat(
            [ref(input_ids=ids[:, s:e]).logits for s, e in zip(starts[:-1], starts[1:], strict=False)], dim=1
        )
        unpacked = model(input_ids=ids).logits  # plain arange positions: one long sequence
    assert (packed - separate).abs().max().item() <= ATOL * max(1.0, separate.abs().max().item())
    assert (unpacked - separate).abs().max().item() > 1e-3  # the packing actually changed something


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_qwen2_mistral_left_padding(family):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls, cfg_cls = {"qwen2": (Qwen2ForCausalLM, Qwen2Config), "mistral": (MistralForCausalLM, MistralConfig)}[
        family
    ]
    cfg = cfg_cls(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    ref, model = _pair(cls, cfg)
    assert len(patch_model(model, backend="torch")) == 2
    ids, mask = _inputs(side="left", seed=5)
    _compare(ref, model, lambda o: o.logits, dict(input_ids=ids, attention_mask=mask), mask.bool())


def test_llama_generate_with_cache_matches_eager():
    """Decode steps (query length 1, cached keys) take the masked-SDPA fallback; prefill the padded path."""
    from transformers import LlamaForCausalLM

    ref, model = _pair(LlamaForCausalLM, _llama_config())
    patch_model(model, backend="torch")
    ids, mask = _inputs(b=2, s=10, side="left", seed=7)
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(ref.generate(ids, **kw), model.generate(ids, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_bert_padded_matches_eager(backend, impl):
    """BertModel with a right-padded batch; the original model uses eager or sdpa masks (both recovered)."""
    from transformers import BertModel

    ref, model = _pair(BertModel, _bert_config(attn_implementation=impl))
    names = patch_model(model, backend=backend)
    assert names == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    ids, mask = _inputs(side="right", seed=11)
    _compare(ref, model, lambda o: o.last_hidden_state, dict(input_ids=ids, attention_mask=mask), mask.bool())


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_roberta_distilbert_padded_match(family):
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    if family == "roberta":
        cls = RobertaModel
        cfg = RobertaConfig(
            vocab_size=101,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            pad_token_id=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    else:
        cls = DistilBertModel
        cfg = DistilBertConfig(
            vocab_size=101,
            dim=64,
            n_layers=2,
            n_heads=4,
            hidden_dim=128,
            dropout=0.0,
            attention_dropout=0.0,
            attn_implementation="eager",
        )
    ref, model = _pair(cls, cfg)
    assert len(patch_model(model, backend="torch")) == 2
    ids, mask = _inputs(side="left", seed=13)
    ids[ids == 1] = 2
    _compare(ref, model, lambda o: o.last_hidden_state, dict(input_ids=ids, attention_mask=mask), mask.bool())


def test_bert_output_attentions_falls_back_and_unpatch_restores():
    from transformers import BertModel

    ref, model = _pair(BertModel, _bert_config())
    patch_model(model, backend="torch")
    ids, mask = _inputs(seed=17)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        out_ref = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert out.attentions is not None and torch.allclose(out.attentions[0], out_ref.attentions[0])
    unpatch_model(model)
    assert not any(hasattr(m, "_sft_orig_forward") for m in model.modules())
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).last_hidden_state,
            ref(input_ids=ids, attention_mask=mask).last_hidden_state,
        )


@pytest.mark.parametrize(
    "family,backend",
    [pytest.param("bert", "triton", marks=NEEDS_TRITON), ("bert", "torch"), ("llama", "torch")],
)
def test_train_mode_attention_dropout_is_applied(family, backend):
    """Attention dropout is supported: active in train(), reproducible with manual_seed, off in eval()."""
    from transformers import BertModel, LlamaModel

    if family == "bert":
        ref, model = _pair(BertModel, _bert_config(attention_probs_dropout_prob=0.5))
        out_fn = lambda o: o.last_hidden_state  # noqa: E731
    else:
        ref, model = _pair(LlamaModel, _llama_config(attention_dropout=0.5))
        out_fn = lambda o: o.last_hidden_state  # noqa: E731
    patch_model(model, backend=backend)
    ids, mask = _inputs(b=2, s=10, seed=19)
    real = mask.bool()
    with torch.no_grad():
        eval_out = out_fn(model(input_ids=ids, attention_mask=mask))
        assert (eval_out - out_fn(ref(input_ids=ids, attention_mask=mask)))[real].abs().max() <= 1e-4
    model.train()
    torch.manual_seed(0)
    a = out_fn(model(input_ids=ids, attention_mask=mask))
    torch.manual_seed(0)
    b = out_fn(model(input_ids=ids, attention_mask=mask))
    torch.manual_seed(1)
    c = out_fn(model(input_ids=ids, attention_mask=mask))
    assert torch.equal(a[real], b[real])
    assert (a - eval_out)[real].abs().max() > 1e-2, (
        "train-mode output equals eval output: dropout not applied"
    )
    assert (a - c)[real].abs().max() > 1e-2
    a[real].sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_unsupported_family_raises():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(ValueError, match="unsupported model type 'gpt2'"):
        patch_model(model)
    with pytest.raises(ValueError, match="backend"):
        patch_model(model, backend="cuda")
