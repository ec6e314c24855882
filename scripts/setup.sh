#!/usr/bin/env bash
# Create .venv and install distill with its test tools. torch is pinned to the CPU wheel first, so the
# package's own range (torch>=2.3,<3) installs nothing more; on a GPU machine install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
echo "distill installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
