"""Session fixtures of the serve tests: a pytest plugin (test modules say pytest_plugins = [...])."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_support import (
    classifier_bundle,
    classifier_checkpoint,
    llama_bundle,
    llama_checkpoint,
    token_bundle,
    token_checkpoint,
)


@pytest.fixture(scope="session")
def cls_bundle(tmp_path_factory) -> Path:
    return classifier_bundle(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def cls_checkpoint(tmp_path_factory) -> Path:
    return classifier_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def ner_bundle(tmp_path_factory) -> Path:
    return token_bundle(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def ner_checkpoint(tmp_path_factory) -> Path:
    return token_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def gen_bundle(tmp_path_factory) -> Path:
    return llama_bundle(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def gen_checkpoint(tmp_path_factory) -> Path:
    return llama_checkpoint(tmp_path_factory.getbasetemp())
