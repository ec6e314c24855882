#!/usr/bin/env bash
# The CPU queue of the dense-row demonstrations (one process at a time, niced, one thread): ACAM-KD seeds 0-1,
# then DMAE (teacher once, then 2 seeds), then ACAM-KD seed 2. Every step resumes where it stopped, so rerunning this
# script continues the queue.   usage: bash benchmarks/dense_queue.sh [ACAM_PID_TO_WAIT_FOR]
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src"
PY=${PY:-python}
if [ -n "${1:-}" ]; then
  # an ACAM-KD sweep already running: let it finish seed 1 (8 runs), then stop it (it resumes later)
  while kill -0 "$1" 2>/dev/null; do
    n=$($PY -c "import json;print(len(json.load(open('benchmarks/results/acam_kd.json'))['runs']))" 2>/dev/null || echo 0)
    [ "$n" -ge 8 ] && { kill "$1"; break; }
    sleep 20
  done
else
  nice -n 10 $PY benchmarks/acam_kd.py --seeds 0 1
fi
nice -n 10 $PY benchmarks/dmae.py --seeds 0 1
nice -n 10 $PY benchmarks/acam_kd.py --seeds 0 1 2
nice -n 10 $PY benchmarks/dmae.py --seeds 0 1 2
