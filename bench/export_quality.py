"""Export quality on CPU: accuracy, model size and throughput of PyTorch vs the ONNX bundles sft-export
writes.

One command exports the SST-2 fine-tuned checkpoint four ways (fp32, O2, int8, O2 + int8) with sft-export's
own code, scores every model on the SST-2 dev set, and times each at batch 1 and 32 with the same texts and
thread count (1 thread, and all usable cores). Tokenization is included on both sides (transformers for
PyTorch, serve's tokenizers path for ONNX), since a server pays it. Arms are interleaved over several rounds
and the median kept, and texts per CPU second are recorded next to texts per wall second, because the
machine may be shared.

    python -m bench.export_quality --checkpoint runs/sst2-minilm [--dev ../shared/data/sst2/dev.tsv]

Writes bench/results/export_quality_cpu.json. Skips (exit 0, with a message) when the data or the
checkpoint is absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .common import print_table, write_json
from .plots import draw

DEFAULT_CHECKPOINT = "runs/sst2-minilm"  # sft-train --config examples/configs/sst2_minilm.yaml writes it
DEFAULT_DEV = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "dev.tsv")
VARIANTS = {  # name -> export_onnx options
    "ONNX fp32": {},
    "ONNX fp32 O2": {"optimize": "O2"},
    "ONNX int8": {"quantize": "int8"},
    "ONNX O2 + int8": {"optimize": "O2", "quantize": "int8"},
}


def throughput(fn, texts: list[str], batch_size: int, seconds: float) -> tuple[float, float]:
    """(texts per wall second, texts per CPU second of this process) of `fn` over consecutive batches for
    about `seconds`, after one warm-up batch. On a shared machine the CPU-time rate of a one-thread run is
    the number least disturbed by other processes."""
    batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
    fn(batches[0])
    done, i = 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds or i < 3:
        fn(batches[i % len(batches)])
        done += batch_size
        i += 1
    return done / (time.perf_counter() - wall), done / (time.process_time() - cpu)


def run(
    checkpoint: str,
    dev: str,
    *,
    seconds: float,
    rounds: int,
    thread_counts: list[int],
    out_dir: str | None,
    work_dir: str | None,
) -> dict | None:
    if not Path(dev).is_file():
        print(f"skipped: SST-2 dev set not found at {dev}")
        return None
    if not (Path(checkpoint) / "config.json").is_file():
        print(
            f"skipped: no checkpoint at {checkpoint}; train one with: sft-train --train <5000-row SST-2 tsv> "
            f"--eval {dev} --text-column sentence --output {checkpoint} --epochs 1"
        )
        return None

    from export import export_onnx
    from export.accuracy import read_eval_set, score_onnx, score_torch
    from export.checkpoint import inspect_checkpoint, max_length_of
    from export.runners import TorchModel

    work = Path(work_dir or tempfile.mkdtemp(prefix="export-quality-"))
    load_before = os.getloadavg()
    ckpt = inspect_checkpoint(checkpoint)
    max_length = max_length_of(ckpt)
    eval_set = read_eval_set(dev, ckpt)
    reference = TorchModel(Path(checkpoint), ckpt.task, max_length)

    models = [
        {
            "model": "PyTorch eager",
            "file_mb": _size_mb(Path(checkpoint) / "model.safetensors"),
            "accuracy": score_torch(eval_set, reference),
        }
    ]
    bundles, exports = {}, {}
    for name, options in VARIANTS.items():
        bundles[name] = work / name.replace(" ", "_").replace("+", "plus")
        t0 = time.perf_counter()
        report = export_onnx(checkpoint, bundles[name], **options)  # accuracy is scored here, for all alike
        exports[name] = {
            "seconds": time.perf_counter() - t0,
            "validation": report.manifest["validation"],
            "quantization": report.manifest.get("quantization"),
        }
        models.append(
            {
                "model": name,
                "file_mb": _size_mb(bundles[name] / "model.onnx"),
                "accuracy": score_onnx(eval_set, reference, bundles[name]),
            }
        )
    for row in models:
        row["accuracy_drop_points"] = (models[0]["accuracy"] - row["accuracy"]) * 100
    print_table(models, ["model", "file_mb", "accuracy", "accuracy_drop_points"])

    texts = (eval_set.texts * (2048 // len(eval_set.texts) + 1))[:2048]
    speed = []
    for threads in thread_counts:
        speed += _time_all(reference, bundles, texts, threads, seconds, rounds)
    print()
    print_table(
        speed,
        [
            "model",
            "threads",
            "texts_per_s_b1",
            "texts_per_s_b32",
            "texts_per_cpu_s_b32",
            "speedup_b1",
            "speedup_b32",
            "speedup_cpu_b32",
        ],
    )

    int8 = next(r for r in models if r["model"] == "ONNX int8")
    goal = {
        "target": "int8 >= 3x PyTorch eager at batch 32 with <= 1 point accuracy loss",
        "int8_accuracy_drop_points": int8["accuracy_drop_points"],
        "by_threads": {},
    }
    for r in speed:
        if r["model"] == "ONNX int8":
            goal["by_threads"][r["threads"]] = {
                "speedup_b32": r["speedup_b32"],
                "speedup_cpu_b32": r["speedup_cpu_b32"],
            }
            met = r["speedup_b32"] >= 3.0 and int8["accuracy_drop_points"] <= 1.0
            print(
                f"goal ({r['threads']} thread(s)): {goal['target']}: "
                f"int8 is {r['speedup_b32']:.2f}x wall-clock ({r['speedup_cpu_b32']:.2f}x per CPU second) "
                f"with {int8['accuracy_drop_points']:.2f} points lost -> {'met' if met else 'MISSED'}"
            )
    load_after = os.getloadavg()
    result = {
        "checkpoint": checkpoint,
        "dev": dev,
        "examples": len(eval_set),
        "max_length": max_length,
        "seconds_per_arm": seconds,
        "rounds": rounds,
        "models": models,
        "throughput": speed,
        "goal": goal,
        "exports": exports,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    path = write_json("export_quality_cpu", result, Path(out_dir) if out_dir else None)
    print(
        f"wrote {path}, {draw(path)} (load average before {load_before[0]:.1f}, after {load_after[0]:.1f} on "
        f"{os.cpu_count()} cores)"
    )
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _time_all(
    reference, bundles: dict[str, Path], texts: list[str], threads: int, seconds: float, rounds: int
) -> list[dict]:
    """Every model at batch 1 and 32 with `threads` threads; arms interleaved, medians of `rounds`."""
    import torch

    from serve.runtime import TextClassifier

    torch.set_num_threads(threads)
    runners = {"PyTorch eager": lambda batch: reference.logits(reference.encode(batch)[0])}
    runners.update(
        {name: TextClassifier.from_bundle(bundle, threads=threads).logits for name, bundle in bundles.items()}
    )
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for batch_size in (1, 32):
            for name, fn in runners.items():
                samples.setdefault((name, batch_size), []).append(throughput(fn, texts, batch_size, seconds))
    rows = []
    for name in runners:
        row = {"model": name, "threads": threads}
        for batch_size in (1, 32):
            row[f"texts_per_s_b{batch_size}"] = statistics.median(w for w, _ in samples[(name, batch_size)])
        row["texts_per_cpu_s_b32"] = statistics.median(c for _, c in samples[(name, 32)])
        rows.append(row)
    for row in rows:
        for key in ("b1", "b32", "cpu_b32"):
            rate = "texts_per_cpu_s_b32" if key == "cpu_b32" else f"texts_per_s_{key}"
            row[f"speedup_{key}"] = row[rate] / rows[0][rate]
    return rows


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint", default=DEFAULT_CHECKPOINT, help=f"SST-2 fine-tuned checkpoint [{DEFAULT_CHECKPOINT}]"
    )
    p.add_argument("--dev", default=DEFAULT_DEV, help=f"SST-2 dev TSV [{DEFAULT_DEV}]")
    p.add_argument("--seconds", type=float, default=4.0, help="time per arm, batch size and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument(
        "--threads",
        help="comma-separated thread counts, each timed for both runtimes [default: 1 and the usable cores]",
    )
    p.add_argument("--out", help="directory for the JSON [default: bench/results]")
    p.add_argument("--keep", help="export the bundles here and keep them [default: a temporary directory]")
    a = p.parse_args(argv)
    from serve.session import usable_cores

    threads = [int(t) for t in a.threads.split(",")] if a.threads else sorted({1, usable_cores()})
    run(
        a.checkpoint,
        a.dev,
        seconds=a.seconds,
        rounds=a.rounds,
        thread_counts=threads,
        out_dir=a.out,
        work_dir=a.keep,
    )


if __name__ == "__main__":
    main()
