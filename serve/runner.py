"""What every runner shares: the bundle, its tokenizer and its onnxruntime session.

The task runners build on this module (serve.runtime.TextClassifier, serve.tokens.TokenClassifier,
serve.generate.TextGenerator); serve.runtime picks one for a bundle. Imports go one way: runner <- tasks
<- runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .bundle import Bundle, load_bundle
from .encoding import Text, TextEncoder
from .errors import ServeError
from .session import OnnxModel


def finite(logits: np.ndarray) -> np.ndarray:
    if not np.isfinite(logits).all():
        raise FloatingPointError("the model produced NaN or infinite logits")
    return logits


class BundleRunner:
    """What every task shares: the bundle, its tokenizer and its onnxruntime session."""

    task = ""

    def __init__(
        self,
        bundle: Bundle,
        *,
        threads: int | None = None,
        device: str = "auto",
        io_binding: bool | None = None,
        spinning: bool = True,
        truncate_left: bool = False,
        pad_id: int | None = None,
    ):
        if bundle.task != self.task:
            raise ServeError(f"{bundle.path}: a {bundle.task} bundle, not {self.task}")
        self.bundle = bundle
        self.labels = bundle.labels
        self.encoder = TextEncoder(
            bundle.tokenizer_file,
            bundle.max_length,
            bundle.pad_token,
            pad_id=pad_id,
            truncate_left=truncate_left,
        )
        self.model = OnnxModel(
            bundle.model_file, threads=threads, device=device, io_binding=io_binding, spinning=spinning
        )
        self.session = self.model.session
        self.input_names = self.model.input_names

    @classmethod
    def from_bundle(cls, path, *, verify: bool = True, **kwargs):
        return cls(load_bundle(path, verify=verify), **kwargs)

    def encode(self, texts: Sequence[Text], *, truncate: bool = True) -> list:
        return self.encoder.encode(texts, truncate=truncate)

    def feeds(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        arrays = self.encoder.pad(encodings)
        return {name: arrays[name] for name in self.input_names}
