"""Serving a bundle with onnxruntime and `tokenizers` only (never torch, transformers or optimum).

Public API::

    from serve import load_model, predict_file
    model = load_model("runs/bundle")            # TextClassifier, TokenClassifier or TextGenerator
    model.predict(["my parcel never arrived"])    # [[{"label": "shipping", "score": 0.97}, ...]]

The names load on first use, so `sft-serve --help` does not pay for numpy and onnxruntime.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Bundle": "bundle",
    "load_bundle": "bundle",
    "ServeError": "errors",
    "predict_file": "predict",
    "TextClassifier": "runtime",
    "load_model": "runtime",
}

__all__ = ["Bundle", "ServeError", "TextClassifier", "load_bundle", "load_model", "predict_file"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
