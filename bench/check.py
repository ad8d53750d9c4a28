"""Regression gate on kernel speed, by ratios (never absolute times, which differ by machine).

`sft-bench kernels` runs the kernel benchmarks (the full GPU set on CUDA, the tiny torch-path smoke run
on CPU) and, with --check, compares every speed-up ratio they report (`speedup_vs_<arm>`,
`fwd_vs_sdpa`, ...) against the committed baseline in bench/baselines/<benchmark>[_cpu_smoke].json: a
ratio below --fraction x its baseline fails (exit 1), naming the shape and the arm. --update-baseline
writes the current ratios as the new baseline.

    sft-bench kernels --check                   # GPU runner: real kernels against SDPA / eager / Liger
    sft-bench kernels --check --fraction 0.25   # CPU (CI): the torch reference path; tests the harness
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

BASELINES = Path(__file__).resolve().parent / "baselines"
BENCHMARKS = ["kernels_cross_entropy", "kernels_attention"]
_ID_FIELDS = ("bench", "N", "V", "B", "S", "H", "D", "causal", "dtype")
# Speed-up ratios (other arm's time / ours) as the benchmarks name them; errors are not ratios.
_RATIO = re.compile(r"^(speedup_vs_\w+|\w*_vs_sdpa\w*)$")


def extract_ratios(record: dict[str, Any]) -> dict[str, float]:
    """Every speed-up ratio in the record's lists of rows, keyed by section, shape and arm."""
    ratios = {}
    for section, rows in record.items():
        if not isinstance(rows, list):
            continue
        for row in rows:
            if not isinstance(row, dict):
                continue
            shape = ",".join(f"{k}={row[k]}" for k in _ID_FIELDS if k in row)
            for key, value in row.items():
                if _RATIO.match(key) and "err" not in key and isinstance(value, (int, float)):
                    ratios[f"{section}[{shape}].{key}"] = float(value)
    return ratios


def compare(current: dict[str, float], baseline: dict[str, float], fraction: float) -> list[str]:
    """Failures: ratios under fraction x baseline, and baseline ratios the run no longer reports."""
    failures = []
    for key, base in sorted(baseline.items()):
        if key not in current:
            failures.append(f"{key}: missing from this run (baseline {base:.3g})")
        elif current[key] < fraction * base:
            failures.append(f"{key}: {current[key]:.3g} < {fraction:g} x baseline {base:.3g}")
    return failures


def run_benchmarks(out_dir: Path, cpu: bool) -> dict[str, Path]:
    produced = {}
    for name in BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        args = ["--cpu-smoke", "--out", str(out_dir)] if cpu else ["--quick", "--out", str(out_dir)]
        module.main(args)
        suffix = "_cpu_smoke" if cpu else ""
        for path in (out_dir / f"{name}{suffix}.json", out_dir / f"{name}.json"):
            if path.is_file():
                produced[name + suffix] = path
                break
    return produced


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="sft-bench kernels", description=__doc__.splitlines()[0])
    p.add_argument(
        "--check", action="store_true", help="fail when a ratio falls below --fraction of its baseline"
    )
    p.add_argument("--fraction", type=float, default=0.8)
    p.add_argument("--cpu", action="store_true", help="the CPU smoke runs even when CUDA is present")
    p.add_argument("--baselines", type=Path, default=BASELINES)
    p.add_argument("--update-baseline", action="store_true")
    p.add_argument("--out", type=Path, help="keep the raw JSON here [default: a temporary directory]")
    p.add_argument(
        "--from", dest="from_dir", type=Path, help="check the JSON of an earlier run instead of running"
    )
    a = p.parse_args(argv)
    import torch

    cpu = a.cpu or not torch.cuda.is_available()
    if a.from_dir:
        produced = {p.stem: p for p in sorted(a.from_dir.glob("kernels_*.json"))}
        if cpu:  # the CPU smoke runs are checked against the *_cpu_smoke baselines
            produced = {(k if k.endswith("_cpu_smoke") else k + "_cpu_smoke"): v for k, v in produced.items()}
    else:
        produced = run_benchmarks(a.out or Path(tempfile.mkdtemp(prefix="sft-bench-kernels-")), cpu)
    failures = []
    for name, path in produced.items():
        ratios = extract_ratios(json.loads(path.read_text()))
        baseline_file = a.baselines / f"{name}.json"
        if a.update_baseline:
            a.baselines.mkdir(parents=True, exist_ok=True)
            baseline_file.write_text(json.dumps({"source": str(path), "ratios": ratios}, indent=2) + "\n")
            print(f"baseline {baseline_file}: {len(ratios)} ratios")
            continue
        if not a.check:
            continue
        if not baseline_file.is_file():
            failures.append(
                f"{name}: no baseline at {baseline_file} (run with --update-baseline on a reference run)"
            )
            continue
        baseline = json.loads(baseline_file.read_text())["ratios"]
        found = compare(ratios, baseline, a.fraction)
        print(f"{name}: {len(baseline) - len(found)}/{len(baseline)} ratios within {a.fraction:g} x baseline")
        failures += [f"{name}: {f}" for f in found]
    for f in failures:
        print("FAIL " + f, file=sys.stderr)
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
