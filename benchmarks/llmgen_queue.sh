#!/usr/bin/env bash
# The three data-generating LLM rows (llm.md rows 43, 20, 40), one process at a time, single thread, nice 10.
# Every step resumes where it stopped (pipeline stages checkpoint each chunk; finished seeds and arms are not
# rerun), so rerunning this script continues the queue. Run from the repository root:
#     bash benchmarks/llmgen_queue.sh
# PGKD_ARGS="--seeds 0 1" (default) for the full test split; "--seeds 0 --test-limit 1000" was the first pass here.
set -u
export OMP_NUM_THREADS=1
PY=${PY:-python}
nice -n 10 "$PY" benchmarks/symbolic_kd_sst2.py --seeds 0 1 2
nice -n 10 "$PY" benchmarks/rationale_kd_sst2.py --seeds 0 1 2
nice -n 10 "$PY" benchmarks/pgkd_sst5.py ${PGKD_ARGS:---seeds 0 1}
