#!/usr/bin/env bash
# Set up .venv (if needed), then run the test suite. Extra arguments go to pytest.
# Kernel tests run the Triton kernels on CPU through the Triton interpreter (TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Without a GPU the Triton kernels are tested through the interpreter on CPU tensors; with one,
# tests/test_kernels_cuda.py runs them compiled.
if [ -z "${TRITON_INTERPRET:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then export TRITON_INTERPRET=0; else export TRITON_INTERPRET=1; fi
fi
exec .venv/bin/python -m pytest "$@"
