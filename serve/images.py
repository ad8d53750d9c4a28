"""Images for image-classification bundles, without torch or transformers: decoding with Pillow under
size limits, and the checkpoint's image processor (preprocessor_config.json) redone in numpy.

The numbers are the transformers image processor's, step for step: EXIF orientation and RGB conversion
(what the image-classification pipeline's `load_image` does), a Pillow resize with the processor's resample
filter, a center crop, `x.astype(float64) * rescale_factor` cast to float32, then `(x - mean) / std` in
float32. tests/test_vision_serve.py holds that to the processor on real and random images.

Limits: the encoded size (bytes) and the pixel count read from the header before any pixel is decoded, so
a decompression bomb is refused (413) instead of filling memory; an unreadable image is a 422.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ServeError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # e.g. 8000 x 5000; Pillow's own bomb limit is about twice that
PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# transformers' PILImageResampling values are Pillow's
RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}
# Processors whose preprocess is: (resize) -> (center crop) -> (rescale) -> (normalize), in that order.
SIZE_HW_PROCESSORS = {
    "ViTImageProcessor",
    "DeiTImageProcessor",
    "SwinImageProcessor",
    "EfficientNetImageProcessor",
}
SHORTEST_EDGE_PROCESSORS = {
    "BitImageProcessor",
    "MobileNetV1ImageProcessor",
    "MobileNetV2ImageProcessor",
}
CROP_PCT_PROCESSORS = {"ConvNextImageProcessor"}
SUPPORTED_PROCESSORS = SIZE_HW_PROCESSORS | SHORTEST_EDGE_PROCESSORS | CROP_PCT_PROCESSORS


class ImageError(ServeError):
    """An image that cannot be used; `status` is the HTTP code (422 unreadable, 413 too large)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS


def decode_image(data: bytes, where: str = "image", limits: ImageLimits = ImageLimits()):
    """Encoded bytes -> an RGB PIL image, EXIF orientation applied; ImageError names `where`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise ImageError(f"{where}: {len(data)} bytes > the limit of {limits.max_bytes}", status=413)
    if not data:
        raise ImageError(f"{where}: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > limits.max_pixels:
                raise ImageError(
                    f"{where}: {width}x{height} = {width * height} pixels > the limit of {limits.max_pixels}",
                    status=413,
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{where}: {e}", status=413) from None
    except UnidentifiedImageError:
        raise ImageError(f"{where}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        raise ImageError(
            f"{where}: unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None


def read_image_file(path: str | Path, limits: ImageLimits = ImageLimits()):
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageError(f"{path}: {size} bytes > the limit of {limits.max_bytes}", status=413)
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read it ({e.strerror})") from None
    return decode_image(data, str(path), limits)


def decode_base64_image(text: str, where: str = "inputs", limits: ImageLimits = ImageLimits()):
    """A base64 string (optionally a data: URL) -> an RGB PIL image."""
    if not isinstance(text, str):
        raise ImageError(f"{where}: expected a base64-encoded image string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > limits.max_bytes * 4 // 3 + 4:
        raise ImageError(f"{where}: the encoded image is larger than {limits.max_bytes} bytes", status=413)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{where}: not valid base64") from None
    return decode_image(data, where, limits)


class ImagePreprocessor:
    """The checkpoint's image processor (preprocessor_config.json) in numpy: images -> pixel_values."""

    def __init__(self, config: dict[str, Any], where: str = PREPROCESSOR_FILE):
        kind = config.get("image_processor_type")
        if kind not in SUPPORTED_PROCESSORS:
            raise ServeError(
                f"{where}: image_processor_type {kind!r} is not supported "
                f"(supported: {', '.join(sorted(SUPPORTED_PROCESSORS))})"
            )
        self.kind = kind
        self.do_resize = config.get("do_resize", True)
        self.size = config.get("size") or {}
        self.resample = int(config.get("resample", 2))
        if self.resample not in RESAMPLE_NAMES:
            raise ServeError(f"{where}: resample {self.resample} is not a Pillow filter")
        self.crop_pct = config.get("crop_pct")
        self.do_center_crop = bool(config.get("do_center_crop", False)) and kind not in CROP_PCT_PROCESSORS
        crop = config.get("crop_size") or {}
        self.crop_size = (crop.get("height"), crop.get("width")) if self.do_center_crop else None
        self.do_rescale = config.get("do_rescale", True)
        self.rescale_factor = float(config.get("rescale_factor", 1 / 255))
        # EfficientNet: rescale to [-1, 1] (x * factor - 1), and a second division by std (include_top)
        self.rescale_offset = kind == "EfficientNetImageProcessor" and bool(
            config.get("rescale_offset", False)
        )
        self.include_top = kind == "EfficientNetImageProcessor" and bool(config.get("include_top", True))
        self.do_normalize = config.get("do_normalize", True)
        self.mean = np.asarray(config.get("image_mean", [0.5, 0.5, 0.5]), dtype=np.float32)
        self.std = np.asarray(config.get("image_std", [0.5, 0.5, 0.5]), dtype=np.float32)
        if self.do_resize and not ("height" in self.size or "shortest_edge" in self.size):
            raise ServeError(f"{where}: size {self.size} has neither height/width nor shortest_edge")

    @classmethod
    def from_dir(cls, directory: str | Path) -> ImagePreprocessor:
        f = Path(directory) / PREPROCESSOR_FILE
        try:
            config = json.loads(f.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ServeError(
                f"{directory}: no {PREPROCESSOR_FILE} (the image processor's settings)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServeError(f"{f}: malformed JSON ({e})") from None
        if not isinstance(config, dict):
            raise ServeError(f"{f}: expected a JSON object")
        return cls(config, str(f))

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of pixel_values, when fixed by the config."""
        if self.crop_size:
            return self.crop_size
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        if self.kind in CROP_PCT_PROCESSORS:
            edge = self.size["shortest_edge"]
            return edge, edge
        return None

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        """RGB PIL images -> float32 pixel_values (N, 3, H, W)."""
        return np.stack([self.one(im) for im in images]) if images else np.zeros((0, 3, 1, 1), np.float32)

    def one(self, image) -> np.ndarray:
        from PIL import Image

        resample = Image.Resampling[RESAMPLE_NAMES[self.resample]]
        if image.mode != "RGB":
            image = image.convert("RGB")
        crop = self.crop_size
        if self.do_resize:
            if "height" in self.size:
                image = image.resize((self.size["width"], self.size["height"]), resample=resample)
            elif self.kind in CROP_PCT_PROCESSORS and self.size["shortest_edge"] >= 384:
                edge = self.size["shortest_edge"]
                image = image.resize((edge, edge), resample=resample)
            else:
                edge = self.size["shortest_edge"]
                if self.kind in CROP_PCT_PROCESSORS:
                    crop = (edge, edge)
                    edge = int(edge / (self.crop_pct if self.crop_pct is not None else 224 / 256))
                image = image.resize(_shortest_edge_size(image.size, edge), resample=resample)
        x = np.asarray(image)  # (H, W, 3) uint8
        if crop:
            x = center_crop(x, *crop)
        x = x.astype(np.float32) if not self.do_rescale else (x.astype(np.float64) * self.rescale_factor)
        x = x.astype(np.float32)
        if self.do_rescale and self.rescale_offset:
            x = x - np.float32(1)
        if self.do_normalize:
            x = (x - self.mean) / self.std
        if self.include_top:
            x = x / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def _shortest_edge_size(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """(width, height) with the shorter side `edge`, as transformers' get_resize_output_image_size."""
    width, height = size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = edge, int(edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop on an (H, W, C) array, zero-padding an image smaller than the crop."""
    h, w = x.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return x[top : top + height, left : left + width]
    new_h, new_w = max(height, h), max(width, w)
    padded = np.zeros((new_h, new_w, *x.shape[2:]), dtype=x.dtype)
    top_pad, left_pad = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
    padded[top_pad : top_pad + h, left_pad : left_pad + w] = x
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


def list_images(path: str | Path) -> list[Path]:
    """A folder's image files (recursively, sorted), or the paths listed one a line in a text file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ServeError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not path.is_file():
        raise ServeError(f"{path}: no such folder or file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [path]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ServeError(f"{path}: neither an image nor a UTF-8 list of image paths") from None
    files = []
    for n, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        f = Path(name) if Path(name).is_absolute() else path.parent / name
        if not f.is_file():
            raise ServeError(f"{path} line {n}: {name}: no such file")
        files.append(f)
    if not files:
        raise ServeError(f"{path}: lists no image paths")
    return files


def is_image_bundle(path: str | Path) -> bool:
    """Whether manifest.json names the image-classification task (anything unreadable: False, so the
    general bundle reader reports it)."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("task") == ImageClassifier.task


def read_image_bundle(path: str | Path, *, verify: bool = True):
    """An image-classification bundle's manifest, checked: the task, the labels, the files and their sha256.
    (serve/bundle.py's reader covers the text tasks, whose bundles carry tokenizer.json and max_length.)"""
    from .bundle import SUPPORTED_FORMAT, Bundle, verify_files

    path = Path(path)
    where = path / "manifest.json"
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServeError(
            f"{path}: not a bundle (no manifest.json; make one with sft-export --onnx)"
        ) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServeError(f"{where}: unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("task") != ImageClassifier.task:
        raise ServeError(f"{where}: not an image-classification bundle")
    if manifest.get("format") != SUPPORTED_FORMAT:
        raise ServeError(f"{where}: bundle format {manifest.get('format')!r} is not supported")
    labels = manifest.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ServeError(f"{where}: field 'labels' must be a non-empty list of strings")
    sha = manifest.get("sha256")
    if not isinstance(sha, dict):
        raise ServeError(f"{where}: field 'sha256' must map file names to hex digests")
    for name in {*sha, "model.onnx", PREPROCESSOR_FILE}:
        if not (path / name).is_file():
            raise ServeError(f"{path / name}: missing from the bundle")
    bundle = Bundle(path, manifest)
    if verify:
        verify_files(bundle)
    return bundle


class ImageClassifier:
    """An image-classification bundle: model.onnx + preprocessor_config.json + the manifest's labels.

    `predict` gives, per image, labels sorted by score: the Inference API's image-classification shape."""

    task = "image-classification"

    def __init__(
        self, bundle_dir: str | Path, *, threads: int | None = None, device: str = "auto", verify: bool = True
    ):
        from .session import OnnxModel

        self.bundle = read_image_bundle(bundle_dir, verify=verify)
        self.labels = list(self.bundle.labels)
        self.preprocess = ImagePreprocessor.from_dir(bundle_dir)
        self.model = OnnxModel(Path(bundle_dir) / "model.onnx", threads=threads, device=device)

    @property
    def default_function(self) -> str:
        return "sigmoid" if self.bundle.multi_label or len(self.labels) == 1 else "softmax"

    def logits(self, images: Sequence[Any]) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = self.model.run({"pixel_values": self.preprocess(images)})[self.model.output_names[0]]
        return np.asarray(out, dtype=np.float32)

    def predict(
        self, images: Sequence[Any], *, top_k: int | None = 5, function_to_apply: str | None = None
    ) -> list[list[dict[str, Any]]]:
        return scores_to_labels(
            self.logits(images), self.labels, function_to_apply or self.default_function, top_k
        )

    def run(self, images: Sequence[Any], options: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """The batcher's call: one model call for images of several requests, each with its own options
        ({"top_k", "function"})."""
        logits = self.logits(images)
        return [
            scores_to_labels(
                logits[i : i + 1],
                self.labels,
                opts.get("function") or self.default_function,
                opts.get("top_k"),
            )[0]
            for i, opts in enumerate(options)
        ]


def scores_to_labels(
    logits: np.ndarray, labels: Sequence[str], function: str, top_k: int | None
) -> list[list[dict[str, Any]]]:
    if function == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    elif function == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = e / e.sum(axis=-1, keepdims=True)
    else:
        scores = logits
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[: top_k or None]
        out.append([{"label": labels[i], "score": float(row[i])} for i in order])
    return out


FUNCTIONS = ("softmax", "sigmoid", "none")
DEFAULT_TOP_K = 5  # the Inference API's image-classification default


@dataclass
class ImageRequest:
    images: list[Any]
    options: list[dict[str, Any]]
    single: bool  # answer with one list of labels, not a list of lists


def parse_image_request(
    content_type: str | None, body: bytes, limits: ImageLimits = ImageLimits(), max_images: int = 64
) -> ImageRequest:
    """`POST /predict` for images, in the Inference API's shapes: the raw image as the body (Content-Type
    image/* or application/octet-stream), or JSON {"inputs": base64 | [base64, ...], "parameters": {"top_k",
    "function_to_apply"}}. ImageError carries the HTTP status (413 too large, 415, 422)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        image = decode_image(body, "request body", limits)
        return ImageRequest([image], [{"top_k": DEFAULT_TOP_K, "function": None}], True)
    if kind not in ("", "application/json"):
        raise ImageError(f"Content-Type {kind}: send the image bytes (image/*) or JSON with base64", 415)
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImageError(f"request body: not JSON ({e})") from None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    single = isinstance(inputs, str)
    items = [inputs] if single else inputs
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise ImageError("inputs: expected a base64 image string or a non-empty list of them")
    if len(items) > max_images:
        raise ImageError(f"inputs: {len(items)} images > the limit of {max_images} per request", 413)
    options = _image_parameters(payload.get("parameters"))
    images = [
        decode_base64_image(x, "inputs" if single else f"inputs[{i}]", limits) for i, x in enumerate(items)
    ]
    return ImageRequest(images, [options] * len(images), single)


def _image_parameters(params: Any) -> dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ImageError("parameters: expected an object")
    top_k = params.get("top_k", DEFAULT_TOP_K)
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ImageError(f"parameters.top_k: expected a positive integer, got {top_k!r}")
    function = params.get("function_to_apply")
    if function is not None and function not in FUNCTIONS:
        raise ImageError(f"parameters.function_to_apply: choose one of {', '.join(FUNCTIONS)}")
    return {"top_k": top_k, "function": function}


def predict_images(
    classifier: ImageClassifier,
    source: str | Path,
    output: str | Path,
    *,
    batch_size: int = 32,
    top_k: int | None = DEFAULT_TOP_K,
    limits: ImageLimits = ImageLimits(),
) -> int:
    """sft-predict over a folder of images or a file of paths: one JSON line per image
    ({"index", "path", "predictions"}), written to a temporary file renamed into place. An unreadable
    image stops it with one line naming the file (nothing is left half-written)."""
    import os
    import tempfile

    files = list_images(source)
    output = Path(output)
    if not output.parent.is_dir():
        raise ServeError(f"{output}: its folder does not exist")
    fd, tmp = tempfile.mkstemp(dir=output.parent if str(output.parent) else ".", prefix=f".{output.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                images = [read_image_file(f, limits) for f in chunk]
                for i, (f, labels) in enumerate(
                    zip(chunk, classifier.predict(images, top_k=top_k), strict=True)
                ):
                    row = {"index": start + i, "path": str(f), "predictions": labels}
                    out.write(json.dumps(row) + "\n")
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(files)
