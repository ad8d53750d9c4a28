from __future__ import annotations

import pytest
import torch

from sft.errors import InputError
from sft.strategies import GradualUnfreezer, apply_freeze, apply_lora, layer_groups, param_groups


@pytest.fixture
def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=2,
        )
    )


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_layer_groups_find_embeddings_layers_and_head(bert):
    g = layer_groups(bert)
    assert len(g.layers) == 3
    assert all(n.startswith("bert.embeddings.") for n in g.embeddings)
    assert all(".layer.2." in n for n in g.layers[2])
    assert set(g.head) == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }


@pytest.mark.parametrize(
    "spec,still_trainable,frozen_sample",
    [
        (
            "embeddings",
            "bert.encoder.layer.0.attention.self.query.weight",
            "bert.embeddings.word_embeddings.weight",
        ),
        ("bottom:2", "bert.encoder.layer.2.output.dense.weight", "bert.encoder.layer.1.output.dense.weight"),
        ("all-but-head", "classifier.weight", "bert.encoder.layer.2.output.dense.weight"),
        (
            r"attention\.self",
            "bert.encoder.layer.0.output.dense.weight",
            "bert.encoder.layer.1.attention.self.key.bias",
        ),
    ],
)
def test_freeze_specs(bert, spec, still_trainable, frozen_sample):
    apply_freeze(bert, spec)
    assert still_trainable in _trainable(bert) and frozen_sample not in _trainable(bert)


@pytest.mark.parametrize(
    "spec,message",
    [
        (".*", "every parameter would be frozen"),
        ("bottom:9", "has 3 layers"),
        ("nomatch_xyz", "matches no parameter"),
        ("bottom:x", "integer K"),
    ],
)
def test_freeze_errors(bert, spec, message):
    with pytest.raises(InputError, match=message):
        apply_freeze(bert, spec)


def test_gradual_unfreezing_goes_top_down(bert):
    u = GradualUnfreezer(bert, every=10)
    assert _trainable(bert) == set(layer_groups(bert).head)
    assert not u.step(5)
    assert u.step(10) and "bert.encoder.layer.2.output.dense.weight" in _trainable(bert)
    assert "bert.encoder.layer.1.output.dense.weight" not in _trainable(bert)
    u.step(40)
    assert _trainable(bert) == {n for n, _ in bert.named_parameters()}


def test_layerwise_learning_rates(bert):
    groups = param_groups(bert, 1e-3, 0.01, layer_lr_decay=0.5, head_lr=2e-3)
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    wd_of = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert lr_of["classifier.weight"] == 2e-3
    assert lr_of["bert.encoder.layer.2.output.dense.weight"] == pytest.approx(1e-3 * 0.5)
    assert lr_of["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(1e-3 * 0.5**3)
    assert lr_of["bert.embeddings.word_embeddings.weight"] == pytest.approx(1e-3 * 0.5**4)
    assert wd_of["bert.encoder.layer.0.output.dense.bias"] == 0.0 and wd_of["classifier.weight"] == 0.01
    assert sum(len(g["params"]) for g in groups) == len(list(bert.parameters()))


def test_lora_trains_adapters_and_head_only(bert):
    model = apply_lora(bert, r=4, alpha=8, dropout=0.0, targets=["query", "value"], task_type="SEQ_CLS")
    names = _trainable(model)
    assert any("lora_A" in n for n in names) and any("classifier" in n for n in names)
    assert not any("query.base_layer.weight" in n for n in names)
    with pytest.raises(InputError, match="no module of that name"):
        apply_lora(bert, r=4, alpha=8, dropout=0.0, targets=["nope"], task_type="SEQ_CLS")
    with pytest.raises(InputError, match="Linear / Embedding / Conv1d"):
        apply_lora(bert, r=4, alpha=8, dropout=0.0, targets=["LayerNorm"], task_type="SEQ_CLS")
