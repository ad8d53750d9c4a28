"""Serving a bundle with onnxruntime and `tokenizers` only (never torch, transformers or optimum).

Public API::

    from serve import TextClassifier, predict_file
    clf = TextClassifier.from_bundle("runs/bundle")
    clf.predict(["my parcel never arrived"])  # [[{"label": "shipping", "score": 0.97}, ...]]
"""

from .bundle import Bundle, load_bundle
from .errors import ServeError
from .predict import predict_file
from .runtime import TextClassifier

__all__ = ["Bundle", "ServeError", "TextClassifier", "load_bundle", "predict_file"]
