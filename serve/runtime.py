"""Running a bundle: `tokenizers` for text -> ids, onnxruntime for ids -> logits, numpy for the rest.

`load_model(path)` returns the runner for the bundle's task: TextClassifier (here), TokenClassifier
(serve.tokens) or TextGenerator (serve.generate), all built on serve.runner.BundleRunner. Each has
`encode(texts, truncate=...)` (on the caller's thread) and `run(encodings, options)` (on the model
thread), which is what the batcher and sft-predict use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .bundle import read_manifest, verify_files
from .encoding import Text
from .generate import TextGenerator
from .runner import BundleRunner, finite
from .tokens import TokenClassifier

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
        return TokenClassifier
    if task == "question-answering":
        from .qa import QuestionAnswerer

        return QuestionAnswerer
    if task == "text2text-generation-with-past":
        return Seq2SeqRunner
    return TextGenerator


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


class Source:
    """A seq2seq input as the batcher and sft-predict see it: the text and its token ids (the cost)."""

    def __init__(self, text: str, ids: list[int]):
        self.text, self.ids = text, ids


class Seq2SeqRunner:
    """serve.seq2seq.Seq2SeqGenerator in the shape of the other runners: `encode(texts)`, and
    `run(items, options)` for the batcher and sft-predict, one generate() call per distinct params."""

    task = "text2text-generation-with-past"

    def __init__(
        self, bundle, *, threads: int | None = None, max_new_tokens_cap: int = 256, **_ignored: Any
    ) -> None:
        from types import SimpleNamespace

        from .seq2seq import Seq2SeqGenerator
        from .session import CUDA, usable_cores

        self.bundle = bundle
        # load_model checks the sha256 of every file; the generator need not do it again
        self.generator = Seq2SeqGenerator(
            bundle.path, threads=threads, max_new_tokens_cap=max_new_tokens_cap, verify=False
        )
        providers = self.generator.sessions["encoder"].get_providers()
        self.model = SimpleNamespace(
            providers=providers, on_cuda=providers[0] == CUDA, threads=threads or usable_cores()
        )

    def encode(self, texts: Sequence[str], *, truncate: bool = True) -> list[Source]:
        g = self.generator
        encodings = g.tokenizer.encode_batch([g.prefix + t for t in texts])
        return [Source(t, e.ids) for t, e in zip(texts, encodings, strict=True)]

    def run(self, items: Sequence[Source], options: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        groups: dict[int, list[int]] = {}
        for i, opts in enumerate(options):
            groups.setdefault(id(opts["params"]), []).append(i)
        results: list = [None] * len(items)
        for idx in groups.values():
            texts = [items[i].text for i in idx]
            for i, r in zip(idx, self.generator.generate(texts, options[idx[0]]["params"]), strict=True):
                results[i] = r
        return results
