#!/usr/bin/env bash
# The CPU queue of the dense-row demonstrations (one process at a time, niced, one thread): seed 0 of every ACAM-KD
# arm, then seed 0 of DMAE (its teacher first, once), then the other seeds of both. Every step resumes where it
# stopped (finished runs are kept in benchmarks/results/*.json, a run mid-way resumes from its checkpoint), so
# rerunning this script continues the queue.
#     bash benchmarks/dense_queue.sh [PID]      # PID: an ACAM-KD sweep already running, stopped after its seed 0
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src"
PY=${PY:-python}
if [ -n "${1:-}" ]; then
  while kill -0 "$1" 2>/dev/null; do
    n=$($PY -c "import json;print(len(json.load(open('benchmarks/results/acam_kd.json'))['runs']))" 2>/dev/null || echo 0)
    [ "$n" -ge 4 ] && { kill "$1"; break; }
    sleep 20
  done
fi
nice -n 10 $PY benchmarks/acam_kd.py --seeds 0
nice -n 10 $PY benchmarks/dmae.py --seeds 0
nice -n 10 $PY benchmarks/acam_kd.py --seeds 0 1 2
nice -n 10 $PY benchmarks/dmae.py --seeds 0 1 2
