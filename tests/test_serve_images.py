"""sft-serve on an image-classification bundle (tiny random ViT): a PNG posted raw (image/png) or as base64
JSON gets the transformers image-classification pipeline's labels; too many bytes or pixels get a 413."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from serve_support import Daemon
from test_vision import write_image_folder, write_tiny_vit


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    from export.onnx import export_onnx

    tmp = tmp_path_factory.mktemp("vit")
    model_dir = write_tiny_vit(tmp / "model")
    eval_dir = write_image_folder(tmp / "eval", per_class=2, seed=1)
    report = export_onnx(model_dir, tmp / "bundle", eval_file=eval_dir, atol=1e-4)
    return model_dir, eval_dir, report.bundle_dir


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_daemon_labels_equal_the_pipeline(vit):
    from PIL import Image
    from transformers import pipeline

    model_dir, eval_dir, bundle = vit
    pipe = pipeline("image-classification", model=str(model_dir), device="cpu")
    paths = sorted(eval_dir.rglob("*.png")) or sorted(p for p in eval_dir.rglob("*") if p.is_file())
    images = [Image.open(p).convert("RGB") for p in paths[:3]]
    daemon = Daemon(bundle, "--max-body-bytes", "200000")
    try:
        for image in images:
            want = [(x["label"], x["score"]) for x in pipe(image, top_k=3)]
            raw = httpx.post(
                daemon.url + "/predict", content=_png(image), headers={"content-type": "image/png"}
            )
            assert raw.status_code == 200, raw.text
            got = [(x["label"], x["score"]) for x in raw.json()]
            assert [g[0] for g in got] == [w[0] for w in want]
            assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-4)
            b64 = base64.b64encode(_png(image)).decode()
            via_json = httpx.post(daemon.url + "/", json={"inputs": b64, "parameters": {"top_k": 1}})
            assert via_json.status_code == 200, via_json.text
            assert via_json.json()[0]["label"] == want[0][0]
        batch = httpx.post(
            daemon.url + "/predict", json={"inputs": [base64.b64encode(_png(i)).decode() for i in images]}
        )
        assert batch.status_code == 200 and len(batch.json()) == len(images)
        too_big = httpx.post(
            daemon.url + "/predict", content=b"\0" * 300_000, headers={"content-type": "image/png"}
        )
        assert too_big.status_code == 413 and set(too_big.json()) == {"error", "error_type"}
        bomb = _png(Image.new("L", (12_000, 12_000)))  # a few KB that decode to 144 M pixels
        assert len(bomb) < 200_000
        r = httpx.post(daemon.url + "/predict", content=bomb, headers={"content-type": "image/png"})
        assert r.status_code == 413, r.text
        r = httpx.post(
            daemon.url + "/predict", content=b"not an image", headers={"content-type": "image/png"}
        )
        assert r.status_code == 422 and set(r.json()) == {"error", "error_type"}
        assert httpx.get(daemon.url + "/health").json() == {"status": "ok"}
        paths = httpx.get(daemon.url + "/openapi.json").json()["paths"]
        assert "/predict" in paths and "/tokenize" not in paths
        assert httpx.post(daemon.url + "/tokenize", json={"inputs": "x"}).status_code == 404
    finally:
        daemon.stop()
