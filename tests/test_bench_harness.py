"""The benchmark harnesses run end to end on CPU with tiny models (their numbers mean nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

# Runs `sft-bench --help`, then each subcommand's --help and an argument error, in one fresh interpreter,
# and reports for each the heavy modules it left imported and its seconds.
_HELP_PROBE = """
import json, sys, time
from bench.cli import BENCHMARKS, main
calls = [[]] + [[name, "--help"] for name in BENCHMARKS] + [[name, "--no-such-option"] for name in BENCHMARKS]
report = []
for argv in calls:
    t0 = time.perf_counter()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    report.append({"argv": argv, "code": code, "heavy": heavy, "seconds": time.perf_counter() - t0})
print("REPORT " + json.dumps(report))
"""


def test_cli_help_and_argument_errors_import_neither_torch_nor_transformers():
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line[7:])
    heavy = [(r["argv"], r["heavy"]) for r in report if r["heavy"]]
    assert heavy == [], heavy  # the first call that imported one is the culprit
    assert report[0]["code"] == 0 and "gpu-suite" in proc.stdout and "compile" in proc.stdout
    for r in report[1:]:
        missing = r["code"] == 2 and r["argv"][0] == "compile"  # bench.compile may not be in the checkout
        assert r["code"] == (0 if r["argv"][1] == "--help" else 2) or missing, r


def test_train_speed_harness_cpu_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.train_speed",
            "--cpu-smoke",
            "--workload",
            "decoder",
            "--arms",
            "trainer,ours-torch,ours-packed",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "train_speed_cpu_smoke.json").read_text())
    results = {r["arm"]: r for r in record["results"]}
    assert results["trainer"]["status"] == "ok" and results["ours-torch"]["status"] == "ok"
    assert results["ours-packed"]["status"] == "skipped: needs CUDA"
    # Same model, same batches, same optimizer settings: the two arms' losses agree closely.
    assert abs(results["trainer"]["final_loss"] - results["ours-torch"]["final_loss"]) < 1e-2
    assert len(results["trainer"]["losses"]) == len(results["ours-torch"]["losses"]) == 3  # warm-up steps too
    assert (tmp_path / "train_speed_cpu_smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["environment"]["command"] and record["environment"]["versions"]["torch"]


def test_runtime_benchmark(tiny_bundle, tiny_checkpoint, tmp_path):
    from bench.runtime import run

    result = run(
        str(tiny_checkpoint),
        str(tiny_bundle),
        batch_sizes=[1, 4],
        seconds=0.2,
        threads=1,
        agreement_file=str(ROOT / "examples" / "demo" / "predict.txt"),
        out_dir=str(tmp_path),
    )
    assert [r["batch_size"] for r in result["throughput"]] == [1, 4]
    assert all(r["ort_texts_per_s"] > 0 and r["torch_texts_per_s"] > 0 for r in result["throughput"])
    assert result["agreement"]["argmax_agreement"] == 1.0 and result["agreement"]["max_abs_logit_diff"] < 1e-4
    assert (tmp_path / "runtime_cpu.json").is_file() and (tmp_path / "runtime_cpu.png").is_file()


def test_trainer_compare_same_batches_same_result(tiny_bert, tmp_path):
    """Fed sft-train's batches, with no dropout and no warmup, the Trainer ends where sft-train does; left to
    shuffle on its own (--defaults) it does not (so the comparison's agreement comes from the loop, not by
    construction). Each arm runs in its own process and reports its own speed, tokens and peak RSS."""
    from conftest import DEMO

    from bench.trainer_compare import main

    def run(*extra: str) -> dict:
        out = tmp_path / extra[0].strip("-")
        main(
            [
                "--train",
                str(DEMO / "train.csv"),
                "--eval",
                str(DEMO / "eval.csv"),
                "--model",
                str(tiny_bert),
                "--epochs",
                "3",
                "--batch-size",
                "16",
                "--lr",
                "3e-3",
                "--max-length",
                "48",
                "--dropout",
                "0",
                "--warmup-ratio",
                "0",
                "--out",
                str(out),
                *extra,
            ]
        )
        return json.loads((out / "trainer_compare_sequence-classification.json").read_text())

    same = {arm: r["metrics"]["loss"] for arm, r in run("--trainer-order", "sft")["results"].items()}
    assert abs(same["ours"] - same["trainer"]) < 1e-5, same  # measured: 2e-8
    record = run("--defaults", "--arms", "ours,ours-padded,trainer")
    own = {arm: r["metrics"]["loss"] for arm, r in record["results"].items()}
    assert own["ours"] == same["ours"]
    assert abs(own["ours"] - own["trainer"]) > 1e-3, own  # measured: 0.02
    assert abs(own["ours"] - own["ours-padded"]) < 1e-4, own  # unpadding changes the speed, not the model
    ours, padded, trainer = (record["results"][arm] for arm in ("ours", "ours-padded", "trainer"))
    # every arm trains on all rows for 3 epochs; ours and ours-padded on the very same batches
    assert (
        ours["train_samples"]
        == trainer["train_samples"]
        == 3 * (len((DEMO / "train.csv").read_text().splitlines()) - 1)
    )
    assert ours["real_tokens"] == padded["real_tokens"] == trainer["real_tokens"]
    assert ours["padded_positions"] == padded["padded_positions"] > ours["real_tokens"]
    for r in (ours, padded, trainer):
        assert 0 < r["padding_fraction"] < 1 and 100 < r["peak_rss_mb"] < 8000, r
        assert r["process_seconds"] > r["wall_seconds"] > r["train_seconds"] > 0, r
    rows = {r["arm"]: r for r in record["table"]}
    assert rows["trainer"]["speed_vs_trainer"] == 1.0 and rows["ours"]["speed_vs_trainer"] > 0
    assert len(record["loadavg_before"]) == 3
    assert (tmp_path / "defaults" / "trainer_compare_sequence-classification.png").is_file()


def test_committed_results_redraw_as_png(tmp_path):
    import shutil

    from bench.plots import draw

    records = [
        p
        for p in (ROOT / "bench" / "results").glob("*.json")
        if p.name.startswith(("runtime", "serve_load", "export_quality", "trainer_compare"))
    ]
    assert records, "no committed results to draw"
    for record in records:
        copy = shutil.copy(record, tmp_path / record.name)
        png = draw(Path(copy))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*.tmp"))


def test_load_benchmark_against_a_real_daemon(tiny_bundle, tiny_checkpoint, tmp_path):
    """sft-serve started as a process, closed-loop clients at two levels, a short soak, and the model
    alone."""
    from bench.load import main

    main(
        [
            str(tiny_bundle),
            str(tiny_checkpoint),
            "--servers",
            "sft-serve",
            "--clients",
            "1,4",
            "--seconds",
            "0.5",
            "--soak",
            "50",
            "--cold-starts",
            "1",
            "--ceiling-seconds",
            "0.2",
            "--out",
            str(tmp_path),
        ]
    )
    record = json.loads((tmp_path / "serve_load.json").read_text())
    served = record["results"][0]
    assert [lv["clients"] for lv in served["levels"]] == [1, 4]
    assert all(lv["ok"] > 0 and lv["errors"] == 0 for lv in served["levels"])
    assert served["soak"]["ok"] == 50 and served["exit_code_after_sigterm"] == 0
    assert [r["batch_size"] for r in record["model_alone"]] == [1, 4]
    assert record["summary"]["served_over_model_alone_at_4"] > 0
    assert (tmp_path / "serve_load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_arm_is_recorded_and_the_next_one_runs():
    """bench.common.run_arm: out of memory and other errors become the row's status, the benchmark goes on."""
    import torch
    import torch.nn.functional as F

    from bench.common import timer
    from bench.kernels_cross_entropy import bench_ce_shape

    def out_of_memory(x, t):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def broken(x, t):
        raise ValueError("bad shape")

    arms = {"oom": out_of_memory, "broken": broken, "eager": F.cross_entropy}
    once = timer("cpu", repeats=1, warmup=0)
    rows = bench_ce_shape(8, 16, arms, device="cpu", dtype=torch.float32, time_ms=once, copy_gbs=None)
    assert [r["status"] for r in rows] == ["oom", "error: ValueError: bad shape", "ok"]
    assert rows[2]["loss_err"] < 1e-5 and rows[2]["fwd_bwd_ms"] > 0 and "fwd_ms" not in rows[0]
