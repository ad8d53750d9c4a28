"""Running a bundle: `tokenizers` for text -> ids, onnxruntime for ids -> logits, numpy for the rest."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import ServeError

Text = str | tuple[str, str]


def make_session(model_file, *, threads: int | None = None, providers: Sequence[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    available = ort.get_available_providers()
    wanted = list(providers) if providers else [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                                if p in available]
    try:
        return ort.InferenceSession(str(model_file), sess_options=opts, providers=wanted)
    except Exception as e:  # onnxruntime raises its own exception types for a bad model file
        raise ServeError(f"{model_file}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None


class TextClassifier:
    """Sequence classification over a bundle. `predict` returns, per text, all labels sorted by score."""

    def __init__(self, bundle: Bundle, *, threads: int | None = None, providers: Sequence[str] | None = None):
        from tokenizers import Tokenizer

        self.bundle = bundle
        self.labels = bundle.labels
        try:
            self.tokenizer = Tokenizer.from_file(str(bundle.tokenizer_file))
        except Exception as e:
            raise ServeError(f"{bundle.tokenizer_file}: cannot load tokenizer ({e})") from None
        pad_token = bundle.manifest.get("pad_token", "[PAD]")
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.tokenizer.enable_truncation(max_length=bundle.max_length)
        self.tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
        self.session = make_session(bundle.model_file, threads=threads, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.multi_label = bundle.manifest.get("problem_type") == "multi_label_classification"

    @classmethod
    def from_bundle(cls, path, **kwargs) -> "TextClassifier":
        return cls(load_bundle(path), **kwargs)

    def encode(self, texts: Sequence[Text]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.input_names}

    def logits(self, texts: Sequence[Text]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.session.run(None, self.encode(texts))[0]

    def scores(self, logits: np.ndarray) -> np.ndarray:
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=-1, keepdims=True)

    def predict(self, texts: Sequence[Text], *, raw_scores: bool = False) -> list[list[dict[str, Any]]]:
        """For each text, every label with its score, highest first (TEI's /predict shape)."""
        logits = self.logits(texts)
        values = logits if raw_scores else self.scores(logits)
        out = []
        for row in values:
            order = np.argsort(-row, kind="stable")
            out.append([{"label": self.labels[i], "score": float(row[i])} for i in order])
        return out
