"""The one benchmark harness: environment facts, device sync, timing, peak memory, failures, and atomic
JSON / PNG output.

Benchmarks are not tests. Each one prints a table and writes a JSON record under ``bench/results/``
holding the device, library versions, the exact command and the date, so every number can be traced.
torch is imported inside the functions that need it, so a benchmark's ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
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

        env["versions"]["cuda"] = torch.version.cuda
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


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    """Write the figure to a temp name and rename, so a reader never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    tmp.replace(path)
    return path


def write_png(draw: Callable[[Any], Any], path: Path) -> Path | None:
    """``draw(plt)`` returns a figure (or None: nothing to draw), saved atomically to ``path``.

    Without matplotlib (a bare GPU image may lack it) this prints one line and returns None, so the
    benchmark's JSON still comes out."""
    try:
        plt = pyplot()
    except ImportError:
        print(f"matplotlib not installed: no plot {path}", file=sys.stderr)
        return None
    fig = draw(plt)
    return None if fig is None else save_png(fig, path)


def write_outputs(
    name: str, payload: dict[str, Any], out_dir: Path | None, draw: Callable[[Any], Any] | None = None
) -> tuple[Path, Path | None]:
    """The JSON record and, when ``draw`` is given, its PNG beside it; prints where they went."""
    path = write_json(name, payload, out_dir)
    png = write_png(draw, path.with_suffix(".png")) if draw else None
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return path, png


# --------------------------------------------------------------------------------------------------------
# Device plumbing: the same calls on CUDA and on CPU (where they do nothing or return None)
# --------------------------------------------------------------------------------------------------------


def _is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def sync(device: Any) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize()


def free(device: Any) -> None:
    """Drop garbage and return cached blocks, so one arm's leftovers do not count against the next."""
    gc.collect()
    if _is_cuda(device):
        import torch

        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def failure_status(exc: BaseException) -> str:
    """The ``status`` of a row whose arm failed: ``oom``, or the error's type and message (capped)."""
    return "oom" if is_oom(exc) else f"error: {type(exc).__name__}: {exc}"[:200]


def run_arm(row: dict[str, Any], device: Any, measure: Callable[..., None], /, *args: Any, **kwargs: Any):
    """``measure(row, *args, **kwargs)`` fills in one arm's row. A failure (out of memory or any error)
    becomes the row's ``status`` instead of ending the benchmark; the measurement's tensors go with its
    frame and the device cache is emptied before the next arm. Returns the row."""
    try:
        measure(row, *args, **kwargs)
    except Exception as exc:
        row["status"] = failure_status(exc)
    free(device)
    row.setdefault("status", "ok")
    return row


def peak_mib(fn: Callable[[], Any], device: Any) -> float | None:
    """Peak memory of one call of ``fn`` above what was allocated before it, in MiB (None on CPU)."""
    if not _is_cuda(device):
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def peak_memory_gib(device: Any) -> float | None:
    """The process's peak allocated device memory so far, in GiB (None on CPU)."""
    if not _is_cuda(device):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


# --------------------------------------------------------------------------------------------------------
# Timing: medians after warm-up
# --------------------------------------------------------------------------------------------------------


def cuda_time_ms(fn: Callable[[], Any], warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median time of ``fn`` in milliseconds on CUDA, timed with events (triton.testing.do_bench)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def cpu_time_ms(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in milliseconds on the host."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def timer(device: Any, *, repeats: int = 20, warmup: int = 3) -> Callable[[Callable[[], Any]], float]:
    """``fn -> median ms``: CUDA events on a GPU, wall clock (``repeats`` after ``warmup``) on CPU."""
    if _is_cuda(device):
        return cuda_time_ms
    return functools.partial(cpu_time_ms, repeats=repeats, warmup=warmup)


class StepTimer:
    """Wall time of a loop's steps, each bracketed by device syncs; the first ``warmup`` are not kept.

    ``with timer.step(): ...`` around a step, or ``start()`` / ``stop()`` from callbacks."""

    def __init__(self, device: Any, warmup: int):
        self.device, self.warmup = device, warmup
        self.times: list[float] = []
        self._count, self._t0 = 0, 0.0

    def start(self) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        sync(self.device)
        if self._count >= self.warmup:
            self.times.append(time.perf_counter() - self._t0)
        self._count += 1

    @contextlib.contextmanager
    def step(self):
        self.start()
        yield
        self.stop()

    @property
    def timed(self) -> bool:
        """Whether the step that just ended was kept (past the warm-up)."""
        return self._count > self.warmup

    def median_ms(self) -> float:
        return statistics.median(self.times) * 1e3


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
