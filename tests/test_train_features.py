"""sft-train beyond the basics: problem types, strategies end to end, best/early stop, exact resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import BIN, DEMO, assert_clean_error, demo_config, run_cli

from sft import train


def _cfg(tiny_bert, out, **kw):
    base = {"batch_size": 16, "lr": 5e-3, "tensorboard": False, "plots": False}
    return demo_config(tiny_bert, out, **{**base, **kw})


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_multi_label_and_regression(tiny_bert, tmp_path):
    rows = [{"text": f"parcel late and bill wrong {i}", "tags": "shipping|billing"} for i in range(8)]
    rows += [{"text": f"app crashes {i}", "tags": "technical"} for i in range(8)]
    data = tmp_path / "ml.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    r = train(
        _cfg(
            tiny_bert,
            tmp_path / "ml",
            train=str(data),
            eval=str(data),
            label_column="tags",
            problem_type="multi-label",
            max_steps=4,
        )
    )
    assert {"subset_accuracy", "f1_micro", "f1_macro"} <= set(r.metrics)
    config = json.loads((tmp_path / "ml" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and len(config["id2label"]) == 3

    reg = tmp_path / "reg.jsonl"
    reg.write_text("\n".join(json.dumps({"text": f"score {i}", "y": i / 10}) for i in range(16)))
    r = train(
        _cfg(
            tiny_bert,
            tmp_path / "reg",
            train=str(reg),
            eval=str(reg),
            label_column="y",
            problem_type="regression",
            max_steps=3,
        )
    )
    config = json.loads((tmp_path / "reg" / "config.json").read_text())
    assert r.metrics["rmse"] >= 0 and config["problem_type"] == "regression" and len(config["id2label"]) == 1


def test_gradient_accumulation_matches_a_larger_batch(tiny_bert, tmp_path):
    # Dropout off and equal-size micro-batches: 2 x 8 accumulated == one batch of 16, up to float rounding.
    a = train(_cfg(tiny_bert, tmp_path / "a", batch_size=16, max_steps=3, dropout=0.0, eval=None))
    b = train(
        _cfg(tiny_bert, tmp_path / "b", batch_size=8, grad_accum=2, max_steps=3, dropout=0.0, eval=None)
    )
    wa, wb = _weights(a.output_dir), _weights(b.output_dir)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert a.final_train_loss == pytest.approx(b.final_train_loss, rel=1e-4)


def test_lora_is_merged_on_save_and_best_checkpoint_kept(tiny_bert, tmp_path):
    r = train(
        _cfg(
            tiny_bert,
            tmp_path / "lora",
            lora_r=4,
            lora_targets=["query", "value"],
            max_steps=6,
            eval_every=2,
            best_metric="accuracy",
        )
    )
    names = set(_weights(r.output_dir))
    assert not any("lora" in n for n in names) and "classifier.weight" in names
    log = [json.loads(x) for x in (r.output_dir / "train_log.jsonl").read_text().splitlines()]
    evals = [x for x in log if x["event"] == "eval"]
    best = max(evals, key=lambda x: x["accuracy"])
    assert r.metrics["accuracy"] == best["accuracy"] and len(evals) == 3


def test_early_stopping(tiny_bert, tmp_path):
    # At lr 1e-12 no prediction flips, so accuracy never improves: stop `patience` evaluations after
    # the first.
    r = train(
        _cfg(
            tiny_bert,
            tmp_path / "es",
            lr=1e-12,
            eval_every=1,
            best_metric="accuracy",
            patience=2,
            max_steps=50,
        )
    )
    assert r.steps == 3


def test_unsupervised_joint_loss_and_gradual_unfreezing(tiny_bert, tmp_path):
    r = train(
        _cfg(tiny_bert, tmp_path / "u", unsup_weight=0.5, unfreeze_every=2, max_steps=4, layer_lr_decay=0.8)
    )
    log = [json.loads(x) for x in (r.output_dir / "train_log.jsonl").read_text().splitlines()]
    assert [x["groups_trainable"] for x in log if x["event"] == "unfreeze"] == [2, 3]
    assert "cls.predictions.bias" not in _weights(r.output_dir)  # the MLM head is not saved


def test_bad_strategy_options_exit_2(tiny_bert, tmp_path):
    base = [
        "--train",
        str(DEMO / "train.csv"),
        "--model",
        str(tiny_bert),
        "--output",
        str(tmp_path / "x"),
        "--no-progress",
    ]
    assert_clean_error(run_cli("sft-train", *base, "--freeze", ".*"), "every parameter would be frozen")
    assert_clean_error(
        run_cli("sft-train", *base, "--lora-r", "4", "--lora-targets", "LayerNorm"), "LayerNorm"
    )
    assert_clean_error(run_cli("sft-train", *base, "--patience", "2"), "--patience needs --best-metric")
    assert_clean_error(run_cli("sft-train", *base, "--fsdp", "--lora-r", "4"), "--fsdp with --lora-r")
    assert not (tmp_path / "x").exists()


def _train_cmd(tiny_bert, out, *extra):
    return [
        str(BIN / "sft-train"),
        "--train",
        str(DEMO / "train.csv"),
        "--model",
        str(tiny_bert),
        "--output",
        str(out),
        "--max-steps",
        "24",
        "--save-every",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--max-length",
        "32",
        "--no-progress",
        "--no-tensorboard",
        "--no-plots",
        *extra,
    ]


def test_kill_9_then_rerun_resumes_to_the_same_result(tiny_bert, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(tiny_bert, straight), check=True, capture_output=True)

    out = tmp_path / "resumed"
    run_dir = tmp_path / ".resumed.run"
    proc = subprocess.Popen(_train_cmd(tiny_bert, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "step-00000012").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the output must not exist before training finished"
    assert (run_dir / "step-00000012").exists()

    rerun = subprocess.run(_train_cmd(tiny_bert, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stdout
    a, b = json.loads((straight / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    assert a["train"]["final_train_loss"] == b["train"]["final_train_loss"]  # bitwise on CPU
    wa, wb = _weights(straight), _weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not run_dir.exists()


def test_resume_refuses_changed_options(tiny_bert, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen(_train_cmd(tiny_bert, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (tmp_path / ".o.run" / "step-00000004").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    changed = subprocess.run(_train_cmd(tiny_bert, out, "--lr", "1e-3"), capture_output=True, text=True)
    assert changed.returncode == 2 and "an unfinished run with other options (lr" in changed.stderr


@pytest.mark.parametrize("mode,port", [("ddp", "29531"), ("fsdp", "29532")])
def test_two_processes_match_one_process(tiny_bert, tmp_path, mode, port):
    """DDP, and FSDP with its sharded states gathered for the resumable states, the best model and the
    output."""
    common = [
        "--train",
        str(DEMO / "train.csv"),
        "--model",
        str(tiny_bert),
        "--max-steps",
        "4",
        "--max-length",
        "32",
        "--dropout",
        "0",
        "--no-progress",
        "--no-tensorboard",
        "--no-plots",
        "--lr",
        "3e-3",
    ]
    if mode == "fsdp":
        common += [
            "--eval",
            str(DEMO / "eval.csv"),
            "--eval-every",
            "2",
            "--best-metric",
            "loss",
            "--grad-accum",
            "2",
        ]
    one = subprocess.run(
        [str(BIN / "sft-train"), *common, "--batch-size", "8", "--output", str(tmp_path / "one")],
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = ["--fsdp"] if mode == "fsdp" else []
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            port,
            "-m",
            "sft.cli",
            *common,
            *flags,
            "--batch-size",
            "4",
            "--output",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_fsdp_kill_9_then_rerun_resumes_to_the_same_result(tiny_bert, tmp_path):
    """Two FSDP processes killed mid-run (torchrun and its workers), rerun: the gathered states are scattered
    back, each rank gets its own RNG stream back (dropout is on), and the run ends bitwise where an
    uninterrupted one does. Resuming with another number of processes is refused."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(out, port):
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            port,
            "-m",
            "sft.cli",
            "--train",
            str(DEMO / "train.csv"),
            "--model",
            str(tiny_bert),
            "--fsdp",
            "--max-steps",
            "8",
            "--save-every",
            "2",
            "--batch-size",
            "4",
            "--max-length",
            "32",
            "--lr",
            "3e-3",
            "--no-progress",
            "--no-tensorboard",
            "--no-plots",
            "--output",
            str(out),
        ]

    straight = subprocess.run(
        cmd(tmp_path / "straight", "29533"), capture_output=True, text=True, env=env, timeout=600
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    out, run_dir = tmp_path / "resumed", tmp_path / ".resumed.run"
    proc = subprocess.Popen(cmd(out, "29534"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (run_dir / "step-00000004").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    for pid in [proc.pid, *_children(proc.pid)]:  # torchrun starts each worker in a session of its own
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert (run_dir / "step-00000004").exists() and not out.exists()

    one_process = subprocess.run(
        [sys.executable, *cmd(out, "29535")[7:]], capture_output=True, text=True, env=env, timeout=600
    )
    assert_clean_error(one_process, "an unfinished run with 2 processes, now 1")
    rerun = subprocess.run(cmd(out, "29535"), capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["train"]["final_train_loss"] == b["train"]["final_train_loss"]
    wa, wb = _weights(tmp_path / "straight"), _weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _children(pid: int) -> list[int]:
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(stat))
    return found


@pytest.mark.parametrize("unpad", [True, False])
def test_the_heap_is_kept_flat_the_way_each_path_measured_cheapest(tiny_bert, tmp_path, monkeypatch, unpad):
    """Padding-free: a 1 MiB mmap threshold, set once. Padded: malloc_trim every 10 steps (the threshold
    made every padded step 53 % slower)."""
    import sft.memory

    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(("trim", pad))

        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))

    monkeypatch.setattr(sft.memory, "_glibc", FakeLibc)
    train(_cfg(tiny_bert, tmp_path, max_steps=25, unpad=unpad))
    if unpad:
        assert calls == [("mallopt", -3, 1 << 20)]
    else:
        assert calls == [("trim", 0), ("trim", 0)]  # steps 10 and 20
