"""The kernel-speed gate: ratio extraction and comparison, and a CPU run of `sft-bench kernels`."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from bench.check import compare, extract_ratios


def test_extract_and_compare_ratios():
    record = {
        "environment": {},
        "ce_summary": [
            {
                "N": 16384,
                "V": 131072,
                "speedup_vs_eager": 3.0,
                "speedup_vs_liger": 1.2,
                "ours_pct_copy_bw": 88.0,
            }
        ],
        "rows": [
            {
                "B": 2,
                "S": 8192,
                "H": 16,
                "D": 128,
                "causal": False,
                "fwd_vs_sdpa": 1.1,
                "max_abs_err_vs_sdpa": 0.01,
            }
        ],
    }
    ratios = extract_ratios(record)
    assert ratios == {
        "ce_summary[N=16384,V=131072].speedup_vs_eager": 3.0,
        "ce_summary[N=16384,V=131072].speedup_vs_liger": 1.2,
        "rows[B=2,S=8192,H=16,D=128,causal=False].fwd_vs_sdpa": 1.1,
    }
    assert compare(ratios, ratios, 0.8) == []
    slower = {**ratios, "ce_summary[N=16384,V=131072].speedup_vs_liger": 0.9}
    assert compare(slower, ratios, 0.8) == [
        "ce_summary[N=16384,V=131072].speedup_vs_liger: 0.9 < 0.8 x baseline 1.2"
    ]
    missing = {k: v for k, v in ratios.items() if "rows" not in k}
    assert compare(missing, ratios, 0.8)[0].endswith("missing from this run (baseline 1.1)")


def test_cpu_run_writes_and_checks_baselines(tmp_path):
    base = [sys.executable, "-m", "bench.cli", "kernels", "--cpu", "--baselines", str(tmp_path / "bl")]
    made = subprocess.run(
        base + ["--update-baseline", "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    baselines = {p.name: json.loads(p.read_text())["ratios"] for p in (tmp_path / "bl").glob("*.json")}
    assert set(baselines) == {"kernels_cross_entropy_cpu_smoke.json", "kernels_attention_cpu_smoke.json"}
    assert all(baselines.values())
    # CPU timings of tiny shapes are noise: fraction 0 checks only that every baseline ratio is still
    # reported.
    checked = subprocess.run(
        base + ["--check", "--fraction", "0", "--from", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]
    # A baseline the run cannot meet fails the gate.
    for p in (tmp_path / "bl").glob("*.json"):
        data = json.loads(p.read_text())
        data["ratios"] = {k: v * 1e9 for k, v in data["ratios"].items()}
        p.write_text(json.dumps(data))
    failed = subprocess.run(
        base + ["--check", "--from", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert failed.returncode == 1 and "FAIL " in failed.stderr
