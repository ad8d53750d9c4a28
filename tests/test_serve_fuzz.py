"""Schemathesis over the daemon's own OpenAPI document: generated valid and invalid requests to every route
of each task's server, checked for no 5xx, responses that match the schema, and rejected invalid input.

(schemathesis' own pytest plugin, `from_fixture`, fails under pytest 9, so its strategies are driven with
hypothesis' `given` directly.)"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from serve_support import Daemon

pytest_plugins = ["serve_fixtures"]  # cls_bundle, ner_bundle, gen_bundle and their checkpoints

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
# Invalid requests may also be refused with 413, as TEI does for a batch over --max-client-batch-size.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "413", "422"]}}}
)


def _schema_of_daemon(bundle):
    """A running daemon's OpenAPI schema for the module's tests; no request may hit an internal error."""
    d = Daemon(bundle, "--max-client-batch-size", "16", "--max-new-tokens", "8")
    yield schemathesis.openapi.from_url(d.url + "/openapi.json", config=CONFIG)
    assert "internal error" not in "".join(d.log)
    d.stop()


@pytest.fixture(scope="module")
def cls_api(cls_bundle):
    yield from _schema_of_daemon(cls_bundle)


@pytest.fixture(scope="module")
def ner_api(ner_bundle):
    yield from _schema_of_daemon(ner_bundle)


@pytest.fixture(scope="module")
def gen_api(gen_bundle):
    yield from _schema_of_daemon(gen_bundle)


def _fuzz(schema, mode: str) -> None:
    @given(case=schema.as_strategy(GenerationMode(mode)))
    @FUZZ
    def check(case):
        case.call_and_validate()

    check()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_classification_api(cls_api, mode):
    _fuzz(cls_api, mode)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_token_classification_api(ner_api, mode):
    _fuzz(ner_api, mode)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generation_api(gen_api, mode):
    _fuzz(gen_api, mode)
