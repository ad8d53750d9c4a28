"""Image classification, training side (sft/vision.py): data reading and checks, preprocessing, loss, metrics.

Also holds the tiny random ViT / ResNet checkpoints and image folders the other test_vision* files use."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sft.errors import InputError

CLASSES = ("red", "green", "blue")


def write_image_folder(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """root/<class>/*.png: noisy images of varied size whose dominant channel is the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(12, 48)), int(rng.integers(12, 48))
            x = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
            x[..., c] = rng.integers(160, 256, (h, w), dtype=np.uint8)
            Image.fromarray(x).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _labels(n: int):
    names = list(CLASSES)[:n]
    return {
        "num_labels": n,
        "id2label": dict(enumerate(names)),
        "label2id": {k: i for i, k in enumerate(names)},
    }


def write_tiny_vit(directory: Path, num_labels: int = 3) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **_labels(num_labels),
    )
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def write_tiny_resnet(directory: Path, num_labels: int = 3) -> Path:
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **_labels(num_labels)
    )
    ResNetForImageClassification(config).save_pretrained(directory)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(directory)
    return directory


def cfg(train, eval=None, **kw):
    base = dict(
        train=str(train),
        eval=str(eval) if eval else None,
        problem_type="single-label",
        label_column="label",
        label_separator="|",
        threshold=0.5,
        label_smoothing=0.0,
        max_train_samples=None,
        max_eval_samples=None,
        seed=0,
        augment="none",
        image_column="image",
        task="image-classification",
    )
    return SimpleNamespace(**{**base, **kw})


def make_task(config):
    from sft.vision import ImageClassification

    task = ImageClassification(config)
    task.load()
    return task


def test_folder_per_class(tmp_path):
    root = write_image_folder(tmp_path / "train")
    task = make_task(cfg(root))
    assert task.labels.names == sorted(CLASSES)
    assert len(task.train_items) == 18
    assert task.train_y == [task.labels.ids[p.path.parent.name] for p in task.train_items]


def test_csv_and_multilabel_jsonl(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    files = sorted(root.rglob("*.png")) + sorted(root.rglob("*.jpg"))
    lines = ["image,label"] + [f"{f.relative_to(tmp_path)},{f.parent.name}" for f in files]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    task = make_task(cfg(tmp_path / "train.csv"))
    assert [it.path for it in task.train_items] == files
    assert task.labels.names == sorted(CLASSES)

    rows = [
        {"image": str(f), "label": [f.parent.name, "any"] if i % 2 else "solo|" + f.parent.name}
        for i, f in enumerate(files)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_task(cfg(tmp_path / "train.jsonl", problem_type="multi-label"))
    assert set(task.labels.names) == {*CLASSES, "any", "solo"}
    assert all(sum(y) == 2 for y in task.train_y)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "red" / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg"), "0.jpg"),
        (
            lambda root: (root / "red" / "1.png").write_bytes((root / "red" / "1.png").read_bytes()[:60]),
            "1.png",
        ),
        (lambda root: [f.unlink() for f in (root / "green").iterdir()], "green: class folder without image"),
    ],
)
def test_bad_images_and_folders_are_one_line(tmp_path, damage, message):
    root = write_image_folder(tmp_path / "train")
    damage(root)
    with pytest.raises(InputError, match=message) as e:
        make_task(cfg(root))
    assert "\n" not in str(e.value)


def test_bad_table_rows(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="no class folders"):
        make_task(cfg(tmp_path / "flat"))
    (tmp_path / "t.csv").write_text("image,label\nmissing.png,red\n")
    with pytest.raises(InputError, match=r"t.csv line 2: .*missing.png: image file not found"):
        make_task(cfg(tmp_path / "t.csv"))
    with pytest.raises(InputError, match="no column 'path' for --image-column"):
        make_task(cfg(tmp_path / "t.csv", image_column="path"))


def test_pixel_bomb_is_refused(tmp_path, monkeypatch):
    import sft.vision

    root = write_image_folder(tmp_path / "train", per_class=1)
    monkeypatch.setattr(sft.vision, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="pixels > the limit of 100"):
        make_task(cfg(root))


@pytest.mark.parametrize("writer", [write_tiny_vit, write_tiny_resnet])
def test_collate_is_the_image_processor_and_loss_is_cross_entropy(tmp_path, writer):
    from PIL import Image, ImageOps
    from transformers import AutoModelForImageClassification

    model_dir = writer(tmp_path / "model")
    root = write_image_folder(tmp_path / "train")
    task = make_task(cfg(root, root))
    processor = task.load_processor(str(model_dir))
    train_rows, eval_rows = task.encode(processor)
    batch = task.collate(eval_rows[:5], 0, torch.device("cpu"))
    images = [ImageOps.exif_transpose(Image.open(r["path"])).convert("RGB") for r in eval_rows[:5]]
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], expected)

    model = AutoModelForImageClassification.from_pretrained(model_dir, **task.model_kwargs())
    loss = task.loss(model, batch, "torch")
    reference = torch.nn.functional.cross_entropy(model(pixel_values=expected).logits, batch["labels"])
    assert torch.allclose(loss, reference, atol=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    metrics = task.evaluate(model.eval(), eval_rows, 0, torch.device("cpu"), 4, "torch")
    assert metrics["num_examples"] == 18 and len(metrics["confusion_matrix"]) == 3
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_light_augmentation_changes_train_batches_only(tmp_path):
    model_dir = write_tiny_vit(tmp_path / "model")
    root = write_image_folder(tmp_path / "train")
    task = make_task(cfg(root, root, augment="light"))
    train_rows, eval_rows = task.encode(task.load_processor(str(model_dir)))
    cpu = torch.device("cpu")
    a, b = (task.collate(train_rows[:6], 0, cpu)["pixel_values"] for _ in range(2))
    assert a.shape == b.shape == (6, 3, 32, 32) and not torch.equal(a, b)
    e1, e2 = (task.collate(eval_rows[:6], 0, cpu)["pixel_values"] for _ in range(2))
    assert torch.equal(e1, e2)
    with pytest.raises(InputError, match="--augment 'heavy'"):
        make_task(cfg(root, augment="heavy"))


def test_a_few_steps_learn_the_colours(tmp_path):
    """The task's pieces in a plain loop (sft.train.train drives them once the task is registered)."""
    from transformers import AutoModelForImageClassification

    model_dir = write_tiny_resnet(tmp_path / "model")
    root = write_image_folder(tmp_path / "train", per_class=10)
    task = make_task(cfg(root, root))
    train_rows, eval_rows = task.encode(task.load_processor(str(model_dir)))
    model = AutoModelForImageClassification.from_pretrained(model_dir, **task.model_kwargs())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = random.Random(0)
    for _ in range(40):
        batch = task.collate(rng.sample(train_rows, 8), 0, torch.device("cpu"))
        loss = task.loss(model.train(), batch, "torch")
        opt.zero_grad()
        loss.backward()
        opt.step()
    metrics = task.evaluate(model.eval(), eval_rows, 0, torch.device("cpu"), 16, "torch")
    assert metrics["accuracy"] >= 0.9, metrics


def test_lora_on_vit_trains_adapters_and_the_full_head(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification

    from sft.vision import lora_settings

    model_dir = write_tiny_vit(tmp_path / "model")
    root = write_image_folder(tmp_path / "train", per_class=2)
    task = make_task(cfg(root))
    train_rows, _ = task.encode(task.load_processor(str(model_dir)))
    model = AutoModelForImageClassification.from_pretrained(model_dir, **task.model_kwargs())
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **lora_settings(model)))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "query" in n for n in trainable)
    assert any("classifier" in n and "lora" not in n for n in trainable)
    assert not any("intermediate.dense.weight" in n for n in trainable)
    task.loss(peft_model, task.collate(train_rows[:4], 0, torch.device("cpu")), "torch").backward()
    merged = peft_model.merge_and_unload()
    assert type(merged).__name__ == "ViTForImageClassification"

    from transformers import ResNetForImageClassification

    resnet = ResNetForImageClassification.from_pretrained(write_tiny_resnet(tmp_path / "resnet"))
    with pytest.raises(InputError, match="use --freeze all-but-head for CNNs"):
        lora_settings(resnet)


def test_class_weights_reach_the_loss(tmp_path):
    from transformers import AutoModelForImageClassification

    model_dir = write_tiny_resnet(tmp_path / "model")
    root = write_image_folder(tmp_path / "train", per_class=3)
    task = make_task(cfg(root))
    rows, _ = task.encode(task.load_processor(str(model_dir)))
    assert task.label_counts(rows) == [3, 3, 3]
    model = AutoModelForImageClassification.from_pretrained(model_dir, **task.model_kwargs()).eval()
    batch = task.collate(rows, 0, torch.device("cpu"))
    task.class_weight = torch.tensor([1.0, 0.0, 0.0])
    logits = model(pixel_values=batch["pixel_values"]).logits
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=task.class_weight)
    assert torch.allclose(task.loss(model, batch, "torch"), expected, atol=1e-6)


def test_freeze_and_layer_lrs_on_vit_blocks(tmp_path):
    from transformers import ViTForImageClassification

    from sft.strategies import apply_freeze, layer_groups, param_groups

    model = ViTForImageClassification.from_pretrained(write_tiny_vit(tmp_path / "vit"))
    groups = layer_groups(model)
    assert len(groups.layers) == 2 and all(".encoder.layer." in n for layer in groups.layers for n in layer)
    lrs = {g["lr"] for g in param_groups(model, 1e-3, 0.0, layer_lr_decay=0.5)}
    assert lrs == {1e-3, 5e-4, 2.5e-4, 1.25e-4}  # head, block 1, block 0, embeddings
    apply_freeze(model, "all-but-head")
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["classifier.bias", "classifier.weight", "vit.layernorm.bias", "vit.layernorm.weight"]


def test_layer_groups_are_resnet_stages(tmp_path):
    from transformers import ResNetForImageClassification

    from sft.strategies import layer_groups

    model = ResNetForImageClassification.from_pretrained(write_tiny_resnet(tmp_path / "resnet"))
    groups = layer_groups(model)
    for i, layer in enumerate(groups.layers):
        assert all(f".stages.{i}." in n for n in layer), layer
