#!/usr/bin/env bash
# The resumable queue of the issue-17 LLM table (benchmarks/tinyshakespeare_1m.py): the teacher stores once, then
# WORKERS single-thread processes at nice 19 (default 2) that each claim the next (arm, seed) not done, seed-major,
# and write its record to benchmarks/results/tinyshakespeare_1m.json as it finishes. Rerun to resume (a claim
# left by a killed process is taken over; a run killed mid-way restarts from its last checkpoint or from step 0).
#   bash benchmarks/llm_queue.sh > benchmarks/work/llm_queue.log 2>&1 &
{  # parsed whole before it runs: editing this file while a queue runs cannot change the running one
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
WORKERS=${WORKERS:-2}
mkdir -p benchmarks/work/tinyshakespeare_1m
nice -n 19 "$PY" benchmarks/tinyshakespeare_1m.py --stores "$@"
pids=()
for i in $(seq 1 "$WORKERS"); do
  nice -n 19 "$PY" benchmarks/tinyshakespeare_1m.py "$@" > "benchmarks/work/tinyshakespeare_1m/worker$i.log" 2>&1 &
  pids+=($!)
  sleep 60  # the first worker claims its run before the next looks
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
nice -n 19 "$PY" benchmarks/tinyshakespeare_1m.py --render "$@"
exit $status
}
