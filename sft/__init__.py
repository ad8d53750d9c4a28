"""Supervised fine-tuning of Hugging Face models on labeled text.

Public API::

    from sft import TrainConfig, load_config, train
    result = train(load_config(overrides={"train": "data/train.csv", "eval": "data/eval.csv"}))
"""

from .config import TrainConfig, load_config
from .errors import InputError
from .train import TrainResult, train

__all__ = ["InputError", "TrainConfig", "TrainResult", "load_config", "train"]
