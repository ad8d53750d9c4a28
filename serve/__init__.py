"""Serving a bundle with onnxruntime and `tokenizers` only (never torch, transformers or optimum).

Public API::

    from serve import load_model, predict_file
    model = load_model("runs/bundle")            # TextClassifier, TokenClassifier or TextGenerator
    model.predict(["my parcel never arrived"])    # [[{"label": "shipping", "score": 0.97}, ...]]
"""

from .bundle import Bundle, load_bundle
from .errors import ServeError
from .predict import predict_file
from .runtime import TextClassifier, load_model

__all__ = ["Bundle", "ServeError", "TextClassifier", "load_bundle", "load_model", "predict_file"]
