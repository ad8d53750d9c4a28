"""sft.unpad: the unpadded training path matches the padded one on tiny random-weight models.

Every supported family (BERT, RoBERTa, XLM-RoBERTa, DistilBERT), sequence and token classification: forward
outputs at real positions and every parameter gradient agree (fp32 tight, bf16 autocast loose), 30 AdamW steps
give the same losses, a batch with one long and many short rows, a batch with no padding, left padding,
gradient checkpointing, freezing, LoRA, the joint masked-LM loss, save_pretrained + pipeline, fallbacks.
Dropout is off (the two paths draw different dropout masks).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

from sft.unpad import VarlenBatch, apply_unpadding, remove_unpadding, varlen_attention  # noqa: E402

VOCAB = 97
ATOL = 2e-5
GRAD_RTOL = 1e-4
FAMILIES = ["bert", "roberta", "xlm-roberta", "distilbert"]


def _config(family: str, **kw):
    common = dict(vocab_size=VOCAB, max_position_embeddings=80, pad_token_id=1)
    if family == "distilbert":
        from transformers import DistilBertConfig

        return DistilBertConfig(
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
            **common,
            **kw,
        )
    cls = {
        "bert": transformers.BertConfig,
        "roberta": transformers.RobertaConfig,
        "xlm-roberta": transformers.XLMRobertaConfig,
    }[family]
    return cls(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        type_vocab_size=2,
        **common,
        **kw,
    )


def _pair(family: str, head: str, **kw):
    """(reference, unpadded copy with identical weights), both in train() mode."""
    auto = {
        "seq": transformers.AutoModelForSequenceClassification,
        "tok": transformers.AutoModelForTokenClassification,
    }
    torch.manual_seed(0)
    ref = auto[head].from_config(_config(family, num_labels=3, **kw))
    model = copy.deepcopy(ref)
    task = "sequence-classification" if head == "seq" else "token-classification"
    model, notes = apply_unpadding(model, task=task, backend="torch")
    assert len(notes) == 1 and "real tokens only" in notes[0], notes
    return ref.train(), model.train()


def _batch(lengths, seq=None, side="right", seed=0, token_types=False):
    seq = seq or max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), seq), generator=g)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, seq - n :] = 1
    ids = ids.masked_fill(mask == 0, 1)  # the pad id
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        batch["token_type_ids"] = (torch.arange(seq)[None] >= 3).long().expand_as(ids) * mask
    return batch


def _outputs(model, batch, head):
    logits = model(**batch).logits
    return logits if head == "seq" else logits[batch["attention_mask"].bool()]


def _assert_same(ref, model, batch, head, atol=ATOL, grad_rtol=GRAD_RTOL):
    out_ref, out = _outputs(ref, batch, head), _outputs(model, batch, head)
    diff = (out_ref - out).abs().max().item()
    assert diff <= atol * max(1.0, out_ref.abs().max().item()), f"forward max abs diff {diff:.3e}"
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out_ref.float() * w).sum().backward()
    (out.float() * w).sum().backward()
    grads = dict(model.named_parameters())
    checked = 0
    for name, p in ref.named_parameters():
        g = grads[name].grad
        if p.grad is None:
            assert g is None or g.abs().max() == 0, name
            continue
        assert g is not None, f"no gradient for {name}"
        err = (g - p.grad).abs().max().item()
        assert err <= grad_rtol * p.grad.abs().max().item() + atol, f"grad {name}: max abs diff {err:.3e}"
        checked += 1
    assert checked > 10


def _count_varlen_calls(model):
    """Counts how often the unpadded attention ran (to prove which path a batch took)."""
    calls = []
    import sft.unpad as unpad

    real = unpad.varlen_attention

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    return calls, counting


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["seq", "tok"])
def test_forward_backward_match_padded(family, head, monkeypatch):
    ref, model = _pair(family, head)
    batch = _batch([11, 7, 3, 9, 1], token_types=family == "bert")
    import sft.unpad as unpad

    calls, counting = _count_varlen_calls(model)
    monkeypatch.setattr(unpad, "varlen_attention", counting)
    _assert_same(ref, model, batch, head)
    assert len(calls) == 2  # one per layer: the unpadded path ran


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_left_padding_and_one_long_many_short(family):
    ref, model = _pair(family, "tok")
    _assert_same(ref, model, _batch([2, 3, 60, 1, 2, 4, 2, 3], side="left"), "tok")
    ref, model = _pair(family, "seq")
    _assert_same(ref, model, _batch([2, 3, 60, 1, 2, 4, 2, 3, 5, 2, 1, 2]), "seq")


@pytest.mark.parametrize("family", FAMILIES)
def test_no_padding_takes_the_padded_path(family, monkeypatch):
    import sft.unpad as unpad

    ref, model = _pair(family, "seq")
    calls, counting = _count_varlen_calls(model)
    monkeypatch.setattr(unpad, "varlen_attention", counting)
    _assert_same(ref, model, _batch([8, 8, 8]), "seq", atol=0, grad_rtol=0)
    assert calls == []


def test_eval_mode_is_the_padded_path_exactly():
    ref, model = _pair("bert", "tok")
    ref.eval(), model.eval()
    batch = _batch([9, 4, 2])
    with torch.no_grad():
        assert torch.equal(ref(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_bf16_autocast_within_tolerance(family):
    ref, model = _pair(family, "seq")
    batch = _batch([12, 5, 3, 8])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _assert_same(ref, model, batch, "seq", atol=3e-2, grad_rtol=5e-2)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["seq", "tok"])
def test_thirty_training_steps_same_losses(family, head):
    ref, model = _pair(family, head)
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (ref, model)]
    g = torch.Generator().manual_seed(3)
    losses = {0: [], 1: []}
    for step in range(30):
        lengths = torch.randint(1, 20, (6,), generator=g).tolist()
        batch = _batch(lengths, seed=step)
        labels = batch["input_ids"] % 3  # learnable: the class is a function of the token
        labels = labels[:, 0] if head == "seq" else labels.masked_fill(batch["attention_mask"] == 0, -100)
        for i, (m, opt) in enumerate(zip((ref, model), opts, strict=True)):
            loss = m(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[i].append(loss.item())
    diffs = [abs(a - b) / max(1.0, abs(a)) for a, b in zip(losses[0], losses[1], strict=True)]
    assert max(diffs) < 1e-4, (max(diffs), losses)
    assert sum(losses[0][-5:]) < sum(losses[0][:5])  # it trained


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_gradient_checkpointing(family):
    ref, model = _pair(family, "tok")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _assert_same(ref, model, _batch([10, 3, 6]), "tok")


def test_freeze_and_lora():
    from sft.strategies import apply_freeze, apply_lora

    ref, model = _pair("bert", "seq")
    for m in (ref, model):
        apply_freeze(m, "embeddings")
    _assert_same(ref, model, _batch([10, 3, 6]), "seq")

    torch.manual_seed(0)
    base = transformers.AutoModelForSequenceClassification.from_config(_config("bert", num_labels=3))
    lora_kw = dict(r=4, alpha=8, dropout=0.0, targets=None, task_type="SEQ_CLS")
    torch.manual_seed(1)
    ref = apply_lora(copy.deepcopy(base), **lora_kw).train()
    torch.manual_seed(1)
    model = apply_lora(copy.deepcopy(base), **lora_kw)
    model, notes = apply_unpadding(model, task="sequence-classification", backend="torch")
    assert "real tokens only" in notes[0]
    with torch.no_grad():  # make the LoRA B matrices non-zero so the adapters matter
        for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters(), strict=True):
            if "lora_B" in n:
                p.normal_(0, 0.1)
                q.copy_(p)
    _assert_same(ref, model.train(), _batch([10, 3, 6]), "seq")


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_joint_masked_lm_loss(family):
    """The MLM objective's model (sharing the patched encoder) gives the same loss and gradients."""
    torch.manual_seed(0)
    ref = transformers.AutoModelForMaskedLM.from_config(_config(family)).train()
    model, _ = apply_unpadding(copy.deepcopy(ref), task="masked-lm", backend="torch")
    model.train()
    batch = _batch([12, 4, 7, 2])
    labels = batch["input_ids"].masked_fill(torch.rand(batch["input_ids"].shape) > 0.3, -100)
    labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    labels[0, 1] = 5  # at least one target
    losses = [m(**batch, labels=labels).loss for m in (ref, model)]
    assert abs(losses[0].item() - losses[1].item()) < 1e-5
    for loss in losses:
        loss.backward()
    grads = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        if p.grad is not None:
            err = (grads[name].grad - p.grad).abs().max().item()
            assert err <= GRAD_RTOL * p.grad.abs().max().item() + ATOL, name


def test_save_pretrained_unchanged_and_loads_in_pipeline(tmp_path):
    from transformers import BertTokenizerFast, pipeline

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij"]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    cfg = _config("bert", num_labels=2)
    cfg.vocab_size, cfg.pad_token_id = 15, 0
    plain = transformers.BertForSequenceClassification(cfg).eval()
    model, _ = apply_unpadding(copy.deepcopy(plain), task="sequence-classification")
    model.train()
    model(**_batch([4, 2], seed=1) | {"input_ids": torch.tensor([[2, 5, 6, 3], [2, 3, 0, 0]])})
    model.save_pretrained(tmp_path / "patched")
    plain.save_pretrained(tmp_path / "plain")
    tok.save_pretrained(tmp_path / "patched")
    saved = (tmp_path / "patched" / "config.json").read_text()
    assert saved == (tmp_path / "plain" / "config.json").read_text()
    from safetensors.torch import load_file

    a, b = (
        load_file(tmp_path / "patched" / "model.safetensors"),
        load_file(tmp_path / "plain" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    clf = pipeline("text-classification", model=str(tmp_path / "patched"), top_k=None)
    scores = {d["label"]: d["score"] for d in clf("a b c d")[0]}
    with torch.no_grad():
        enc = tok("a b c d", return_tensors="pt")
        probs = plain(**enc).logits.softmax(-1)[0]
    assert abs(scores[plain.config.id2label[0]] - probs[0].item()) < 1e-6


def test_unsupported_model_and_off_fall_back_with_one_line():
    from transformers import ElectraConfig, ElectraForSequenceClassification

    electra = ElectraForSequenceClassification(
        ElectraConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            embedding_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )
    forward = electra.forward
    same, notes = apply_unpadding(electra, task="sequence-classification")
    assert same is electra and len(notes) == 1 and "not supported" in notes[0]
    assert electra.forward == forward
    ref, _ = _pair("bert", "seq")
    _, notes = apply_unpadding(ref, task="sequence-classification", mode="off")
    assert "off" in notes[0] and not hasattr(ref.bert, "_sft_unpad_orig_forward")
    with pytest.raises(ValueError):
        apply_unpadding(ref, task="sequence-classification", mode="maybe")


def test_remove_unpadding_restores_the_class_forward():
    _, model = _pair("bert", "seq")
    remove_unpadding(model)
    assert "forward" not in vars(model.bert) and "forward" not in vars(
        model.bert.encoder.layer[0].attention.self
    )


def test_varlen_attention_torch_matches_per_sequence_sdpa():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 17, 3, 3, 9, 2]
    t = sum(lengths)
    q, k, v = (torch.randn(t, 4, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out = varlen_attention(q, k, v, VarlenBatch(cu, max(lengths), "torch", lengths))
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1)
        ).transpose(0, 1)
        torch.testing.assert_close(out[s:e], ref, atol=1e-6, rtol=1e-5)


def test_triton_varlen_kernel_path_matches_padded():
    """The CUDA path (the Triton varlen kernel), run by the interpreter on CPU on tiny shapes."""
    from conftest import interpreter_ready

    if not interpreter_ready():
        pytest.skip(
            "the Triton kernels on CPU need triton and TRITON_INTERPRET=1 set before triton is imported"
        )
    cfg = _config("bert", num_labels=3)
    cfg.hidden_size, cfg.intermediate_size = 64, 64  # head dim 16 for the kernel
    torch.manual_seed(0)
    ref = transformers.BertForTokenClassification(cfg).train()
    model, notes = apply_unpadding(copy.deepcopy(ref), task="token-classification", backend="triton")
    assert "Triton varlen kernel" in notes[0]
    _assert_same(ref, model.train(), _batch([9, 2, 5]), "tok")


def test_stacks_on_the_attention_patch_and_survives_its_removal():
    from sft.patch_attention import patch_model, unpatch_model

    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification(_config("bert", num_labels=3)).train()
    model = copy.deepcopy(ref)
    patch_model(model, backend="torch")  # the order sft.train uses: attention patch, then unpadding
    apply_unpadding(model, task="sequence-classification", backend="torch")
    _assert_same(ref, model.train(), _batch([9, 2, 5]), "seq")
    unpatch_model(model)
    ref.zero_grad(), model.zero_grad()
    _assert_same(ref, model, _batch([9, 2, 5]), "seq")
    batch = _batch([4, 7])
    with torch.no_grad():  # eval: the class's own forward again, exactly
        assert torch.equal(ref.eval()(**batch).logits, model.eval()(**batch).logits)


def test_sft_train_unpads_by_default_and_no_unpad_gives_the_same_losses(tiny_bert, tmp_path, capsys):
    """The recipe applies the patch by default (one line says so) and --no-unpad keeps the padded path;
    with dropout off the per-step losses agree."""
    import json

    from conftest import DEMO

    from sft import load_config, train

    def losses(unpad: bool) -> list[float]:
        cfg = load_config(
            overrides={
                "train": str(DEMO / "train.csv"),
                "model": str(tiny_bert),
                "output": str(tmp_path / f"unpad-{unpad}"),
                "max_steps": 8,
                "batch_size": 16,
                "lr": 1e-3,
                "dropout": 0.0,
                "log_every": 1,
                "unpad": unpad,
                "progress": False,
                "tensorboard": False,
                "plots": False,
            }
        )
        train(cfg)
        log = (tmp_path / f"unpad-{unpad}" / "train_log.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, log) if r["event"] == "train"]

    padded = losses(False)
    assert "unpadding: off" in capsys.readouterr().out
    unpadded = losses(True)
    assert "trains on real tokens only" in capsys.readouterr().out
    assert len(padded) == len(unpadded) == 8
    assert unpadded == pytest.approx(padded, rel=1e-4)
