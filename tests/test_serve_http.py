"""The daemon over real HTTP on loopback: routes, errors, limits, auth, overload, SIGTERM, HF client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time

import httpx
import pytest
from conftest import BIN, assert_clean_error, run_cli
from serve_support import CLS_LABELS, Daemon, demo_texts

from serve import load_model
from serve.generate import GenerationParams

pytest_plugins = ["serve_fixtures"]  # cls_bundle, ner_bundle, gen_bundle and their checkpoints


@pytest.fixture(scope="module")
def daemon(cls_bundle):
    d = Daemon(cls_bundle, "--max-client-batch-size", "8", "--max-body-bytes", "20000")
    yield d
    d.stop()


def _same(got, expected) -> bool:
    """Equal JSON results, scores compared to 1e-5."""
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(_same, got, expected))
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(_same(got[k], expected[k]) for k in got)
        )
    if isinstance(expected, float):
        return abs(got - expected) < 1e-5
    return got == expected


@pytest.fixture
def online_hub(monkeypatch):
    """conftest sets HF_HUB_OFFLINE, which makes InferenceClient refuse even loopback URLs."""
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield
    monkeypatch.undo()
    reset_sessions()


def _post(url, payload=None, *, raw=None, headers=None):
    r = httpx.post(url, content=raw if raw is not None else json.dumps(payload), headers=headers, timeout=30)
    is_json = r.headers.get("content-type", "").startswith("application/json")
    return r.status_code, r.json() if is_json else r.text


def test_predict_routes(daemon, cls_bundle):
    base = daemon.url
    texts = demo_texts()[:3]
    expected = load_model(cls_bundle).predict(texts)
    status, one = _post(base + "/predict", {"inputs": texts[0]})
    assert status == 200 and _same(one, expected[0])
    status, many = _post(base + "/predict", {"inputs": texts})
    assert status == 200 and _same(many, expected)
    status, raw = _post(base + "/predict", {"inputs": texts[0], "raw_scores": True})
    assert status == 200 and raw[0]["label"] == one[0]["label"]
    assert sum(p["score"] for p in raw) != pytest.approx(1)
    body = {"inputs": [texts[0], [texts[1], texts[2]]], "parameters": {"top_k": 1}}
    status, top = _post(base + "/predict", body)
    pair = load_model(cls_bundle).predict([(texts[1], texts[2])])[0][0]
    assert status == 200 and top[0] == [one[0]] and top[1][0]["label"] == pair["label"]
    status, hf = _post(base + "/", {"inputs": texts[0], "parameters": {"function_to_apply": "sigmoid"}})
    assert status == 200 and len(hf) == 1 and hf[0][0]["label"] == one[0]["label"] and hf[0][0]["score"] < 1


def test_tokenize_info_health_metrics_openapi(daemon, cls_bundle):
    base = daemon.url
    status, tokens = _post(base + "/tokenize", {"inputs": "Refund please!"})
    assert status == 200 and tokens[0][0] == {
        "id": 2,
        "text": "[CLS]",
        "special": True,
        "start": None,
        "stop": None,
    }
    assert [t["text"] for t in tokens[0][1:-1]] == ["Refund", "please", "!"]
    assert all("Refund please!"[t["start"] : t["stop"]] == t["text"] for t in tokens[0][1:-1])
    status, plain = _post(base + "/tokenize", {"inputs": ["a b"], "add_special_tokens": False})
    assert status == 200 and [t["text"] for t in plain[0]] == ["a", "b"]

    assert httpx.get(base + "/health").json() == {"status": "ok"}
    info = httpx.get(base + "/info").json()
    assert (info["labels"], info["max_input_length"], info["max_client_batch_size"]) == (CLS_LABELS, 32, 8)
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["model_type"]["classifier"]["id2label"]["1"] == "shipping"

    before = _metric(base, 'sft_serve_requests_total{route="/predict",status="200"}')
    for _ in range(3):
        _post(base + "/predict", {"inputs": "hello"})
    text = httpx.get(base + "/metrics").text
    assert _metric(base, 'sft_serve_requests_total{route="/predict",status="200"}') == before + 3
    for family in (
        "sft_serve_request_duration_seconds_bucket",
        "sft_serve_queue_duration_seconds_count",
        "sft_serve_batch_size_bucket",
        "sft_serve_inference_duration_seconds_sum",
        "sft_serve_queue_size",
    ):
        assert family in text, family

    schema = httpx.get(base + "/openapi.json").json()
    assert schema["openapi"].startswith("3.") and {"/predict", "/tokenize", "/health", "/"} <= set(
        schema["paths"]
    )
    assert "/generate" not in schema["paths"]


def _metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(
    "payload,status,error_type,fragment",
    [
        (b"{not json", 400, "validation", "not valid JSON"),
        (b'{"inputs": NaN}', 400, "validation", "not valid JSON"),
        ({"inputs": []}, 400, "empty", "empty"),
        ({"inputs": ""}, 422, "validation", "inputs: must not be empty"),
        ({"inputs": [1, 2]}, 422, "validation", "inputs[0]: must be a string or a list, not an integer"),
        ({"inputs": [["a"]]}, 422, "validation", "inputs[0]: expected `array` of length >= 2"),
        ({"text": "x"}, 422, "validation", "inputs: required"),
        ([1], 422, "validation", "body: must be an object"),
        ({"inputs": "x", "parameters": {"top_k": 0}}, 422, "validation", "parameters.top_k: must be >= 1"),
        (
            {"inputs": "x", "parameters": {"function_to_apply": "relu"}},
            422,
            "validation",
            "function_to_apply",
        ),
        ({"inputs": ["x"] * 9}, 413, "validation", "more than the limit of 8 inputs"),
        ({"inputs": "x" * 30000}, 413, "validation", "exceeds the limit of 20000"),
        ({"inputs": "parcel " * 40, "truncate": False}, 413, "validation", "inputs[0] has 42 tokens"),
        ({"inputs": "\ud800 lone surrogate"}, 400, "validation", "not valid JSON"),  # not Unicode
    ],
)
def test_bad_requests_get_clean_errors(daemon, payload, status, error_type, fragment):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    got, body = _post(daemon.url + "/predict", raw=raw)
    assert (got, body["error_type"]) == (status, error_type), body
    assert fragment in body["error"]


def test_http_level_errors(daemon):
    assert httpx.get(daemon.url + "/nope").status_code == 404
    r = httpx.get(daemon.url + "/predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    with socket.create_connection(("127.0.0.1", int(daemon.url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.1 400")
    r = httpx.post(daemon.url + "/predict", content=b'{"inputs": "x"}', headers={"Expect": "100-continue"})
    assert r.status_code == 200
    assert _post(daemon.url + "/generate", {"inputs": "x"})[0] == 404  # classification bundle: no /generate


def test_huggingface_inference_client(daemon, cls_bundle, online_hub):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=daemon.url)
    text = demo_texts()[0]
    out = client.text_classification(text, top_k=2)
    expected = load_model(cls_bundle).predict([text])[0]
    assert [o.label for o in out] == [e["label"] for e in expected[:2]]
    assert [o.score for o in out] == pytest.approx([e["score"] for e in expected[:2]], abs=1e-6)
    sig = client.text_classification(text, function_to_apply="sigmoid")
    assert sum(o.score for o in sig) > 1.0  # sigmoid scores do not sum to 1 the way softmax ones do


def test_bearer_token_and_environment_configuration(cls_bundle):
    d = Daemon(cls_bundle, env={"SFT_SERVE_API_KEY": "s3cret", "SFT_SERVE_MAX_CLIENT_BATCH_SIZE": "2"})
    try:
        assert _post(d.url + "/predict", {"inputs": "x"})[0] == 401
        assert _post(d.url + "/predict", {"inputs": "x"}, headers={"Authorization": "Bearer wrong"})[0] == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert _post(d.url + "/predict", {"inputs": "x"}, headers=auth)[0] == 200
        assert _post(d.url + "/predict", {"inputs": ["a", "b", "c"]}, headers=auth)[0] == 413
        assert httpx.get(d.url + "/health").status_code == 200  # probes need no token
        assert httpx.get(d.url + "/metrics").status_code == 401
    finally:
        d.stop()


def test_help_lists_environment_variables():
    env = {**os.environ, "COLUMNS": "250"}
    import subprocess

    text = subprocess.run([str(BIN / "sft-serve"), "--help"], capture_output=True, text=True, env=env).stdout
    for var in (
        "SFT_SERVE_PORT",
        "SFT_SERVE_HOST",
        "SFT_SERVE_MAX_BATCH_TOKENS",
        "SFT_SERVE_MAX_QUEUE_DELAY_MS",
        "SFT_SERVE_API_KEY",
        "SFT_SERVE_MAX_CONCURRENT_REQUESTS",
    ):
        assert var in text, var
    assert "--max-batch-size" in text and "--max-wait-ms" in text  # the old names still work


def test_port_in_use_is_a_clean_error(cls_bundle):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_clean_error(
            run_cli("sft-serve", str(cls_bundle), "--port", str(port)),
            f"--port {port}",
            "cannot listen there",
        )


async def _fire(url: str, payloads: list, headers=None) -> list:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=len(payloads))) as client:
        return await asyncio.gather(*(client.post(url, json=p, headers=headers) for p in payloads))


def test_overload_gives_429_and_loses_no_accepted_request(cls_bundle):
    # A long queue delay keeps accepted requests in flight, so the burst meets a full server.
    d = Daemon(
        cls_bundle,
        "--max-concurrent-requests",
        "4",
        "--max-queue-delay-ms",
        "700",
        "--max-batch-requests",
        "1000",
    )
    try:
        texts = [f"message number {i} about my parcel" for i in range(24)]
        responses = asyncio.run(_fire(d.url + "/predict", [{"inputs": t} for t in texts]))
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 429} and codes.count(200) >= 4, codes
        assert all(r.json()["error_type"] == "overloaded" for r in responses if r.status_code == 429)
        expected = load_model(cls_bundle).predict(texts)
        for text, r, e in zip(texts, responses, expected, strict=False):
            if r.status_code == 200:
                assert [p["label"] for p in r.json()] == [p["label"] for p in e], text
        assert _metric(d.url, 'sft_serve_requests_total{route="/predict",status="429"}') == codes.count(429)
        assert _post(d.url + "/predict", {"inputs": "after the burst"})[0] == 200
    finally:
        d.stop()


def test_sigterm_drains_in_flight_requests(cls_bundle):
    d = Daemon(cls_bundle, "--max-queue-delay-ms", "800", "--max-batch-requests", "1000")

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            pending = [
                asyncio.create_task(client.post(d.url + "/predict", json={"inputs": f"text {i}"}))
                for i in range(6)
            ]
            await asyncio.sleep(0.3)  # the requests are queued, waiting for their batch
            d.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.ConnectError):
                await client.get(d.url + "/health")  # no longer accepting
            return await asyncio.gather(*pending)

    try:
        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 6
        assert all(len(r.json()) == 3 for r in responses)
        assert d.proc.wait(timeout=20) == 0
        time.sleep(0.1)
        assert "sft-serve: stopped" in "".join(d.log)
    finally:
        d.stop()


def test_token_classification_daemon(ner_bundle, online_hub):
    from huggingface_hub import InferenceClient

    d = Daemon(ner_bundle)
    try:
        text = "Alice moved from Paris to Berlin, unbelievably quickly!"
        expected = load_model(ner_bundle).predict([text])[0]
        status, spans = _post(d.url + "/predict", {"inputs": text})
        assert status == 200 and _same(spans, expected) and spans
        body = {"inputs": [text], "parameters": {"aggregation_strategy": "first"}}
        status, words = _post(d.url + "/predict", body)
        assert status == 200 and _same(
            words, load_model(ner_bundle).predict([text], aggregation_strategy="first")
        )
        out = InferenceClient(base_url=d.url).token_classification(text)
        assert [(e.entity_group, e.start, e.end) for e in out] == [
            (e["entity_group"], e["start"], e["end"]) for e in expected
        ]
    finally:
        d.stop()


def test_generation_daemon(gen_bundle, online_hub):
    from huggingface_hub import InferenceClient

    d = Daemon(gen_bundle, "--max-new-tokens", "16")
    try:
        prompt = "my parcel is late"
        expected = load_model(gen_bundle).generate([prompt], GenerationParams(max_new_tokens=10))[0]
        status, out = _post(
            d.url + "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 10, "details": True}}
        )
        assert status == 200 and out["generated_text"] == expected["generated_text"]
        assert out["details"]["finish_reason"] == "length" and out["details"]["generated_tokens"] == 10
        full = _post(
            d.url + "/generate",
            {"inputs": prompt, "parameters": {"max_new_tokens": 10, "return_full_text": True}},
        )[1]
        assert full["generated_text"] == prompt + expected["generated_text"]
        assert _post(d.url + "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 17}})[0] == 422
        body = {"inputs": prompt, "parameters": {"repetition_penalty": 1.3}}
        status, err = _post(d.url + "/generate", body)
        assert status == 422 and "repetition_penalty" in err["error"]
        seeded = {"inputs": prompt, "parameters": {"do_sample": True, "seed": 3, "max_new_tokens": 8}}
        assert _post(d.url + "/generate", seeded)[1] == _post(d.url + "/generate", seeded)[1]
        client = InferenceClient(base_url=d.url)
        assert client.text_generation(prompt, max_new_tokens=10) == expected["generated_text"]
        detailed = client.text_generation(prompt, max_new_tokens=10, details=True)
        assert detailed.generated_text == expected["generated_text"]
        assert detailed.details.generated_tokens == 10
        assert [t.id for t in detailed.details.tokens] == expected["token_ids"]
        last3 = _post(
            d.url + "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 4, "truncate": 3}}
        )[1]
        ids = load_model(gen_bundle).encode([prompt])[0]
        ids.truncate(3, direction="left")
        assert (
            last3["generated_text"]
            == load_model(gen_bundle).run([ids], [{"params": GenerationParams(4)}])[0]["generated_text"]
        )
        assert _post(d.url + "/generate", {"inputs": prompt, "stream": True})[0] == 422
        assert _post(d.url + "/predict", {"inputs": "x"})[0] == 404
        assert "/generate" in httpx.get(d.url + "/openapi.json").json()["paths"]
    finally:
        d.stop()


def test_serve_refuses_a_missing_bundle(tmp_path):
    assert_clean_error(run_cli("sft-serve", str(tmp_path / "nope")), "bundle directory not found")
