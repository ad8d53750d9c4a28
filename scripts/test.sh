#!/usr/bin/env bash
# Set up .venv (if needed), then run the test suite. Extra arguments go to pytest.
# Kernel tests run the Triton kernels on CPU through the Triton interpreter (TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
