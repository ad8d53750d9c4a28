"""Every CLI's --help and argument errors come back at once: neither torch, transformers nor optimum is
imported before the arguments are parsed. sft-train's options are grouped into panels."""

from __future__ import annotations

import dataclasses
import resource
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from sft.config import TrainConfig

HEAVY = ("torch", "transformers", "optimum")
CLIS = (
    "sft-train",
    "sft-export",
    "sft-predict",
    "sft-serve",
    "sft-bench",
)
# The budget is 0.3 s on a quiet machine. Shared hosts and CI runners stretch wall time many-fold, so the
# test bounds the CPU time the process used (importing torch alone takes more than this).
BOUND_CPU_S = 1.0

# Runs a console script's function as `<name> <args>` and reports which heavy packages it imported.
WRAPPER = """
import importlib, sys
name, target, *args = sys.argv[1:]
module, _, function = target.partition(":")
sys.argv = [name, *args]
try:
    getattr(importlib.import_module(module), function)()
finally:
    heavy = [m for m in {heavy!r} if m in sys.modules]
    print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def _target(name: str) -> str:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == name]
    return script.value


def _run(name: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """The completed process and the CPU seconds (user + system) it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER.format(heavy=HEAVY), name, _target(name), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _heavy(proc: subprocess.CompletedProcess) -> list[str]:
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


@pytest.mark.parametrize("name", CLIS)
def test_help_imports_no_heavy_package_and_is_quick(name):
    proc, seconds = _run(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout or "usage:" in proc.stdout
    assert _heavy(proc) == [], f"{name} --help imported {_heavy(proc)}"
    assert seconds < BOUND_CPU_S, f"{name} --help took {seconds:.2f} s of CPU"


@pytest.mark.parametrize("name", CLIS)
def test_argument_errors_import_no_heavy_package(name):
    proc, seconds = _run(name, "--no-such-option")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "no-such-option" in proc.stderr
    assert _heavy(proc) == [], f"{name} with a bad option imported {_heavy(proc)}"
    assert seconds < BOUND_CPU_S, f"{name} with a bad option took {seconds:.2f} s of CPU"


def test_train_help_groups_every_option_into_a_panel():
    from sft.cli import PANELS

    placed = [name for names in PANELS.values() for name in names]
    assert sorted(placed) == sorted(f.name for f in dataclasses.fields(TrainConfig))  # each exactly once
    proc, _ = _run("sft-train", "--help")
    sections = [
        line[:-1] for line in proc.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")
    ]
    assert sections == ["Options", *PANELS]
    data, optimisation = proc.stdout.index("\nData:"), proc.stdout.index("\nOptimisation:")
    assert data < proc.stdout.index("--label-column") < optimisation < proc.stdout.index("--class-weights")
