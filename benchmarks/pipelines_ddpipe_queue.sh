#!/bin/sh
# The NRR-DD / INFER / KD^3 demonstrations, one process at a time (resumable: rerun to continue; finished stages
# are reused): KD^3, then the dataset-distillation table seed by seed.
#   nohup nice -n 10 sh benchmarks/pipelines_ddpipe_queue.sh > benchmarks/work/ddpipe_queue.log 2>&1 &
cd "$(dirname "$0")/.." || exit 1
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-/work/main/.venv/bin/python}
$PY benchmarks/pipelines_kd3.py --seeds 0 1 2
$PY benchmarks/pipelines_dd.py --seeds 0 --ufc-iterations 10
$PY benchmarks/pipelines_dd.py --seeds 0 1 --ufc-iterations 10
$PY benchmarks/pipelines_dd.py --seeds 0 1 2 --ufc-iterations 10
