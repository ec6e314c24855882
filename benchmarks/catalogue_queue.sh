#!/usr/bin/env bash
# The CIFAR catalogues' seed queue (issue 17): the (student, arm, seed) runs still missing from
# benchmarks/results/cifar10_catalogue{,_mobilenetv2}.json, listed in benchmarks/catalogue_jobs.txt in the order
# they decide rows (both seeds of a feature arm together). WORKERS single-thread processes at nice 10 (default 2)
# each claim the next job not claimed by a live process (benchmarks/work/catalogue_claims/, the claimant's pid
# inside; a dead claimant's job is taken over), run it with its probe (cifar10_kd.py --probe-name), and move on.
# A finished (arm, seed) is skipped by cifar10_kd.py itself and a killed run resumes from its last checkpoint, so a
# rerun of this script, in this session or a later one, continues where the last stopped. Logs: the claims folder.
#   nohup setsid bash benchmarks/catalogue_queue.sh > /dev/null 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-benchmarks/catalogue_jobs.txt}
CLAIMS=benchmarks/work/catalogue_claims
TEACHER=src/distill/assets/resnet56_cifar10_jpeg.safetensors
mkdir -p "$CLAIMS"

claim() {  # claim job $1 for this process; fails if a live process holds it
  local dir="$CLAIMS/$1"
  if mkdir "$dir" 2>/dev/null; then echo $BASHPID > "$dir/pid"; return 0; fi
  local pid; pid=$(cat "$dir/pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 1; fi
  [ -e "$dir/done" ] && return 1
  echo $BASHPID > "$dir/pid"; return 0  # its claimant died: take it over
}

worker() {
  grep -v '^\s*#' "$JOBS" | while read -r student arm seed; do
    [ -z "${seed:-}" ] && continue
    job="$student-$arm-seed$seed"
    claim "$job" || continue
    name=cifar10_catalogue  # probes of both pairs go to results/probes_catalogue.json (as device_batch.py's)
    [ "$student" != resnet20 ] && name=cifar10_catalogue_$student
    echo "start $(date -u +%FT%TZ)" >> "$CLAIMS/$job/log"
    nice -n 10 "$PY" benchmarks/cifar10_kd.py --arms all --only "$arm" --seeds "$seed" --student "$student" \
      --teacher "$TEACHER" --name "$name" --probe-name catalogue >> "$CLAIMS/$job/log" 2>&1
    rc=$?
    [ $rc -eq 0 ] && touch "$CLAIMS/$job/done"
    echo "end rc=$rc $(date -u +%FT%TZ)" >> "$CLAIMS/$job/log"
  done
}

for i in $(seq 1 "${WORKERS:-2}"); do
  worker &
  sleep "${STAGGER:-5}"  # the first worker claims its job before the next reads the list
done
wait
