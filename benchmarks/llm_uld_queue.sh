#!/usr/bin/env bash
# The resumable queue of benchmarks/llm_uld.py: the main comparison (ce_char vs uld_char, 3 seeds), then the ULD
# variants tried (lambda, the official index alignment, teacher temperature), each 3 seeds. Rerun to resume.
#   nice -n 10 bash benchmarks/llm_uld_queue.sh > benchmarks/work/llm_uld.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
"$PY" benchmarks/llm_uld.py
"$PY" benchmarks/llm_uld.py --tag lam0.2 --arms uld_char --set methods.1.weight=0.2
"$PY" benchmarks/llm_uld.py --tag index --arms uld_char --set data.cross_tokenizer.alignment=index
"$PY" benchmarks/llm_uld.py --tag tT0.5 --arms uld_char --set methods.1.teacher_temperature=0.5
