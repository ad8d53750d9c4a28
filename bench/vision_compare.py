"""Image classification on scikit-learn's digits: sft-train against `transformers.Trainer`, then sft-export's
ONNX against PyTorch on the eval images.

No pretrained vision weights ship on the package index, so the model is a small config (ResNet or ViT) from
random init, saved once and loaded by both arms. Both arms get the same batches in the same order (sft-train's
BatchOrder), AdamW at the same learning rate with linear warmup/decay, no weight decay, the same clipping and
seed; no dropout in either model, so what differs is the loop. The eval metric is the task's own
(accuracy, macro F1) applied to both arms' models. Training time: ours decodes and preprocesses each batch
inside the loop; the Trainer's dataset is preprocessed once up front, and that time is added to its own.

Our arm is sft-train itself (`sft.train` with `--task image-classification --augment none`): its recipe,
its batches, the loss through our cross-entropy kernel, its evaluation.

    python -m bench.vision_compare --arch resnet --epochs 15
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from .common import print_table, write_json
from .hf_trainer import same_order_trainer, timed_run_args

ARM_NOTE = "ours = sft.train (--task image-classification, --augment none); same batches as the Trainer"


def make_model(directory: Path, arch: str, labels: list[str], seed: int) -> Path:
    import torch
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    kw = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {n: i for i, n in enumerate(labels)},
    }
    torch.manual_seed(seed)
    if arch == "resnet":
        config = ResNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic", **kw
        )
        model = ResNetForImageClassification(config)
    else:
        config = ViTConfig(
            image_size=32,
            patch_size=4,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            **kw,
        )
        model = ViTForImageClassification(config)
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def task_for(data: Path, seed: int):
    from sft.vision import ImageClassification

    cfg = SimpleNamespace(
        train=str(data / "train"),
        eval=str(data / "eval"),
        problem_type="single-label",
        label_column="label",
        label_separator="|",
        threshold=0.5,
        label_smoothing=0.0,
        max_train_samples=None,
        max_eval_samples=None,
        seed=seed,
        augment="none",
        image_column="image",
        task="image-classification",
    )
    task = ImageClassification(cfg)
    task.load()
    return task


def run_ours(data: Path, model_dir: Path, out: Path, args) -> dict:
    from transformers import AutoModelForImageClassification

    from sft import load_config, train

    result = train(
        load_config(
            overrides={
                "task": "image-classification",
                "train": str(data / "train"),
                "eval": str(data / "eval"),
                "model": str(model_dir),
                "output": str(out),
                "augment": "none",
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "weight_decay": 0.0,
                "warmup_ratio": args.warmup_ratio,
                "max_grad_norm": 1.0,
                "seed": args.seed,
                "progress": False,
                "tensorboard": False,
                "plots": False,
            }
        )
    )
    model = AutoModelForImageClassification.from_pretrained(result.output_dir)
    return {"model": model, "metrics": result.metrics, "train_seconds": result.train_seconds}


def run_trainer(task, model_dir: Path, args) -> dict:
    import torch
    from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

    from sft.recipe import BatchOrder

    train_rows, eval_rows = task.encode(task.load_processor(str(model_dir)))
    t0 = time.perf_counter()
    pixels = task.collate(train_rows, 0, torch.device("cpu"))  # no augmentation: the same pixels as ours
    preprocess_seconds = time.perf_counter() - t0
    dataset = [
        {"pixel_values": pixels["pixel_values"][i], "labels": int(pixels["labels"][i])}
        for i in range(len(train_rows))
    ]
    model = AutoModelForImageClassification.from_pretrained(model_dir)

    SameOrderTrainer = same_order_trainer(Trainer, args.batch_size, args.seed)

    targs = timed_run_args(
        TrainingArguments,
        seed=args.seed,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.0,
        num_train_epochs=args.epochs,
        warmup_steps=int(
            BatchOrder(len(dataset), args.batch_size, 0).per_epoch * args.epochs * args.warmup_ratio
        ),
        max_grad_norm=1.0,
        use_cpu=True,
        logging_steps=1000,
    )
    trainer = SameOrderTrainer(model=model, args=targs, train_dataset=dataset)
    seconds = trainer.train().metrics["train_runtime"]
    metrics = task.evaluate(trainer.model.eval(), eval_rows, 0, torch.device("cpu"), 128, "torch")
    return {
        "model": trainer.model,
        "metrics": metrics,
        "train_seconds": seconds + preprocess_seconds,
        "preprocess_seconds": preprocess_seconds,
    }


def export_row(name: str, model, model_dir: Path, data: Path, out: Path) -> dict:
    """sft-export's path on the trained model: ONNX vs PyTorch on the eval images, and both accuracies."""
    from transformers import AutoImageProcessor

    from export.onnx import export_onnx

    ckpt = out / f"{name}-ckpt"
    model.save_pretrained(ckpt)
    AutoImageProcessor.from_pretrained(model_dir).save_pretrained(ckpt)
    report = export_onnx(ckpt, out / f"{name}-bundle", eval_file=data / "eval", atol=1e-4)
    torch_row, onnx_row = report.models
    return {
        "arm": name,
        "onnx_vs_pytorch_max_abs_diff": report.max_abs_diff,
        "validation_images": report.num_samples,
        "pytorch_accuracy": torch_row["accuracy"],
        "onnx_fp32_accuracy": onnx_row["accuracy"],
        "onnx_size_bytes": onnx_row["size_bytes"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("resnet", "vit"), default="resnet")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=None, help="results file name (default vision_compare_<arch>)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_digits_data import write_digits

    with tempfile.TemporaryDirectory(prefix="digits-") as tmp:
        tmp = Path(tmp)
        counts = write_digits(tmp / "data")
        task = task_for(tmp / "data", args.seed)
        model_dir = make_model(tmp / "init", args.arch, task.labels.names, args.seed)
        ours = run_ours(tmp / "data", model_dir, tmp / "ours-out", args)
        theirs = run_trainer(task, model_dir, args)
        rows = []
        for name, result in (("ours", ours), ("trainer", theirs)):
            m = result["metrics"]
            rows.append(
                {
                    "arm": name,
                    "accuracy": m["accuracy"],
                    "f1_macro": m["f1_macro"],
                    "eval_loss": m["loss"],
                    "train_seconds": result["train_seconds"],
                }
            )
        exports = [
            export_row(name, r["model"], model_dir, tmp / "data", tmp)
            for name, r in (("ours", ours), ("trainer", theirs))
        ]
    print_table(rows, ["arm", "accuracy", "f1_macro", "eval_loss", "train_seconds"])
    print_table(
        exports,
        [
            "arm",
            "onnx_vs_pytorch_max_abs_diff",
            "validation_images",
            "pytorch_accuracy",
            "onnx_fp32_accuracy",
        ],
    )
    path = write_json(
        args.name or f"vision_compare_{args.arch}",
        {
            "data": {"dataset": "sklearn.datasets.load_digits", **counts, "image_size": "8x8 -> 32x32"},
            "settings": {k: v for k, v in vars(args).items()},
            "note": ARM_NOTE,
            "training": rows,
            "confusion_matrix_ours": ours["metrics"].get("confusion_matrix"),
            "export": exports,
            "command": "python -m bench.vision_compare "
            + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
