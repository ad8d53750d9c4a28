"""The import rules of the design card, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import tomllib
from conftest import ROOT


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(out.stdout.split())


def test_serve_never_imports_torch_transformers_or_optimum():
    loaded = _modules_after("import serve, serve.cli, serve.app, serve.predict, serve.runtime, serve.batcher")
    for heavy in ("torch", "transformers", "optimum"):
        assert heavy not in loaded, f"importing serve pulled in {heavy}"


def test_kernels_import_only_torch_and_triton():
    import pkgutil

    import kernels

    names = [f"kernels.{m.name}" for m in pkgutil.iter_modules(kernels.__path__)]
    loaded = _modules_after("import " + ", ".join(["kernels", *names]))
    for forbidden in ("transformers", "optimum", "onnxruntime", "sft", "serve", "export"):
        assert forbidden not in loaded, f"importing kernels pulled in {forbidden}"


def test_our_kernels_package_is_not_mistaken_for_the_kernel_hub():
    # transformers probes for Hugging Face's `kernels` distribution; ours is named sft-toolchain.
    out = subprocess.run(
        [sys.executable, "-c", "from transformers.utils import is_kernels_available as f; print(f())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.strip() == "False"


def test_console_scripts_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "kernels"
    assert set(project["scripts"]) == {"sft-train", "sft-export", "sft-predict", "sft-serve", "sft-bench"}
