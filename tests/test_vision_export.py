"""Image classification through export and serving, on tiny random ViT and ResNet checkpoints: ONNX equal to
PyTorch, served labels equal to the transformers image-classification pipeline, numpy preprocessing equal to
the image processor, limits on bytes and pixels, bad inputs in one line."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from test_vision import write_image_folder, write_tiny_resnet, write_tiny_vit

from sft.errors import InputError


@pytest.fixture(scope="module", params=["vit", "resnet"])
def exported(request, tmp_path_factory):
    from export.onnx import export_onnx

    tmp = tmp_path_factory.mktemp(request.param)
    writer = write_tiny_vit if request.param == "vit" else write_tiny_resnet
    model_dir = writer(tmp / "model")
    eval_dir = write_image_folder(tmp / "eval", per_class=4, seed=1)
    report = export_onnx(model_dir, tmp / "bundle", eval_file=eval_dir, atol=1e-4)
    return model_dir, eval_dir, report


def test_onnx_matches_pytorch_on_eval_images(exported):
    model_dir, eval_dir, report = exported
    manifest = json.loads((report.bundle_dir / "manifest.json").read_text())
    assert manifest["task"] == "image-classification"
    assert manifest["labels"] == ["red", "green", "blue"]
    assert manifest["validation"]["inputs"] == "eval-file sample"
    assert manifest["validation"]["num_samples"] == 12
    assert 0 <= report.max_abs_diff <= 1e-4
    assert (report.bundle_dir / "preprocessor_config.json").is_file()
    torch_acc, onnx_acc = (row["accuracy"] for row in manifest["accuracy"]["models"])
    assert torch_acc == onnx_acc


def test_served_labels_equal_the_transformers_pipeline(exported):
    from PIL import Image
    from transformers import pipeline

    from serve.images import ImageClassifier, read_image_file

    model_dir, eval_dir, report = exported
    files = sorted(eval_dir.rglob("*.*"))
    classifier = ImageClassifier(report.bundle_dir)
    served = classifier.predict([read_image_file(f) for f in files], top_k=3)
    pipe = pipeline("image-classification", model=str(model_dir), device="cpu")
    expected = pipe([Image.open(f) for f in files], top_k=3)
    for got, want in zip(served, expected, strict=True):
        assert [g["label"] for g in got] == [w["label"] for w in want]
        assert np.allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


def test_bad_eval_folder_is_one_line_before_any_export(tmp_path):
    from export.onnx import export_onnx

    model_dir = write_tiny_vit(tmp_path / "model")
    eval_dir = write_image_folder(tmp_path / "eval", per_class=2)
    (eval_dir / "red" / "0.jpg").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"red/0.jpg: not an image"):
        export_onnx(model_dir, tmp_path / "bundle", eval_file=eval_dir)
    config = json.loads((model_dir / "preprocessor_config.json").read_text())
    (model_dir / "preprocessor_config.json").write_text(json.dumps({**config, "image_processor_type": "X"}))
    with pytest.raises(InputError, match="image_processor_type 'X' is not supported"):
        export_onnx(model_dir, tmp_path / "bundle")
    (model_dir / "preprocessor_config.json").unlink()
    with pytest.raises(InputError, match="no preprocessor_config.json"):
        export_onnx(model_dir, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def _png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_decoding_limits_and_bad_data():
    from serve.images import ImageError, ImageLimits, decode_base64_image, decode_image

    png = _png(np.zeros((40, 50, 3), dtype=np.uint8))
    assert decode_image(png).size == (50, 40)
    assert decode_base64_image(base64.b64encode(png).decode()).mode == "RGB"
    assert decode_base64_image("data:image/png;base64," + base64.b64encode(png).decode()).size == (50, 40)
    with pytest.raises(ImageError, match="pixels > the limit of 1000") as e:
        decode_image(png, "upload", ImageLimits(max_pixels=1000))
    assert e.value.status == 413
    with pytest.raises(ImageError, match="bytes > the limit") as e:
        decode_image(png, "upload", ImageLimits(max_bytes=10))
    assert e.value.status == 413
    with pytest.raises(ImageError, match="not an image") as e:
        decode_image(b"hello", "upload")
    assert e.value.status == 422
    with pytest.raises(ImageError, match="unreadable image"):
        noise = _png(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
        decode_image(noise[: len(noise) // 2], "upload")
    with pytest.raises(ImageError, match="not valid base64"):
        decode_base64_image("***")


def test_decompression_bomb_is_refused_without_decoding():
    """A 7000 x 7000 PNG of zeros is ~150 kB encoded and 147 MB decoded: refused from the header (413)."""
    import zlib

    from serve.images import ImageError, decode_image

    side = 7000
    packer = zlib.compressobj(9)
    rows = b"\x00" * ((side * 3 + 1) * 100)
    raw = b"".join(packer.compress(rows) for _ in range(side // 100)) + packer.flush()

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="pixels > the limit") as e:
        decode_image(bomb, "upload")
    assert e.value.status == 413


@pytest.mark.parametrize(
    "processor",
    [
        ("ViTImageProcessor", {"size": {"height": 32, "width": 32}}),
        ("ViTImageProcessor", {}),
        ("ConvNextImageProcessor", {"size": {"shortest_edge": 32}}),
        ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}, "resample": 3}),
        ("BitImageProcessor", {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}),
        (
            "MobileNetV2ImageProcessor",
            {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}},
        ),
        (
            "EfficientNetImageProcessor",
            {"size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32}},
        ),
        (
            "EfficientNetImageProcessor",
            {"rescale_offset": True, "include_top": False, "do_center_crop": False},
        ),
        (
            "DeiTImageProcessor",
            {"size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32}},
        ),
    ],
)
def test_numpy_preprocessing_is_the_image_processor_exactly(tmp_path, processor):
    import transformers
    from PIL import Image

    from serve.images import ImagePreprocessor, decode_image

    name, kwargs = processor
    reference = getattr(transformers, name)(**kwargs)
    reference.save_pretrained(tmp_path)
    ours = ImagePreprocessor.from_dir(tmp_path)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(8, 8), (37, 50), (300, 200), (5, 90), (2, 2)]
    ]
    images.append(decode_image(_png(rng.integers(0, 256, (20, 30), dtype=np.uint8))))  # grayscale file
    for image in images:
        expected = reference(images=image, return_tensors="np")["pixel_values"]
        assert np.array_equal(ours([image]), expected)


def test_unsupported_processor_and_listing(tmp_path):
    from serve.errors import ServeError
    from serve.images import ImagePreprocessor, list_images

    with pytest.raises(ServeError, match="'CLIPImageProcessor' is not supported"):
        ImagePreprocessor({"image_processor_type": "CLIPImageProcessor"})
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    files = list_images(root)
    assert len(files) == 6
    (tmp_path / "list.txt").write_text("\n".join(str(f.relative_to(tmp_path)) for f in files) + "\n\n")
    assert list_images(tmp_path / "list.txt") == files
    (tmp_path / "bad.txt").write_text("imgs/red/0.jpg\nnope.png\n")
    with pytest.raises(ServeError, match="bad.txt line 2: nope.png: no such file"):
        list_images(tmp_path / "bad.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ServeError, match="empty: no image files"):
        list_images(tmp_path / "empty")


def test_export_without_eval_set_validates_on_generated_images(tmp_path):
    from export.onnx import export_onnx

    report = export_onnx(write_tiny_resnet(tmp_path / "model"), tmp_path / "bundle")
    validation = report.manifest["validation"]
    assert validation["inputs"] == "generated" and validation["num_samples"] == 12
    assert validation["max_abs_diff"] <= 1e-4


def test_predict_request_shapes_and_batched_run(exported):
    from serve.images import ImageClassifier, ImageError, parse_image_request, read_image_file

    model_dir, eval_dir, report = exported
    files = sorted(eval_dir.rglob("*.png"))[:3]
    raw = [f.read_bytes() for f in files]
    classifier = ImageClassifier(report.bundle_dir)
    expected = classifier.predict([read_image_file(f) for f in files], top_k=None)

    req = parse_image_request("image/png", raw[0])
    assert req.single and classifier.run(req.images, req.options)[0] == expected[0][:5]
    body = json.dumps(
        {"inputs": [base64.b64encode(r).decode() for r in raw], "parameters": {"top_k": 2}}
    ).encode()
    req = parse_image_request("application/json", body)
    assert not req.single
    assert classifier.run(req.images, req.options) == [e[:2] for e in expected]

    for content_type, payload, status in [
        ("text/plain", b"x", 415),
        ("application/json", b"{", 422),
        ("application/json", b'{"inputs": 3}', 422),
        ("application/json", b'{"inputs": "aGVsbG8=", "parameters": {"top_k": 0}}', 422),
        ("image/png", b"not a png", 422),
    ]:
        with pytest.raises(ImageError) as e:
            parse_image_request(content_type, payload)
        assert e.value.status == status, (content_type, payload, str(e.value))


def test_predict_over_a_folder_and_a_bad_image(exported, tmp_path, capsys):
    from serve.errors import report_errors
    from serve.images import ImageClassifier, is_image_bundle, predict_images

    model_dir, eval_dir, report = exported
    classifier = ImageClassifier(report.bundle_dir)
    out = tmp_path / "predictions.jsonl"
    assert predict_images(classifier, eval_dir, out, batch_size=5) == 12
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 12 and all(len(r["predictions"]) == 3 for r in lines)
    assert [r["index"] for r in lines] == list(range(12))
    assert is_image_bundle(report.bundle_dir) and not is_image_bundle(tmp_path)

    bad = write_image_folder(tmp_path / "bad", per_class=1)
    (bad / "green" / "0.jpg").write_bytes(b"\x89PNG broken")
    with pytest.raises(SystemExit) as e:
        report_errors(predict_images)(classifier, bad, tmp_path / "bad.jsonl")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "green/0.jpg" in err and "\n" not in err
    assert not (tmp_path / "bad.jsonl").exists()


def test_serve_images_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    heavy = "('torch', 'transformers', 'optimum', 'sft')"
    code = f"import sys, serve.images; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
