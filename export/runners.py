"""The two sides of every comparison: the checkpoint in PyTorch and an ONNX file in onnxruntime.

Both take the same numpy feeds, tokenized by the checkpoint's own (transformers) tokenizer, so a
difference is the graph's. Sequence classification is also run through serve's TextClassifier
(validate.py / accuracy.py), which checks serve's tokenizer path as well.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

GENERATION_TASK = "text-generation-with-past"
IMAGE_TASK = "image-classification"


class TorchModel:
    def __init__(self, model_dir: Path, task: str, max_length: int):
        import torch
        from transformers import AutoTokenizer

        from .convert import auto_model_class, quiet

        self.task, self.max_length = task, max_length
        with quiet():
            self.model = auto_model_class(task).from_pretrained(model_dir, dtype=torch.float32).eval()
            if task == IMAGE_TASK:  # pixel_values come from the checkpoint's image processor
                from transformers import AutoImageProcessor

                self.processor = AutoImageProcessor.from_pretrained(model_dir)
                self.accepts = {"pixel_values"}
                return
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:  # common for decoders; padded positions are masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.accepts = set(inspect.signature(self.model.forward).parameters)

    def encode(
        self, texts: Sequence[Any], *, split_into_words: bool = False
    ) -> tuple[dict[str, np.ndarray], Any]:
        """Right-padded numpy feeds (plus position_ids for decoders) and the BatchEncoding (for word_ids)."""
        generation = self.task == GENERATION_TASK
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            is_split_into_words=split_into_words,
            return_tensors="np",
            return_token_type_ids=False if generation else None,
        )
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
        if generation:
            feeds["position_ids"] = position_ids(feeds["attention_mask"])
        return feeds, enc

    def encode_images(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        """RGB PIL images -> {"pixel_values"} through the transformers image processor."""
        pixels = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        return {"pixel_values": np.asarray(pixels, dtype=np.float32)}

    def forward(self, feeds: dict[str, np.ndarray], past: Any = None):
        import torch

        inputs = {k: torch.from_numpy(v) for k, v in feeds.items() if k in self.accepts}
        with torch.inference_mode():
            if self.task == GENERATION_TASK:
                return self.model(**inputs, past_key_values=past, use_cache=True)
            return self.model(**inputs)

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.forward(feeds).logits.float().numpy()


class OrtSession:
    """An onnxruntime session over a model.onnx; decoders get an empty past on the first call."""

    def __init__(self, onnx_file: Path, threads: int | None = None):
        import onnxruntime as ort

        from serve.session import choose_providers, usable_cores

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or usable_cores()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_file), sess_options=opts, providers=choose_providers("auto")
        )
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]

    def run(
        self, feeds: dict[str, np.ndarray], past: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        if self.past_names:
            feeds.update(past if past is not None else self.empty_past(len(feeds["input_ids"])))
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=False))

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        out = {}
        for name in self.past_names:
            meta = self.inputs[name]
            _, heads, _, head_dim = meta.shape
            dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
            out[name] = np.zeros((batch, heads, 0, head_dim), dtype=dtype)
        return out

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.run(feeds)[self.output_names[0]].astype(np.float32)


def position_ids(mask: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... over each row's real tokens (right padding: padded positions just continue)."""
    return np.broadcast_to(np.arange(mask.shape[1], dtype=np.int64), mask.shape).copy()


def present_to_past(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "past_key_values." + k[len("present.") :]: v for k, v in outputs.items() if k.startswith("present.")
    }
