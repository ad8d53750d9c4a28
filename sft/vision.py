"""Image classification (`--task image-classification`), in the shape of the tasks in sft/tasks.py.

Data: a folder per class (`train/<label>/*.png|jpg|...`), or a CSV/TSV/JSON(L)/Parquet table with a path
column (`--image-column`, default "image"; relative paths are read from the table's folder) and a label
column (several labels per image with `--problem-type multi-label`, written "a|b" or as a JSON list).
Every image's header is read and checked before any model loads, so an unreadable image or a bomb is one
line naming the file. Pixels are decoded batch by batch (small data sets stay decoded in memory).

Preprocessing is the checkpoint's own image processor (AutoImageProcessor: resize, crop, rescale,
normalise), which export bundles as preprocessor_config.json and serve redoes in numpy. `--augment light`
adds a random resized crop (scale 0.5-1, aspect 3/4-4/3) and a horizontal flip before it, in training only.
The loss is our cross-entropy kernel (BCE with logits for multi-label), the metrics those of text
classification (accuracy, macro F1, per-class table, confusion matrix).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import LabelMap, label_key
from .errors import InputError
from .tasks import Task, first_n, label_metrics, label_model_kwargs

AUGMENTATIONS = ("none", "light")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 40_000_000
CACHE_PIXELS = 64_000_000  # keep decoded images in memory while their total stays under this


@dataclass
class ImageItem:
    path: Path
    label: Any  # the raw value: a class name, or a list / "a|b" string for multi-label
    where: str


def read_image_data(spec: str, *, image_column: str, label_column: str, role: str) -> list[ImageItem]:
    """A folder per class, or a table of (path, label) rows; nothing is decoded here."""
    path = Path(spec)
    if path.is_dir():
        return _read_folder(path)
    if not path.exists():
        raise InputError(f"{spec}: no such folder or file (--{role})")
    from .data import read_table

    table = read_table(spec, role=role)
    for option, column in (("--image-column", image_column), ("--label-column", label_column)):
        if column not in table.columns:
            raise InputError(
                f"{spec}: no column {column!r} for {option} (columns: {', '.join(map(str, table.columns))})"
            )
    items = []
    for row, where in zip(table.rows, table.where, strict=False):
        name, label = row.get(image_column), row.get(label_column)
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}: empty image path in column {image_column!r}")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise InputError(f"{where}: empty label in column {label_column!r}")
        f = Path(name.strip())
        items.append(ImageItem(f if f.is_absolute() else path.parent / f, label, where))
    return items


def _read_folder(root: Path) -> list[ImageItem]:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: no class folders (expected {root}/<label>/<image files>)")
    items = []
    for d in classes:
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{d}: class folder without image files ({', '.join(IMAGE_SUFFIXES)})")
        items.extend(ImageItem(f, d.name, str(f)) for f in files)
    return items


def check_image(item: ImageItem, max_pixels: int | None = None) -> None:
    """Open the image's header and verify its data, without decoding pixels into memory."""
    from PIL import Image, UnidentifiedImageError

    max_pixels = max_pixels or MAX_IMAGE_PIXELS
    where = item.where if item.where == str(item.path) else f"{item.where}: {item.path}"
    try:
        with Image.open(item.path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(f"{where}: {width}x{height} pixels > the limit of {max_pixels}")
            image.verify()
    except FileNotFoundError:
        raise InputError(f"{where}: image file not found") from None
    except UnidentifiedImageError:
        raise InputError(f"{where}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise InputError(f"{where}: unreadable image ({str(e).splitlines()[0] if str(e) else e!r})") from None


def open_rgb(path: Path, where: str):
    """The decoded image as the image-classification pipeline sees it: EXIF orientation applied, RGB."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{where}: unreadable image ({str(e).splitlines()[0] if str(e) else e!r})") from None


def random_resized_crop(image, rng: random.Random, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box choice (the resize is left to the image processor)."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.crop((left, top, left + w, top + h))
    return image


def augment_light(image, rng: random.Random):
    from PIL import Image

    image = random_resized_crop(image, rng)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


class ImageClassification(Task):
    auto_model = "AutoModelForImageClassification"
    peft_task_type = None  # PEFT has no image task type: LoRA on the encoder, the head trained in full

    def __init__(self, cfg):
        super().__init__(cfg)
        self.problem = cfg.problem_type
        if self.problem not in ("single-label", "multi-label"):
            raise InputError(
                f"--problem-type {self.problem}: image classification is single-label or multi-label"
            )
        self.augment = getattr(cfg, "augment", "light") or "none"
        if self.augment not in AUGMENTATIONS:
            raise InputError(f"--augment {self.augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
        self.image_column = getattr(cfg, "image_column", None) or "image"
        self.default_metric = "f1_macro"
        self.rng = random.Random(cfg.seed)
        self.processor = None
        self._cache: dict[Path, Any] = {}
        self._cached_pixels = 0

    # -- data ---------------------------------------------------------------------------------------
    def load(self) -> None:
        cfg = self.cfg
        self.train_items = self._items(cfg.train, "train")
        self.eval_items = self._items(cfg.eval, "eval") if cfg.eval else None
        if self.problem == "multi-label":
            self.labels = LabelMap.from_labels([n for it in self.train_items for n in self._names(it)])
        else:
            self.labels = LabelMap.from_labels([label_key(it.label) for it in self.train_items])
            if len(self.labels.names) < 2:
                raise InputError(
                    f"{cfg.train}: a single label ({self.labels.names[0]!r}); "
                    f"classification needs at least two"
                )
        self.train_y = self._targets(self.train_items)
        self.eval_y = self._targets(self.eval_items) if self.eval_items else None

    def _items(self, spec: str, role: str) -> list[ImageItem]:
        items = first_n(
            self.cfg,
            role,
            read_image_data(
                spec, image_column=self.image_column, label_column=self.cfg.label_column, role=role
            ),
        )
        for item in items:
            check_image(item)
        return items

    def _names(self, item: ImageItem) -> list[str]:
        value = item.label
        if isinstance(value, str) and value.startswith("["):
            import ast

            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        if isinstance(value, list | tuple):
            return [label_key(v) for v in value]
        return [v.strip() for v in str(value).split(self.cfg.label_separator) if v.strip()]

    def _targets(self, items: list[ImageItem]) -> list:
        column = self.cfg.label_column
        if self.problem == "single-label":
            return self.labels.encode(
                [label_key(it.label) for it in items], [it.where for it in items], column
            )
        out = []
        for it in items:
            hot = [0.0] * len(self.labels.names)
            names = self._names(it)
            for i in self.labels.encode(names, [it.where] * len(names), column):
                hot[i] = 1.0
            out.append(hot)
        return out

    # -- model ----------------------------------------------------------------------------------------
    def load_processor(self, model_path: str):
        """The checkpoint's image processor (what train.py calls the tokenizer for text tasks)."""
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(model_path)
        except (OSError, ValueError, KeyError) as e:
            raise InputError(
                f"--model {model_path}: no usable image processor (preprocessor_config.json): "
                f"{str(e).strip().splitlines()[0]}"
            ) from None

    def model_kwargs(self):
        return label_model_kwargs(self.labels, self.problem)

    def length(self, row: dict[str, Any]) -> int:
        return 1

    # -- batches --------------------------------------------------------------------------------------
    def encode(self, processor):
        """Rows are (image, label) references; pixels are made per batch in `collate`."""
        self.processor = processor

        def rows(items, ys, train):
            return [
                {"path": it.path, "where": it.where, "label": y, "train": train}
                for it, y in zip(items, ys, strict=True)
            ]

        train = rows(self.train_items, self.train_y, True)
        return train, rows(self.eval_items, self.eval_y, False) if self.eval_items else None

    def image(self, path: Path, where: str):
        image = self._cache.get(path)
        if image is None:
            image = open_rgb(path, where)
            pixels = image.size[0] * image.size[1]
            if self._cached_pixels + pixels <= CACHE_PIXELS:
                self._cache[path] = image
                self._cached_pixels += pixels
        return image

    def pixel_values(self, rows, train: bool) -> torch.Tensor:
        images = [self.image(r["path"], r["where"]) for r in rows]
        if train and self.augment == "light":
            images = [augment_light(im, self.rng) for im in images]
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def collate(self, rows, pad_id, device):
        dtype = torch.long if self.problem == "single-label" else torch.float32
        return {
            "pixel_values": self.pixel_values(rows, train=rows[0]["train"]).to(device),
            "labels": torch.tensor([r["label"] for r in rows], dtype=dtype, device=device),
        }

    def loss(self, model, batch, kernels_backend):
        from kernels import cross_entropy

        logits = model(pixel_values=batch["pixel_values"]).logits
        if self.problem == "multi-label":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
        return cross_entropy(
            logits,
            batch["labels"],
            weight=getattr(self, "class_weight", None),  # --class-weights, set by the training loop
            label_smoothing=self.cfg.label_smoothing,
            backend=kernels_backend,
            inplace=False,
        )

    def label_counts(self, rows) -> list[int]:
        """Training examples per label (--class-weights balanced); for multi-label, images carrying it."""
        counts = [0] * len(self.labels.names)
        for r in rows:
            if self.problem == "single-label":
                counts[r["label"]] += 1
            else:
                for i, value in enumerate(r["label"]):
                    counts[i] += int(value > 0.5)
        return counts

    @torch.no_grad()
    def evaluate(self, model, rows, pad_id, device, batch_size, kernels_backend):
        chunks, total = [], 0.0
        for start in range(0, len(rows), batch_size):
            batch = self.collate(rows[start : start + batch_size], pad_id, device)
            logits = model(pixel_values=batch["pixel_values"]).logits.float()
            y = batch["labels"]
            if self.problem == "multi-label":
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            else:
                loss = torch.nn.functional.cross_entropy(logits, y)
            total += loss.item() * len(y)
            chunks.append(logits.cpu())
        logits = torch.cat(chunks)
        y = [r["label"] for r in rows]
        metrics = {"loss": total / len(rows)}
        metrics.update(label_metrics(logits, y, self.problem, self.cfg.threshold, self.labels.names))
        return metrics


def lora_settings(model) -> dict[str, Any]:
    """LoRA for a ViT-like encoder: the attention query/value projections adapted, the head trained in
    full (PEFT's task_type is None for images, so modules_to_save names the head)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [n for n in ("query", "value") if n in names]
    if not targets:
        raise InputError(
            f"--lora-r: {type(model).__name__} has no attention query/value layers to adapt "
            f"(LoRA covers ViT-like models; use --freeze all-but-head for CNNs)"
        )
    head = "classifier" if "classifier" in names else None
    return {"target_modules": targets, "modules_to_save": [head] if head else None}
