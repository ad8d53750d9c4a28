"""Shared plumbing for benchmarks: environment facts, timing, and atomic JSON/plot output.

Benchmarks are not tests. Each one prints a table and writes a JSON record under ``bench/results/``
holding the device, library versions, the exact command and the date, so every number can be traced.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def environment() -> dict[str, Any]:
    """Facts about this run's machine and software that a reader needs to trust a number."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": {
            name: _version(name)
            for name in (
                "torch",
                "triton",
                "transformers",
                "onnxruntime",
                "onnxruntime-gpu",
                "optimum",
                "optimum-onnx",
                "liger-kernel",
                "tokenizers",
            )
        },
        "device": "cpu",
    }
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["device"] = torch.cuda.get_device_name(0)
            env["device_memory_gib"] = round(props.total_memory / 2**30, 1)
            env["cuda"] = torch.version.cuda
            env["sm_count"] = props.multi_processor_count
    except Exception:
        pass
    return env


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``payload`` (plus the environment) to ``out_dir/name.json`` atomically."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"environment": environment(), **payload}
    path = out_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path


def cuda_time_ms(fn: Callable[[], Any], warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median time of ``fn`` in milliseconds on CUDA, timed with events (triton.testing.do_bench)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def cpu_time_ms(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in milliseconds on the host."""
    import statistics
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measured_copy_bandwidth_gbs(nbytes: int = 2**30) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written), measured now."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measured_matmul_tflops(n: int = 8192, dtype: str = "bfloat16") -> float:
    """Dense matmul rate in TFLOP/s through torch (cuBLAS), measured now."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device="cuda", dtype=dt)
    b = torch.randn(n, n, device="cuda", dtype=dt)
    ms = cuda_time_ms(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as a plain fixed-width table (the reply of a device run carries the tail)."""
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)
