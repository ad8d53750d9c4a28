"""`sft-bench NAME [ARGS...]`: run one benchmark module (each prints a table and writes JSON)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "runtime": ("bench.runtime", "onnxruntime vs PyTorch throughput on this machine (CPU or GPU)"),
    "export-quality": (
        "bench.export_quality",
        "accuracy, size and speed of PyTorch vs ONNX fp32 / O2 / int8 (SST-2)",
    ),
    "load": ("bench.load", "sft-serve vs a FastAPI + transformers.pipeline server: throughput, latency, RSS"),
    "train": ("bench.train_speed", "end-to-end training speed vs Trainer / Liger (GPU)"),
    "trainer-compare": (
        "bench.trainer_compare",
        "sft-train vs transformers.Trainer: same data and hyper-parameters",
    ),
    "kernels": ("bench.check", "all kernel benchmarks; --check gates on ratios against bench/baselines"),
    "kernels-ce": ("bench.kernels_cross_entropy", "fused cross-entropy kernels (GPU)"),
    "kernels-attention": ("bench.kernels_attention", "flash attention kernels (GPU)"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: sft-bench NAME [ARGS...]   (sft-bench NAME --help for its options)\n")
        for name, (_, what) in BENCHMARKS.items():
            print(f"  {name:<18} {what}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown benchmark {argv[0]!r}", file=sys.stderr)
            raise SystemExit(2)
        return
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
