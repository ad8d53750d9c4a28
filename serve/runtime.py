"""Running a bundle: `tokenizers` for text -> ids, onnxruntime for ids -> logits, numpy for the rest.

`load_model(path)` returns the runner for the bundle's task: TextClassifier (here), TokenClassifier
(serve.tokens) or TextGenerator (serve.generate). Each has `encode(texts, truncate=...)` (on the caller's
thread) and `run(encodings, options)` (on the model thread), which is what the batcher and sft-predict use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .bundle import Bundle, load_bundle, read_manifest, verify_files
from .encoding import Text, TextEncoder
from .errors import ServeError
from .session import OnnxModel

FUNCTIONS = ("softmax", "sigmoid", "none")


def load_model(path, *, verify: bool = True, **kwargs):
    """The runner for the bundle at `path`; the sha256 check runs while onnxruntime builds the session."""
    bundle = read_manifest(path)
    failure: list[BaseException] = []

    def check() -> None:
        try:
            verify_files(bundle)
        except BaseException as e:
            failure.append(e)

    checker = threading.Thread(target=check, daemon=True)
    if verify:
        checker.start()
    try:
        model = runner_class(bundle.task)(bundle, **kwargs)
    finally:
        if verify:
            checker.join()
    if failure:
        raise failure[0]
    return model


def runner_class(task: str):
    if task == "text-classification":
        return TextClassifier
    if task == "token-classification":
        from .tokens import TokenClassifier

        return TokenClassifier
    from .generate import TextGenerator

    return TextGenerator


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


class TextClassifier(BundleRunner):
    """Sequence classification. `predict` returns, per text, labels sorted by score (TEI's /predict shape)."""

    task = "text-classification"

    @property
    def default_function(self) -> str:
        return "sigmoid" if self.bundle.multi_label or len(self.labels) == 1 else "softmax"

    def logits(self, texts: Sequence[Text]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.logits_of(self.encode(texts))

    def logits_of(self, encodings: Sequence[Any]) -> np.ndarray:
        return finite(self.model.run(self.feeds(encodings))[self.model.output_names[0]])

    def scores(self, logits: np.ndarray, function: str | None = None) -> np.ndarray:
        function = function or self.default_function
        if function == "none":
            return logits
        if function == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=-1, keepdims=True)

    def predict(
        self,
        texts: Sequence[Text],
        *,
        raw_scores: bool = False,
        function_to_apply: str | None = None,
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        function = "none" if raw_scores else function_to_apply
        return self.run(self.encode(texts), [{"function": function, "top_k": top_k}] * len(texts))

    def run(self, encodings: Sequence[Any], options: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Per input: every label (or the best `top_k`) with its score, highest first."""
        logits = self.logits_of(encodings)
        by_function = {}
        out = []
        for row, opts in enumerate(options):
            function = opts.get("function") or self.default_function
            if function not in by_function:
                by_function[function] = self.scores(logits, function)
            values = by_function[function][row]
            order = np.argsort(-values, kind="stable")[: opts.get("top_k") or None]
            out.append([{"label": self.labels[i], "score": float(values[i])} for i in order])
        return out
