"""serve's import graph has no cycles, and the CLIs answer --help and bad arguments without heavy imports."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

HEAVY = ("torch", "transformers", "optimum", "onnxruntime", "numpy", "rich")


def _serve_imports() -> dict[str, set[str]]:
    """Module -> the serve modules it imports (at any depth of its code, lazily or not)."""
    graph = {}
    for path in sorted((ROOT / "serve").glob("*.py")):
        name = path.stem
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("serve."):
                deps.add(node.module.split(".")[1])
        graph[name] = {d.split(".")[0] for d in deps} - {name}
    return graph


def test_serve_modules_import_each_other_one_way():
    graph = _serve_imports()
    graph.pop("__init__")  # the package re-exports lazily; it is no module's dependency
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, name]))
        if state.get(name) == 2 or name not in graph:
            return
        state[name] = 1
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        state[name] = 2

    for name in graph:
        visit(name, [])


def _loaded_after(script: str, *args: str) -> tuple[set[str], str]:
    code = (
        "import sys, runpy\n"
        f"sys.argv = {[script, *args]!r}\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / '.venv' / 'bin' / script)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = next(x for x in out.stderr.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:]), out.stdout + out.stderr


@pytest.mark.parametrize("script", ["sft-predict", "sft-serve", "sft-export"])
@pytest.mark.parametrize("args", [("--help",), ("--no-such-option",), ("x", "--port", "notanumber")])
def test_help_and_argument_errors_stay_light(script, args):
    if script == "sft-export" and "--port" in args:
        args = ("x", "--opset", "notanumber")
    if script == "sft-predict" and "--port" in args:
        args = ("x", "--batch-size", "notanumber")
    loaded, output = _loaded_after(script, *args)  # (no wall-clock bound: the test machine is shared)
    assert "Usage:" in output
    # serve's CLIs load nothing heavy at all; sft-export's package init may bring numpy, never torch & co.
    forbidden = HEAVY if script != "sft-export" else ("torch", "transformers", "optimum", "onnxruntime")
    heavy = sorted(m for m in forbidden if m in loaded)
    assert not heavy, f"{script} {' '.join(args)} imported {heavy}"
