"""bench.compile: the ahead-of-time compile audit and its CI gate (issue 14).

- the gate fails on purpose: a tiny kernel with an oversized tile (shared memory over sm_80's limit) is
  compiled for sm_80 through the same code path as the audit, and gate_failures names it; a small tile passes;
- the committed audit (bench/results/compile_audit_after.json) matches the tile tables the code has now: for
  every audited launch variant, the configs the autotuners keep today are the ones the audit compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from triton.runtime.jit import JITFunction  # noqa: E402

from bench import compile as C  # noqa: E402


def _tiny_mm(A, B, Out, K, BM: tl.constexpr, BK: tl.constexpr):
    """(BM x K) @ (K x BM), streaming BK-wide slices of A and B (num_stages buffers in shared memory)."""
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    acc = tl.zeros([BM, BM], dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(A + offs_m[:, None] * K + (k + offs_k)[None, :])
        b = tl.load(B + (k + offs_k)[:, None] * BM + offs_m[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(Out + offs_m[:, None] * BM + offs_m[None, :], acc)


# compiled-mode even when the test session runs the interpreter (TRITON_INTERPRET=1): the audit compiles
_tiny_mm = JITFunction(_tiny_mm)


def _tiny_record(name: str, bm: int, bk: int, stages: int, arch: int = 80):
    a = torch.empty(4096 * 128, dtype=torch.float16, device="meta")
    out = torch.empty(bm * bm, dtype=torch.float32, device="meta")
    return C.make_record(
        scenario=name,
        arch=arch,
        kernel="tiny_mm",
        fn=_tiny_mm,
        kwargs={"A": a, "B": a, "Out": out, "K": 4096},
        cfg={"kwargs": {"BM": bm, "BK": bk}, "num_warps": 4, "num_stages": stages},
        dtype="fp16",
    )


def _rerun_compiled(test_name: str) -> bool:
    """Triton's interpreter patches the language objects the compiler also uses, so in an interpreter
    session (the default CPU suite) the compile tests re-run themselves in a pytest subprocess without it."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", f"{__file__}::{test_name}", "-q", "-x", "-p", "no:cacheprovider"],
        env={**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return True


def test_gate_fails_on_an_oversized_config(monkeypatch, tmp_path):
    if _rerun_compiled("test_gate_fails_on_an_oversized_config"):
        return
    monkeypatch.setattr(C, "CACHE_DIR", tmp_path)
    # 11 pipelined buffers of 64x64 + 64x64 fp16 tiles = 176 KiB > 163 KiB; 16x16 tiles: 1 KiB
    records = [_tiny_record("tiny mm big", 64, 64, 12), _tiny_record("tiny mm small", 16, 16, 2)]
    t0 = time.perf_counter()
    audit = C.finish_audit(records, [], (80,), False, False, 1, 60.0, t0, log=lambda *a: None)
    by_name = {r["scenario"]: r for r in audit["records"]}
    big, small = by_name["tiny mm big"], by_name["tiny mm small"]
    assert big["status"] == small["status"] == "ok"
    assert big["shared"] > C.smem_limit(80) and not big["fits"]
    assert small["fits"] and not small["spills"] and small["regs"]
    fails = C.gate_failures(audit)
    assert any("tiny mm big" in f and f"> {C.smem_limit(80)}" in f for f in fails), fails
    assert any("tiny mm big" in f and "no autotune config that fits" in f for f in fails), fails
    assert not any("tiny mm small" in f for f in fails), fails
    assert "| sm_80 | tiny mm big | tiny_mm |" in C.markdown(audit, "tiny")


def test_gate_fails_on_a_compile_error(monkeypatch, tmp_path):
    if _rerun_compiled("test_gate_fails_on_a_compile_error"):
        return
    monkeypatch.setattr(C, "CACHE_DIR", tmp_path)
    bad = _tiny_record("tiny mm bad", 16, 48, 2)  # tl.arange needs a power of two: a compile error
    audit = C.finish_audit([bad], [], (80,), False, False, 1, 60.0, time.perf_counter(), log=lambda *a: None)
    assert audit["records"][0]["status"] == "error"
    assert any("compile error" in f for f in C.gate_failures(audit))


AFTER = ROOT / "bench" / "results" / "compile_audit_after.json"


@pytest.mark.skipif(not AFTER.exists(), reason="no committed audit")
def test_committed_audit_matches_the_tile_tables():
    """Changing kernels.tuning without re-running the audit fails here (the audit is what vouches for the
    tables)."""
    from bench.compile_targets import capture, scenarios

    audit = json.loads(AFTER.read_text())
    compiled = {}
    for r in audit["records"]:
        if r["tuned"] and r["kept"]:
            compiled.setdefault((r["scenario"], r["arch"], r["kernel"]), set()).add(r["config"])
    by_name = {sc.name: sc for sc in scenarios(full=True)}
    assert compiled
    checked = 0
    for (name, arch, kernel), configs in compiled.items():
        launches, refused = capture(by_name[name], arch, C.smem_limit(arch))
        assert refused is None, refused
        now = {
            C.config_label(C._cfg_dict(c))
            for ln in launches
            if C.SHORT.get(ln.kernel, ln.kernel) == kernel
            for c in ln.kept
        }
        assert now == configs, (name, arch, kernel, sorted(now ^ configs))
        checked += 1
    assert checked == len(compiled)


def test_cli_refuses_the_interpreter(monkeypatch, capsys):
    monkeypatch.setitem(os.environ, "TRITON_INTERPRET", "1")
    assert C.main(["--gate"]) == 2
    assert "unset TRITON_INTERPRET" in capsys.readouterr().err
