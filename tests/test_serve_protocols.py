"""The daemon as other software meets it: the Open Inference Protocol through tritonclient (Triton's own
client), oversized, chunked and slow requests, HTTPS, and one table of options for CLI, app and benchmark."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import httpx
import numpy as np
import pytest
from serve_support import Daemon, demo_texts

from serve import load_model

pytest_plugins = ["serve_fixtures"]  # cls_bundle, ner_bundle, gen_bundle and their checkpoints


@pytest.fixture(scope="module")
def daemon(cls_bundle):
    d = Daemon(cls_bundle, "--max-body-bytes", "1000000", "--header-timeout", "1", "--model-name", "clf")
    yield d
    d.stop()


def _triton(d: Daemon):
    import tritonclient.http as triton

    return triton, triton.InferenceServerClient(d.url.removeprefix("http://"))


def test_tritonclient_classification(daemon, cls_bundle):
    triton, client = _triton(daemon)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("clf")
    meta = client.get_model_metadata("clf")
    assert [t["name"] for t in meta["inputs"]] == ["text", "text_pair"]
    assert [t["name"] for t in meta["outputs"]] == ["label", "score", "scores"]
    texts = demo_texts()[:5]
    expected = load_model(cls_bundle).predict(texts)
    labels = load_model(cls_bundle).labels
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=object))  # binary tensor data, tritonclient's default
    result = client.infer("clf", [text])
    assert [v.decode() for v in result.as_numpy("label")] == [e[0]["label"] for e in expected]
    np.testing.assert_allclose(result.as_numpy("score"), [e[0]["score"] for e in expected], atol=1e-6)
    scores = result.as_numpy("scores")
    assert scores.shape == (len(texts), len(labels))
    for row, e in zip(scores, expected, strict=True):
        assert dict(zip(labels, row.tolist(), strict=True)) == pytest.approx(
            {p["label"]: p["score"] for p in e}, abs=1e-6
        )
    # JSON tensors both ways, and a text pair
    plain = triton.InferInput("text", [2], "BYTES")
    plain.set_data_from_numpy(np.array(texts[:2], dtype=object), binary_data=False)
    pair = triton.InferInput("text_pair", [2], "BYTES")
    pair.set_data_from_numpy(np.array(["refund", "parcel"], dtype=object), binary_data=False)
    wanted = [triton.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("clf", [plain, pair], outputs=wanted)
    paired = load_model(cls_bundle).predict([(texts[0], "refund"), (texts[1], "parcel")])
    assert result.as_numpy("label").tolist() == [p[0]["label"] for p in paired]
    assert result.as_numpy("scores") is None  # only what was asked for
    with pytest.raises(triton.InferenceServerException, match="no model 'other'"):
        client.infer("other", [text])
    bad = triton.InferInput("text", [2], "BYTES")
    bad.set_data_from_numpy(np.array(texts[:2], dtype=object), binary_data=False)
    bad.set_shape([3])
    with pytest.raises(triton.InferenceServerException, match="holds 3 elements, the data 2"):
        client.infer("clf", [bad])


def test_tritonclient_token_classification(ner_bundle):
    d = Daemon(ner_bundle)
    try:
        triton, client = _triton(d)
        name = ner_bundle.name
        assert client.is_model_ready(name)
        assert [t["name"] for t in client.get_model_metadata(name)["outputs"]] == ["entities"]
        texts = ["Alice moved from Paris to Berlin, unbelievably quickly!", demo_texts()[0]]
        text = triton.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array(texts, dtype=object))
        result = client.infer(name, [text])
        got = [json.loads(v) for v in result.as_numpy("entities")]
        expected = json.loads(json.dumps(load_model(ner_bundle).predict(texts)))
        assert got == expected and got[0]
    finally:
        d.stop()


def test_oversized_bodies_get_a_413_the_client_reads(daemon):
    for size in (10 << 20, 100 << 20):
        body = b'{"inputs": "' + b"x" * size + b'"}'
        r = httpx.post(daemon.url + "/predict", content=body, timeout=120)
        assert r.status_code == 413 and "exceeds the limit of 1000000" in r.json()["error"], size

    def chunks(total: int):
        yield b'{"inputs": "'
        for _ in range(total // 65536):
            yield b"y" * 65536
        yield b'"}'

    r = httpx.post(daemon.url + "/predict", content=chunks(10 << 20), timeout=120)  # no Content-Length
    assert r.status_code == 413 and "more than 1000000 bytes" in r.json()["error"]
    assert httpx.post(daemon.url + "/predict", json={"inputs": "still serving"}).status_code == 200


def test_chunked_request_body_within_the_limit(daemon, cls_bundle):
    text = demo_texts()[0]
    payload = json.dumps({"inputs": [text, text]}).encode()

    def pieces():
        for i in range(0, len(payload), 7):
            yield payload[i : i + 7]

    r = httpx.post(daemon.url + "/predict", content=pieces(), timeout=30)
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 200
    expected = load_model(cls_bundle).predict([text])[0]
    assert [p["label"] for p in r.json()[1]] == [p["label"] for p in expected]


def test_a_slow_loris_is_dropped_and_never_blocks_others(daemon):
    loris = socket.create_connection(("127.0.0.1", daemon.port))
    loris.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
    started = time.monotonic()
    served = []

    def trickle():  # keeps sending header bytes, never the blank line that ends them
        try:
            for _ in range(40):
                loris.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.1)
        except OSError:
            pass

    threading.Thread(target=trickle, daemon=True).start()
    with httpx.Client(timeout=10) as client:
        for i in range(5):
            served.append(client.post(daemon.url + "/predict", json={"inputs": f"text {i}"}).status_code)
    assert served == [200] * 5 and time.monotonic() - started < 1.0
    loris.settimeout(5)
    try:
        closed = loris.recv(100) == b""
    except ConnectionResetError:
        closed = True
    assert closed and 0.9 < time.monotonic() - started < 3.0  # dropped after --header-timeout 1
    loris.close()


def test_https(cls_bundle, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    d = Daemon(
        cls_bundle, "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem")
    )
    try:
        assert d.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        r = httpx.post(d.url + "/predict", json={"inputs": "secure parcel"}, verify=context)
        assert r.status_code == 200 and len(r.json()) == 3
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port gets no answer
            httpx.get(d.url.replace("https://", "http://") + "/health", timeout=5)
    finally:
        d.stop()


def test_one_definition_of_each_option():
    import inspect

    from bench import load
    from serve.batcher import Batcher
    from serve.cli import serve_command
    from serve.options import CPU_MAX_BATCH_TOKENS, DEFAULTS, option_specs

    cli = inspect.signature(serve_command).parameters
    for spec in option_specs():
        assert cli[spec.name].default.default == spec.default, spec.name
        assert spec.envvar == "SFT_SERVE_" + spec.name.upper()
    batcher = inspect.signature(Batcher).parameters
    assert batcher["max_batch_requests"].default == DEFAULTS.max_batch_requests
    assert batcher["max_queue_delay_ms"].default == DEFAULTS.max_queue_delay_ms
    assert batcher["max_batch_tokens"].default == CPU_MAX_BATCH_TOKENS == DEFAULTS.batch_tokens(False)
    assert load.serve_batch_tokens() == DEFAULTS.batch_tokens(on_cuda=False)
