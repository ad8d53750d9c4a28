"""`sft-bench NAME [ARGS...]`: run one benchmark module (each prints a table and writes JSON).

Only the chosen module is imported, and each keeps torch and transformers out of its top level, so
`sft-bench --help`, `sft-bench NAME --help` and argument errors come back at once.
"""

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
    "qa-compare": (
        "bench.qa_compare",
        "XQuAD extractive QA: sft-train vs the Trainer + run_qa.py post-processing",
    ),
    "seq2seq-compare": ("bench.seq2seq_compare", "Multi30K en-de: sft-train vs Seq2SeqTrainer, small T5"),
    "vision-compare": ("bench.vision_compare", "digits image classification: sft-train vs the Trainer"),
    "predict-ray": ("bench.predict_ray", "sft-predict vs --engine ray with 1 and N actors: rows/s"),
    "kernels": ("bench.check", "all kernel benchmarks; --check gates on ratios against bench/baselines"),
    "kernels-ce": ("bench.kernels_cross_entropy", "fused cross-entropy kernels (GPU)"),
    "kernels-attention": ("bench.kernels_attention", "flash attention kernels (GPU)"),
    "compile": (
        "bench.compile",
        "ahead-of-time compile audit of every kernel launch variant (no GPU needed)",
    ),
    "gpu-suite": ("bench.gpu_suite", "one prepared run for a lent GPU: kernel tests, benchmarks, train"),
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
    name = BENCHMARKS[argv[0]][0]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        print(f"error: sft-bench {argv[0]}: {name} is not in this checkout", file=sys.stderr)
        raise SystemExit(2) from None
    rc = module.main(argv[1:])
    if rc:
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
