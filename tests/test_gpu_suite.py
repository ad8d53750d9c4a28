"""The prepared GPU script (`sft-bench gpu-suite`) run on CPU with --dry-run: the same steps, tiny sizes,
the torch path, and the same kinds of files under $OUT, so it cannot rot before a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from bench.gpu_suite import MAX_FILES, junit_summary, plan


def test_dry_run_writes_the_file_set_with_environment(tmp_path):
    out = tmp_path / "OUT"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "gpu-suite", "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "gpu_suite.json",
        "gpu_suite.log",
        "kernels_attention.json",
        "kernels_attention.png",
        "kernels_cross_entropy_cpu_smoke.json",
        "kernels_cross_entropy_cpu_smoke.png",
        "train_speed_cpu_smoke.json",
        "train_speed_cpu_smoke.png",
    ]
    assert len(files) <= MAX_FILES
    suite = json.loads((out / "gpu_suite.json").read_text())
    assert suite["complete"] and suite["mode"] == "dry-run" and suite["failed_steps"] == []
    steps = {s["step"]: s for s in suite["steps"]}
    assert list(steps) == [
        "install",
        "preflight",
        "nvidia-smi",
        "kernel-tests",
        "kernels-ce",
        "kernels-attention",
        "train",
    ]
    assert steps["install"]["status"] == "skipped: dry run" and steps["preflight"]["status"] == "ok"
    # without CUDA every kernel test is collected and skipped, and the JUnit report says so
    tests = steps["kernel-tests"]["tests"]
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"] and tests["failed"] == []
    for name in ("kernels-ce", "kernels-attention", "train"):
        assert steps[name]["status"] == "ok" and all(steps[name]["files"].values()), steps[name]
    for record in [suite] + [json.loads((out / f).read_text()) for f in files if f.endswith(".json")]:
        env = record["environment"]
        assert env["device"] and env["command"] and env["date"]
        assert {"torch", "triton", "transformers", "cuda"} <= set(env["versions"])
        assert env["versions"]["torch"]
    train = json.loads((out / "train_speed_cpu_smoke.json").read_text())
    arms = {(r["workload"], r["arm"]): r["status"] for r in train["results"]}
    assert arms[("encoder", "ours-torch")] == arms[("decoder", "ours-torch")] == "ok"
    assert arms[("decoder", "ours-packed")] == "skipped: needs CUDA"
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "gpu_suite.log").read_text()
    assert "===== kernels-ce: ok" in log and "===== train: ok" in log


def test_a_step_over_its_budget_is_killed_and_the_suite_goes_on(tmp_path, monkeypatch):
    """A hung step is stopped at its budget, marked failed, and the later steps still run."""
    import bench.gpu_suite as suite

    def tiny_plan(*, out, dry_run, site, work, python=sys.executable):
        return [
            suite.Step(
                "hangs", [python, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2
            ),
            suite.Step(
                "writes", [python, "-c", f"open({str(out / 'x.json')!r}, 'w').write('{{}}')"], 30, ["x.json"]
            ),
        ]

    monkeypatch.setattr(suite, "plan", tiny_plan)
    monkeypatch.setattr(suite, "environment_with", lambda site, dry_run: {"device": "test"})
    rc = suite.main(["--dry-run", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "gpu_suite.json").read_text())
    hangs, writes = record["steps"]
    assert rc == 1 and record["failed_steps"] == ["hangs"]
    assert "budget" in hangs["status"] and hangs["seconds"] < 30
    assert writes["status"] == "ok" and writes["files"] == {"x.json": True}
    assert "started" in (tmp_path / "gpu_suite.log").read_text()


def test_gpu_plan_runs_every_train_arm_but_compile(tmp_path):
    from bench.train_speed import ARMS

    steps = {s.name: s for s in plan(out=tmp_path, dry_run=False, site=tmp_path / "site", work=tmp_path)}
    train = steps["train"].argv
    arms = train[train.index("--arms") + 1].split(",")
    assert arms == [a for a in ARMS if a != "ours-compile"]
    assert "--quick" in steps["kernels-ce"].argv and "--quick" in steps["kernels-attention"].argv
    assert sum(s.budget_s for s in steps.values()) <= 9 * 60 - 30


def test_junit_summary_lists_failures(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="t" name="ok"/>'
        '<testcase classname="t" name="bad"><failure message="assert 1 == 2&#10;more">x</failure></testcase>'
        '<testcase classname="t" name="skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    assert junit_summary(report) == {
        "tests": 3,
        "failures": 1,
        "errors": 0,
        "skipped": 1,
        "passed": 1,
        "failed": ["t::bad: assert 1 == 2"],
    }
    assert junit_summary(tmp_path / "missing.xml") is None
