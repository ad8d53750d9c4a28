"""Image classification in export: validation images, ONNX vs PyTorch, the eval set's accuracy, manifest.

The two sides are preprocessed independently: PyTorch gets the checkpoint's transformers image processor,
onnxruntime gets serve's numpy preprocessing (serve/images.py) read from the bundle's
preprocessor_config.json, so a difference in either the graph or serve's preprocessing fails the export.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from sft.errors import InputError

from .checkpoint import Checkpoint, train_setting
from .validate import BATCH, SAMPLE_SIZE, OutputDiff, output_diff, worst_per_output

IMAGE_TASK = "image-classification"
PREPROCESSOR_FILE = "preprocessor_config.json"


def check_image_processor(checkpoint: Checkpoint) -> None:
    """serve must be able to redo the checkpoint's preprocessing in numpy; refuse before exporting if not."""
    from serve.errors import ServeError
    from serve.images import ImagePreprocessor

    try:
        ImagePreprocessor.from_dir(checkpoint.tokenizer_dir)
    except ServeError as e:
        raise InputError(f"{e} (serve redoes it in numpy)") from None


def generated_images(count: int = 12, seed: int = 0) -> list[Any]:
    """Random RGB images from 2x2 to 300 pixels a side, square and not, noise and flat colour. (No height
    of 1 or 3: transformers would read such an array's first axis as the channels.)"""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(2, 2), (8, 8), (300, 40), (40, 300), (224, 224), (17, 230)]
    sizes += [tuple(int(v) for v in rng.integers(4, 300, 2)) for _ in range(count - len(sizes))]
    images = []
    for i, (h, w) in enumerate(sizes):
        if i % 3 == 2:
            x = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
        else:
            x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        images.append(Image.fromarray(x))
    return images


def validation_images(eval_set) -> list[Any]:
    """A fixed-seed sample of the eval set's images when given, else generated ones."""
    if eval_set is None:
        return generated_images()
    from sft.vision import open_rgb

    items = random.Random(0).sample(eval_set.items, min(SAMPLE_SIZE, len(eval_set.items)))
    return [open_rgb(it.path, it.where) for it in items]


def compare_images(reference, variant: Path, images: list[Any]) -> list[OutputDiff]:
    """logits of the ONNX model in `variant` (serve's numpy preprocessing) vs PyTorch (transformers')."""
    from serve.images import ImagePreprocessor

    from .runners import OrtSession

    session = OrtSession(variant / "model.onnx")
    preprocess = ImagePreprocessor.from_dir(variant)
    diffs = []
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        got = session.run({"pixel_values": preprocess(chunk)})[session.output_names[0]]
        diffs.append(output_diff("logits", got, reference.logits(reference.encode_images(chunk))))
    return worst_per_output(diffs)


def image_manifest(bundle: Path, checkpoint: Checkpoint) -> dict[str, Any]:
    """What serve needs besides model.onnx and preprocessor_config.json: the task and the labels."""
    from .manifest import BUNDLE_FORMAT, graph_of, versions

    graph = graph_of(bundle / "model.onnx")
    config = checkpoint.config
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return {
        "format": BUNDLE_FORMAT,
        "task": IMAGE_TASK,
        "problem_type": config.get("problem_type") or "single_label_classification",
        "model_type": config.get("model_type"),
        "labels": [id2label[i] for i in sorted(id2label)],
        "preprocessor": PREPROCESSOR_FILE,
        "opset": next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": [i.name for i in graph.graph.input],
        "outputs": [o.name for o in graph.graph.output],
        "source_checkpoint": str(checkpoint.path.resolve()),
        "versions": {**versions(), "pillow": _version("pillow")},
    }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def read_image_eval_set(
    path: str, checkpoint: Checkpoint, label_column: str | None, image_column: str | None
):
    """A folder per class or a (path, label) table, every image checked, before any model loads."""
    from sft.data import label_key
    from sft.vision import check_image, read_image_data

    from .accuracy import EvalSet, _label2id, check_single_label

    check_single_label(checkpoint)
    label_column = label_column or train_setting(checkpoint, "label_column") or "label"
    image_column = image_column or train_setting(checkpoint, "image_column") or "image"
    items = read_image_data(path, image_column=image_column, label_column=label_column, role="eval")
    label2id = _label2id(checkpoint)
    labels = []
    for it in items:
        check_image(it)
        name = label_key(it.label)
        if name not in label2id:
            raise InputError(
                f"{it.where}: label {name!r} is not one of the model's labels ({', '.join(label2id)})"
            )
        labels.append(label2id[name])
    return EvalSet(path, IMAGE_TASK, [str(it.path) for it in items], labels=labels, items=items)


def image_accuracy(eval_set, logits_of_images) -> float:
    """Accuracy over the whole eval set, decoding one batch of images at a time."""
    from sft.vision import open_rgb

    hits = 0
    items = eval_set.items
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        preds = logits_of_images([open_rgb(it.path, it.where) for it in chunk]).argmax(-1)
        hits += int(np.sum(preds == np.asarray(eval_set.labels[start : start + BATCH])))
    return hits / len(items)


def onnx_logits_of_images(variant: Path):
    from serve.images import ImagePreprocessor

    from .runners import OrtSession

    session = OrtSession(variant / "model.onnx")
    preprocess = ImagePreprocessor.from_dir(variant)
    return lambda images: session.run({"pixel_values": preprocess(images)})[session.output_names[0]]
