"""`--task image-classification` through the console scripts: sft-train -> sft-export -> sft-predict, on a
tiny random ViT and ResNet; bad image folders are one line and exit 2 in each command.

Runs once the task is registered in sft-train (sft.config.TASKS); until then each test skips and says so.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from test_vision import write_image_folder, write_tiny_resnet, write_tiny_vit

from sft.config import TASKS

pytestmark = pytest.mark.skipif(
    "image-classification" not in TASKS,
    reason="--task image-classification is not registered in sft-train yet",
)


@pytest.mark.parametrize("writer", [write_tiny_vit, write_tiny_resnet])
def test_train_export_predict(tmp_path, writer):
    from PIL import Image
    from transformers import pipeline

    model = writer(tmp_path / "init")
    train = write_image_folder(tmp_path / "train", per_class=8)
    evals = write_image_folder(tmp_path / "eval", per_class=3, seed=1)
    proc = run_cli(
        "sft-train",
        "--task",
        "image-classification",
        "--model",
        str(model),
        "--train",
        str(train),
        "--eval",
        str(evals),
        "--augment",
        "light",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--best-metric",
        "accuracy",
        "--output",
        str(tmp_path / "model"),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model" / "preprocessor_config.json").is_file()

    proc = run_cli(
        "sft-export",
        str(tmp_path / "model"),
        "--onnx",
        "--eval-file",
        str(evals),
        "--output",
        str(tmp_path / "bundle"),
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["task"] == "image-classification"
    assert manifest["validation"]["max_abs_diff"] <= 1e-4

    proc = run_cli(
        "sft-predict",
        str(tmp_path / "bundle"),
        "--input",
        str(evals),
        "--output",
        str(tmp_path / "pred.jsonl"),
    )
    assert proc.returncode == 0, proc.stderr
    served = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    pipe = pipeline("image-classification", model=str(tmp_path / "model"), device="cpu")
    for row in served:
        want = pipe(Image.open(row["path"]), top_k=1)[0]["label"]
        assert row["predictions"][0]["label"] == want


def test_bad_images_are_one_line_and_exit_2(tmp_path):
    model = write_tiny_vit(tmp_path / "init")
    train = write_image_folder(tmp_path / "train", per_class=2)
    (train / "red" / "0.jpg").write_bytes(b"not a jpeg")
    proc = run_cli(
        "sft-train",
        "--task",
        "image-classification",
        "--model",
        str(model),
        "--train",
        str(train),
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "red/0.jpg" in proc.stderr
    (tmp_path / "flat").mkdir()
    proc = run_cli(
        "sft-train",
        "--task",
        "image-classification",
        "--model",
        str(model),
        "--train",
        str(tmp_path / "flat"),
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 2 and "no class folders" in proc.stderr
