"""Runtime throughput: the ONNX bundle under onnxruntime against the checkpoint under PyTorch eager.

Both sides get the same texts, the same batch sizes and the same thread count; tokenization is included
on both sides (tokenizers for ORT, the transformers fast tokenizer for PyTorch), since a server pays it.
Optionally also measures agreement (max |logit diff|, argmax agreement) over an eval file.

    python -m bench.runtime CHECKPOINT BUNDLE [--texts FILE] [--batch-sizes 1,32] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from .common import print_table, write_json
from .plots import draw


def read_texts(path: str | None) -> list[str]:
    """Texts of a file (one per line, or the first column of a GLUE .tsv), else the demo eval texts."""
    if path is None:
        import csv

        root = Path(__file__).resolve().parents[1]
        return [r["text"] for r in csv.DictReader((root / "examples/demo/eval.csv").open())]
    p = Path(path)
    lines = p.read_text(encoding="utf-8").splitlines()
    if p.suffix == ".tsv":
        lines = [line.split("\t")[0] for line in lines[1:]]
    return [t for t in lines if t.strip()]


def _throughput(fn, texts: list[str], batch_size: int, seconds: float) -> dict:
    batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
    fn(batches[0])  # warm-up
    latencies, done, i = [], 0, 0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(latencies) < 5:
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        fn(b)
        latencies.append(time.perf_counter() - t0)
        done += len(b)
        i += 1
    total = sum(latencies)
    return {
        "texts_per_s": done / total,
        "median_batch_ms": statistics.median(latencies) * 1e3,
        "batches": len(latencies),
    }


def run(
    checkpoint: str,
    bundle: str,
    *,
    texts_file: str | None = None,
    batch_sizes=(1, 32),
    seconds: float = 5.0,
    threads: int | None = None,
    agreement_file: str | None = None,
    out_dir: str | None = None,
) -> dict:
    import os

    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from serve.runtime import TextClassifier

    threads = threads or os.cpu_count()
    torch.set_num_threads(threads)
    clf = TextClassifier.from_bundle(bundle, threads=threads)
    max_length = clf.bundle.max_length
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()

    @torch.inference_mode()
    def torch_logits(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return model(**enc).logits.numpy()

    texts = read_texts(texts_file)
    texts = (texts * (4096 // len(texts) + 1))[:4096]
    rows = []
    for bs in batch_sizes:
        pt = _throughput(torch_logits, texts, bs, seconds)
        ort = _throughput(clf.logits, texts, bs, seconds)
        rows.append(
            {
                "batch_size": bs,
                "torch_texts_per_s": pt["texts_per_s"],
                "ort_texts_per_s": ort["texts_per_s"],
                "speedup": ort["texts_per_s"] / pt["texts_per_s"],
                "torch_median_ms": pt["median_batch_ms"],
                "ort_median_ms": ort["median_batch_ms"],
            }
        )
    result = {
        "checkpoint": checkpoint,
        "bundle": bundle,
        "threads": threads,
        "seconds_per_arm": seconds,
        "max_length": max_length,
        "throughput": rows,
    }
    if agreement_file:
        eval_texts = read_texts(agreement_file)
        a = np.concatenate([clf.logits(eval_texts[i : i + 64]) for i in range(0, len(eval_texts), 64)])
        b = np.concatenate([torch_logits(eval_texts[i : i + 64]) for i in range(0, len(eval_texts), 64)])
        result["agreement"] = {
            "texts": len(eval_texts),
            "max_abs_logit_diff": float(np.abs(a - b).max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
        }
    print_table(
        rows,
        ["batch_size", "torch_texts_per_s", "ort_texts_per_s", "speedup", "torch_median_ms", "ort_median_ms"],
    )
    if "agreement" in result:
        print("agreement:", result["agreement"])
    path = write_json("runtime_cpu", result, Path(out_dir) if out_dir else None)
    print(f"wrote {path} and {draw(path)}")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("bundle")
    p.add_argument("--texts", help="file of texts (one per line, or a GLUE .tsv) [default: demo eval texts]")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--seconds", type=float, default=5.0, help="time per arm and batch size")
    p.add_argument("--threads", type=int)
    p.add_argument("--agreement", help="also compare logits of both runtimes over this file")
    p.add_argument("--out", help="directory for the JSON [default: bench/results]")
    a = p.parse_args(argv)
    run(
        a.checkpoint,
        a.bundle,
        texts_file=a.texts,
        batch_sizes=[int(x) for x in a.batch_sizes.split(",")],
        seconds=a.seconds,
        threads=a.threads,
        agreement_file=a.agreement,
        out_dir=a.out,
    )


if __name__ == "__main__":
    main()
