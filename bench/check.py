"""Regression gate on kernel speed, by ratios (never absolute times, which differ by machine).

`sft-bench kernels` runs the kernel benchmarks (the full GPU set on CUDA, the tiny torch-path smoke run
on CPU) and, with --check, compares every speed-up ratio they report (`speedup_vs_<arm>`,
`fwd_vs_sdpa`, ...) against a baseline recorded on the same kind of device:
`<baselines>/<device>/<benchmark>[_cpu_smoke].json` (device as a slug, e.g. `nvidia-h100-80gb-hbm3`,
`cpu`), or `<baselines>/<benchmark>.json` for any device. --baselines may be given more than once (the
committed bench/baselines first, then a runner's own); the first that has the benchmark wins. A ratio
below --fraction x its baseline fails (exit 1), naming the shape and the arm.

A benchmark with no baseline fails the check, unless --record-missing DIR is given: then this run's
ratios are written as that device's baseline under DIR, said so on stdout (and in --summary), and later
runs are gated against it. --update-baseline overwrites the baselines in the first --baselines directory.

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


def device_slug(device: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``: a baseline directory name."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "unknown"


def find_baseline(dirs: list[Path], slug: str, name: str) -> Path | None:
    """The first ``dir/slug/name.json`` or ``dir/name.json`` that exists, in the order of ``dirs``."""
    for d in dirs:
        for path in (d / slug / f"{name}.json", d / f"{name}.json"):
            if path.is_file():
                return path
    return None


def write_baseline(path: Path, record: dict[str, Any], source: Path, ratios: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    env = record.get("environment", {})
    baseline = {
        "source": str(source),
        "device": env.get("device"),
        "recorded": env.get("date"),
        "versions": env.get("versions"),
        "ratios": ratios,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(baseline, indent=2) + "\n")
    tmp.replace(path)


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


def _run_name(path: Path) -> str:
    """The baseline name of a benchmark's JSON: CPU smoke runs are checked against *_cpu_smoke ones."""
    smoke = json.loads(path.read_text()).get("mode") == "cpu-smoke"
    return path.stem + "_cpu_smoke" if smoke and not path.stem.endswith("_cpu_smoke") else path.stem


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="sft-bench kernels", description=__doc__.splitlines()[0])
    p.add_argument(
        "--check", action="store_true", help="fail when a ratio falls below --fraction of its baseline"
    )
    p.add_argument("--fraction", type=float, default=0.8)
    p.add_argument("--cpu", action="store_true", help="the CPU smoke runs even when CUDA is present")
    p.add_argument(
        "--baselines",
        type=Path,
        action="append",
        help=f"a baseline directory; repeatable, first match wins [default: {BASELINES}]",
    )
    p.add_argument(
        "--record-missing",
        type=Path,
        metavar="DIR",
        help="with --check: a benchmark without a baseline records this run as its baseline under DIR",
    )
    p.add_argument("--update-baseline", action="store_true")
    p.add_argument("--summary", type=Path, help="append a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--out", type=Path, help="keep the raw JSON here [default: a temporary directory]")
    p.add_argument(
        "--from", dest="from_dir", type=Path, help="check the JSON of an earlier run instead of running"
    )
    a = p.parse_args(argv)
    dirs = a.baselines or [BASELINES]
    if a.from_dir:  # e.g. the files a GPU suite run brought back, checked or recorded on any machine
        produced = {_run_name(path): path for path in sorted(a.from_dir.glob("kernels_*.json"))}
    else:
        import torch

        cpu = a.cpu or not torch.cuda.is_available()
        produced = run_benchmarks(a.out or Path(tempfile.mkdtemp(prefix="sft-bench-kernels-")), cpu)
    failures, notes = [], []
    for name, path in produced.items():
        record = json.loads(path.read_text())
        ratios = extract_ratios(record)
        slug = device_slug(str(record.get("environment", {}).get("device", "unknown")))
        if not ratios:
            failures.append(f"{name}: the run reported no speed-up ratios (every arm failed?), see {path}")
            continue
        if a.update_baseline:
            target = dirs[0] / slug / f"{name}.json"
            write_baseline(target, record, path, ratios)
            print(f"baseline {target}: {len(ratios)} ratios")
            continue
        if not a.check:
            continue
        baseline_file = find_baseline(dirs, slug, name)
        if baseline_file is None and a.record_missing:
            target = a.record_missing / slug / f"{name}.json"
            write_baseline(target, record, path, ratios)
            notes.append(
                f"{name}: no baseline for {slug} in {', '.join(map(str, dirs))}: recorded this run's "
                f"{len(ratios)} ratios as the baseline in {target}; later runs on this device are gated "
                f"against it (commit it under bench/baselines/{slug}/ to keep it for every runner)"
            )
            continue
        if baseline_file is None:
            failures.append(
                f"{name}: no baseline for {slug} in {', '.join(map(str, dirs))} (record one with "
                "--update-baseline, or let a first run record it with --record-missing DIR)"
            )
            continue
        baseline = json.loads(baseline_file.read_text())["ratios"]
        found = compare(ratios, baseline, a.fraction)
        notes.append(
            f"{name}: {len(baseline) - len(found)}/{len(baseline)} ratios within {a.fraction:g} x "
            f"baseline {baseline_file}"
        )
        failures += [f"{name}: {f}" for f in found]
    for note in notes:
        print(note)
    for f in failures:
        print("FAIL " + f, file=sys.stderr)
    if a.summary:
        with open(a.summary, "a", encoding="utf-8") as f:
            f.write("### Kernel speed gate\n\n" + "".join(f"- {n}\n" for n in notes))
            f.write("".join(f"- **FAIL** {x}\n" for x in failures) + "\n")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
