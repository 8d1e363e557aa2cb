#!/usr/bin/env bash
# Set up .venv with a2b_pipeline and its dev tools. Idempotent.
#
# torch: if the venv already has a torch (e.g. your CUDA build), it is kept. Otherwise
# TORCH_SPEC is installed first; its default is the CPU build torch==2.13.0, which avoids
# pulling a multi-GB CUDA wheel on CPU-only machines. GPU users: TORCH_SPEC="torch" (or a
# CUDA index via PIP_INDEX_URL/PIP_EXTRA_INDEX_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -c "import torch, a2b_pipeline; print('a2b_pipeline ready, torch', torch.__version__)"
