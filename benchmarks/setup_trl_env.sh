#!/usr/bin/env bash
# The separate, git-ignored environment in which benchmarks/llm_vs_trl.py runs TRL's GKD trainer
# (TRL is never a dependency of distill). Python 3.11; torch pinned to the CPU build the main environment uses
# (installed first, then held by a constraints file so that trl's dependencies cannot replace it).
#   bash benchmarks/setup_trl_env.sh            # creates benchmarks/.venv-trl
# Environment variables: PYTHON (default python3.11), TORCH_SPEC (default: the CPU wheel in /opt/wheels if
# present, else torch==2.13.0), TRL_SPEC (default trl==1.16.0), VENV (default benchmarks/.venv-trl).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${VENV:-$here/.venv-trl}"
python="${PYTHON:-python3.11}"
# the CPU wheel when one is on disk (PyPI's default torch would pull multi-GB CUDA libraries)
wheel="$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -n 1 || true)"
torch_spec="${TORCH_SPEC:-${wheel:-torch==2.13.0}}"
trl_spec="${TRL_SPEC:-trl==1.16.0}"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "$torch_spec"
version="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
constraints="$(mktemp)"
echo "torch==$version" > "$constraints"
"$venv/bin/pip" install -q -c "$constraints" "$trl_spec" safetensors
rm -f "$constraints"
"$venv/bin/python" -c 'import torch, transformers, trl; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)'
