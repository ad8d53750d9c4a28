"""The kernel-speed gate: ratio extraction and comparison, and a CPU run of `sft-bench kernels`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from bench.check import compare, device_slug, extract_ratios, find_baseline


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


def test_baselines_are_found_per_device_in_the_order_given(tmp_path):
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3" and device_slug("cpu") == "cpu"
    committed, runner = tmp_path / "committed", tmp_path / "runner"
    (runner / "nvidia-h200").mkdir(parents=True)
    (runner / "nvidia-h200" / "k.json").write_text("{}")
    assert find_baseline([committed, runner], "nvidia-h200", "k") == runner / "nvidia-h200" / "k.json"
    assert find_baseline([committed, runner], "nvidia-a100", "k") is None  # another GPU: no baseline
    committed.mkdir()
    (committed / "k.json").write_text("{}")  # a device-independent baseline in an earlier directory wins
    assert find_baseline([committed, runner], "nvidia-h200", "k") == committed / "k.json"


def _kernels(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", "kernels", "--cpu", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One CPU run of `sft-bench kernels` (the smoke benchmarks), recorded as baselines in bl/."""
    root = tmp_path_factory.mktemp("kernels")
    made = _kernels("--baselines", root / "bl", "--update-baseline", "--out", root / "a")
    assert made.returncode == 0, made.stderr[-2000:]
    return root


def test_cpu_run_writes_and_checks_baselines(cpu_run, tmp_path):
    import shutil

    bl, run = tmp_path / "bl", cpu_run / "a"
    shutil.copytree(cpu_run / "bl", bl)
    baselines = {p.name: json.loads(p.read_text()) for p in (bl / "cpu").glob("*.json")}
    assert set(baselines) == {"kernels_cross_entropy_cpu_smoke.json", "kernels_attention_cpu_smoke.json"}
    assert all(b["ratios"] and b["device"] == "cpu" and b["recorded"] for b in baselines.values())
    # CPU timings of tiny shapes are noise: fraction 0 checks only that every baseline ratio is still
    # reported.
    checked = _kernels("--baselines", bl, "--check", "--fraction", "0", "--from", run)
    assert checked.returncode == 0, checked.stderr[-2000:]
    # A baseline the run cannot meet fails the gate.
    for p in (bl / "cpu").glob("*.json"):
        data = json.loads(p.read_text())
        data["ratios"] = {k: v * 1e9 for k, v in data["ratios"].items()}
        p.write_text(json.dumps(data))
    failed = _kernels("--baselines", bl, "--check", "--from", run)
    assert failed.returncode == 1 and "FAIL " in failed.stderr


def test_first_check_on_a_new_device_records_and_later_ones_gate(cpu_run, tmp_path):
    """What .github/workflows/gpu.yml does on a new runner: no baseline -> record it and say so (exit 0);
    the next run finds it and is a real gate."""
    run = cpu_run / "a"
    empty, recorded, summary = (tmp_path / d for d in ("committed", "recorded", "summary.md"))
    without = _kernels("--check", "--from", run, "--baselines", empty)
    assert without.returncode == 1 and "no baseline for cpu" in without.stderr
    first = _kernels(
        "--check", "--from", run, "--baselines", empty, "--record-missing", recorded, "--summary", summary
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in (recorded / "cpu").glob("*.json")) == [
        "kernels_attention_cpu_smoke.json",
        "kernels_cross_entropy_cpu_smoke.json",
    ]
    assert first.stdout.count("recorded this run's") == 2 and "recorded this run's" in summary.read_text()
    later = _kernels(
        "--check", "--fraction", "0", "--from", run, "--baselines", empty, "--baselines", recorded
    )
    assert later.returncode == 0 and later.stdout.count("ratios within 0 x baseline") == 2, later.stdout
    for p in (recorded / "cpu").glob("*.json"):
        data = json.loads(p.read_text())
        data["ratios"] = {k: v * 1e9 for k, v in data["ratios"].items()}
        p.write_text(json.dumps(data))
    gated = _kernels("--check", "--from", run, "--baselines", empty, "--baselines", recorded)
    assert gated.returncode == 1 and "FAIL " in gated.stderr


def test_a_gpu_run_brought_back_is_recorded_for_its_device_on_any_machine(tmp_path):
    """The JSON a GPU suite run returns, recorded as that GPU's baseline here (no CUDA needed)."""
    from bench.check import main

    run = tmp_path / "files"
    run.mkdir()
    record = {
        "environment": {"device": "NVIDIA H200", "date": "2026-12-02T00:00:00+00:00", "versions": {}},
        "mode": "quick",
        "rows": [{"B": 2, "S": 8192, "H": 16, "D": 128, "causal": True, "fwd_vs_sdpa": 1.3}],
    }
    (run / "kernels_attention.json").write_text(json.dumps(record))
    main(["--update-baseline", "--from", str(run), "--baselines", str(tmp_path / "bl")])
    saved = json.loads((tmp_path / "bl" / "nvidia-h200" / "kernels_attention.json").read_text())
    assert saved["device"] == "NVIDIA H200"
    assert saved["ratios"] == {"rows[B=2,S=8192,H=16,D=128,causal=True].fwd_vs_sdpa": 1.3}
    main(["--check", "--from", str(run), "--baselines", str(tmp_path / "bl")])  # the same run passes
    record["rows"][0]["fwd_vs_sdpa"] = 0.5
    (run / "kernels_attention.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as failed:
        main(["--check", "--from", str(run), "--baselines", str(tmp_path / "bl")])
    assert failed.value.code == 1
