"""Supervised fine-tuning of Hugging Face models on labeled data.

Public API::

    from sft import TrainConfig, load_config, train
    result = train(load_config(overrides={"train": "data/train.csv", "eval": "data/eval.csv"}))

The recipe (sft/recipe.py) imports torch and transformers; it is loaded on first use of `train` or
`TrainResult`, so the CLIs answer --help and argument errors without it.
"""

from .config import TrainConfig, load_config
from .errors import InputError

__all__ = ["InputError", "TrainConfig", "TrainResult", "load_config", "train"]


def __getattr__(name: str):
    if name in ("train", "TrainResult"):
        from . import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
