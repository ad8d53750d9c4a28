"""One prepared run for a lent GPU: kernel tests, kernel benchmarks and a short training benchmark.

    python3 -m bench.gpu_suite --out "$OUT"              # on the GPU machine, .whl/ carried (see README)
    sft-bench gpu-suite --dry-run --out /tmp/suite       # CPU: the same steps, tiny sizes, torch path

Steps, in order, each in its own process group with a hard time budget (killed when it runs over, and the
suite goes on, so a failing step still leaves the others' results and the log):

  install            pip-installs the carried wheels (.whl/) into --site, put first on the steps' PYTHONPATH
  preflight          which of the modules the steps use are importable, and their versions (fails when
                     torch, triton, transformers or pytest is missing)
  nvidia-smi         the device as the driver sees it
  kernel-tests       pytest tests/test_kernels_cuda.py (compiled Triton, TRITON_INTERPRET unset)
  kernels-ce         bench.kernels_cross_entropy --quick
  kernels-attention  bench.kernels_attention --quick
  train              bench.train_speed, encoder and decoder, every arm but torch.compile, a few steps

Writes at most 8 files directly under --out: gpu_suite.log (every step's output), gpu_suite.json (each
step's command, exit status, seconds and files, the kernel-test counts and failures, the environment), and
the benchmarks' JSON and PNG. Every JSON carries the device, the versions (torch, triton, transformers,
CUDA), the command and the date. Exit status 1 when a step failed or ran out of time.

--dry-run runs the same steps on CPU: no install, the kernel tests (they skip without CUDA), the benchmarks'
--cpu-smoke modes (tiny shapes, the torch reference path) and train with tiny models and only the arms
that run on CPU. tests/test_gpu_suite.py runs it in CI, so the suite cannot rot unseen.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
MAX_FILES = 8
TOTAL_BUDGET_S = 500  # the device call must stay under 9 minutes, machine start not counted
# torch.compile arms are left out: their compile time would eat the budget.
SLOW_TRAIN_ARMS = {"ours-compile"}
REQUIRED = ("torch", "triton", "transformers", "pytest")
OPTIONAL = ("tokenizers", "accelerate", "liger_kernel", "matplotlib", "datasets", "optimum")
# Run in the steps' environment: finds each module's spec (no import) and its installed version.
_PREFLIGHT = """
import importlib.metadata as md, importlib.util as u, sys
dist = {"liger_kernel": "liger-kernel"}
missing = []
for m in sys.argv[1].split(",") + sys.argv[2].split(","):
    spec = u.find_spec(m)
    try:
        version = md.version(dist.get(m, m))
    except md.PackageNotFoundError:
        version = None
    print(f"{m:<14} {'MISSING' if spec is None else version or 'found'}"
          f"{'' if spec is None else '  ' + str(spec.origin)}")
    if spec is None and m in sys.argv[1].split(","):
        missing.append(m)
print(f"python {sys.version.split()[0]} at {sys.executable}")
sys.exit(f"missing required modules: {', '.join(missing)}" if missing else 0)
"""


@dataclass
class Step:
    name: str
    argv: list[str]
    budget_s: float
    produces: list[str] = field(default_factory=list)
    skip: str | None = None  # why the step does not run this time


def plan(*, out: Path, dry_run: bool, site: Path, work: Path, python: str = sys.executable) -> list[Step]:
    """The suite's steps for a GPU run, or for the CPU dry run (same steps, tiny sizes)."""
    from bench.train_speed import ARMS, CUDA_ONLY

    wheels = sorted(WHEELS.glob("*.whl"))
    install = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    install += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
    if dry_run:
        install_skip = "dry run"
    else:
        install_skip = None if wheels else f"no wheels in {WHEELS} (run bash ../shared/gpu/wheels.sh)"
    tests = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels_cuda.py"]
    tests += [f"--junitxml={work / 'kernel_tests.xml'}"]
    mode = ["--cpu-smoke"] if dry_run else ["--quick"]
    smoke = "_cpu_smoke" if dry_run else ""
    if dry_run:  # on CPU, the arms that need CUDA are recorded as skipped without starting a process
        arms = ["ours-torch", *sorted(CUDA_ONLY)]
        train = ["--cpu-smoke", "--steps", "1", "--warmup", "1"]
    else:
        arms = [arm for arm in ARMS if arm not in SLOW_TRAIN_ARMS]
        train = ["--steps", "6", "--warmup", "2", "--arm-timeout", "60"]
    bench = [python, "-m"]
    return [
        Step("install", install, 45, skip=install_skip),
        Step("preflight", [python, "-c", _PREFLIGHT, ",".join(REQUIRED), ",".join(OPTIONAL)], 10),
        Step("nvidia-smi", ["nvidia-smi"], 10, skip=_no_nvidia_smi(dry_run)),
        Step("kernel-tests", tests, 100),
        Step(
            "kernels-ce",
            [*bench, "bench.kernels_cross_entropy", *mode, "--out", str(out)],
            75,
            [f"kernels_cross_entropy{smoke}.json", f"kernels_cross_entropy{smoke}.png"],
        ),
        Step(
            "kernels-attention",
            [*bench, "bench.kernels_attention", *mode, "--out", str(out)],
            80,
            ["kernels_attention.json", "kernels_attention.png"],
        ),
        Step(
            "train",
            [*bench, "bench.train_speed", "--workload", "all", "--arms", ",".join(arms), *train]
            + ["--out", str(out)],
            180,
            [f"train_speed{smoke}.json", f"train_speed{smoke}.png"],
        ),
    ]


def _no_nvidia_smi(dry_run: bool) -> str | None:
    """On CPU the dry run records nvidia-smi as skipped; on the GPU machine a missing one is a failure."""
    return "dry run, no nvidia-smi on PATH" if dry_run and not shutil.which("nvidia-smi") else None


def step_env(*, dry_run: bool, site: Path) -> dict[str, str]:
    """The steps' environment: the installed wheels first on the path, then this checkout."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    paths = [str(ROOT), env.get("PYTHONPATH", "")]
    if not dry_run:
        paths.insert(0, str(site))
        env.pop("TRITON_INTERPRET", None)  # the real compiler, never the interpreter, on the GPU
    else:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def run_step(step: Step, *, env: dict[str, str], timeout_s: float, log: IO[str]) -> dict[str, Any]:
    """Run one step with its output copied to the log and to stdout; kill its process group on timeout."""
    record: dict[str, Any] = {"step": step.name, "command": shlex.join(step.argv), "budget_s": timeout_s}
    header = f"\n===== {step.name} (budget {timeout_s:.0f} s): {record['command']}"
    _emit(log, header[:2000] + "\n")
    if step.skip:
        _emit(log, f"===== {step.name}: skipped ({step.skip})\n")
        return {**record, "status": f"skipped: {step.skip}"}
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            step.argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, so a timeout ends its children too
        )
    except OSError as exc:
        _emit(log, f"===== {step.name}: could not start: {exc}\n")
        return {**record, "status": f"failed: {exc}", "seconds": 0.0}
    reader = threading.Thread(target=_copy_lines, args=(proc.stdout, log), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1.0, timeout_s))
        status = "ok" if rc == 0 else f"failed: exit status {rc}"
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        rc, status = None, f"failed: ran past its {timeout_s:.0f} s budget and was killed"
    reader.join(timeout=10)
    seconds = round(time.monotonic() - t0, 1)
    _emit(log, f"===== {step.name}: {status} in {seconds} s\n")
    return {**record, "status": status, "exit_status": rc, "seconds": seconds}


def _copy_lines(stream: IO[str], log: IO[str]) -> None:
    for line in stream:
        _emit(log, line)


_emit_lock = threading.Lock()


def _emit(log: IO[str], text: str) -> None:
    with _emit_lock:
        log.write(text)
        log.flush()
        sys.stdout.write(text)
        sys.stdout.flush()


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def junit_summary(path: Path) -> dict[str, Any] | None:
    """Counts of a pytest JUnit XML report, and the failing tests with the first line of their message."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable report: {exc}"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {"error": "no testsuite in the report"}
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in suite.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            message = (bad.get("message") or "").splitlines()[:1]
            failed.append(f"{case.get('classname')}::{case.get('name')}: {''.join(message)}"[:300])
    passed = counts["tests"] - sum(counts[k] for k in ("failures", "errors", "skipped"))
    return {**counts, "passed": passed, "failed": failed}


def environment_with(site: Path, dry_run: bool) -> dict[str, Any]:
    """bench.common.environment() as the steps saw it (the installed wheels' versions first)."""
    if not dry_run and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    from bench.common import environment

    return environment()


def write_record(path: Path, record: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sft-bench gpu-suite", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the log, JSON and PNGs ($OUT)")
    p.add_argument("--dry-run", action="store_true", help="CPU: the same steps, tiny sizes, torch path")
    p.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where the wheels are installed")
    p.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for the whole suite")
    p.add_argument("--only", help="comma-separated step names to run (the others are recorded as skipped)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + a.budget
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))  # scratch outside $OUT (the file count is capped)
    steps = plan(out=a.out, dry_run=a.dry_run, site=a.site, work=work)
    if a.only:
        wanted = set(a.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            p.error(
                f"--only: unknown step {sorted(unknown)[0]!r} (steps: {', '.join(s.name for s in steps)})"
            )
        for s in steps:
            if s.name not in wanted:
                s.skip = s.skip or "not in --only"
    env = step_env(dry_run=a.dry_run, site=a.site)
    record_path = a.out / "gpu_suite.json"
    record: dict[str, Any] = {
        "suite": "gpu-suite",
        "mode": "dry-run" if a.dry_run else "gpu",
        "command": shlex.join([sys.executable, "-m", "bench.gpu_suite", *(argv or sys.argv[1:])]),
        "budget_s": a.budget,
        "complete": False,
        "steps": [],
    }
    with open(a.out / "gpu_suite.log", "w", encoding="utf-8") as log:
        for step in steps:
            left = deadline - time.monotonic()
            if left < 5 and not step.skip:
                step.skip = f"the suite's {a.budget:.0f} s budget is spent"
            result = run_step(step, env=env, timeout_s=min(step.budget_s, max(left, 1)), log=log)
            result["files"] = {name: (a.out / name).is_file() for name in step.produces}
            if step.name == "kernel-tests":
                result["tests"] = junit_summary(work / "kernel_tests.xml")
            record["steps"].append(result)
            write_record(record_path, record)  # so far: a suite killed from outside still says how far
        record["environment"] = environment_with(a.site, a.dry_run)
        failed = [s["step"] for s in record["steps"] if s["status"].startswith("failed")]
        files = sorted(f.name for f in a.out.iterdir() if not f.name.startswith("."))
        if "gpu_suite.json" not in files:
            files = sorted([*files, "gpu_suite.json"])
        record.update(complete=True, failed_steps=failed, files=files, too_many_files=len(files) > MAX_FILES)
        write_record(record_path, record)
        summary = "; ".join(f"{s['step']} {s['status']}" for s in record["steps"])
        _emit(log, f"\n===== gpu-suite: {summary}\n===== files under {a.out}: {', '.join(files)}\n")
    return 1 if failed or len(files) > MAX_FILES else 0


if __name__ == "__main__":
    raise SystemExit(main())
