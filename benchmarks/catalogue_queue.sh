#!/usr/bin/env bash
# The CIFAR benchmarks' seed queue (issue 17): the runs still missing from the catalogue tables
# (benchmarks/results/cifar10_catalogue{,_mobilenetv2}.json) and the protocol tables of device_batch.py's groups
# (cifar10_tgeo, cifar10_mixt, cifar10_mealv2), listed in benchmarks/catalogue_jobs.txt as "group arm seed" in the
# order they decide rows (group: resnet20 or mobilenetv2 for a catalogue pair, tgeo, mixt or mealv2 for a protocol
# table). WORKERS single-thread processes at nice 10 (default 2) each claim the next job not claimed by a live process
# (benchmarks/work/catalogue_claims/, the claimant's pid inside; a dead claimant's job is taken over), run it (a
# catalogue job with its probe, cifar10_kd.py --probe-name), and move on; the list is read again before each claim,
# so lines added while the queue runs are taken too. A finished (arm, seed) is skipped by cifar10_kd.py itself and a
# killed run resumes from its last checkpoint, so a rerun of this script, in this session or a later one, continues
# where the last stopped. After each finished job, benchmarks/verdicts.py --extend-jobs adds the seeds a row still
# needs (a third where a 2-seed arm's first two differ by more than a point), next to its arm's lines. Logs: the
# claims folder.
#   nohup setsid bash benchmarks/catalogue_queue.sh > /dev/null 2>&1 &
{  # parsed whole before it runs: editing this file while a queue runs cannot change the running one
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-benchmarks/catalogue_jobs.txt}
CLAIMS=benchmarks/work/catalogue_claims
TEACHER=src/distill/assets/resnet56_cifar10_jpeg.safetensors
mkdir -p "$CLAIMS"

claim() {  # claim job $1 for this worker ($WORKER); fails if a live process holds it
  local dir="$CLAIMS/$1"
  if mkdir "$dir" 2>/dev/null; then echo "$WORKER" > "$dir/pid"; return 0; fi
  local pid; pid=$(cat "$dir/pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 1; fi
  [ -e "$dir/done" ] && return 1
  echo "$WORKER" > "$dir/pid"; return 0  # its claimant died: take it over
}

next_job() {  # claim the first listed job free for this worker; print it
  local student arm seed
  while read -r student arm seed; do
    [ -z "${seed:-}" ] && continue
    claim "$student-$arm-seed$seed" && { echo "$student $arm $seed"; return 0; }
  done < <(grep -v '^\s*#' "$JOBS")
  return 1
}

worker() {
  local student arm seed job name rc
  local -a extra
  WORKER=$BASHPID  # next_job runs in a subshell: its claims name the worker
  while read -r student arm seed < <(next_job); do
    job="$student-$arm-seed$seed"
    case "$student" in  # probes of both pairs go to results/probes_catalogue.json (as device_batch.py's)
      resnet20) name=cifar10_catalogue; extra=(--student resnet20 --teacher "$TEACHER" --probe-name catalogue) ;;
      tgeo|mealv2) name=cifar10_$student; extra=(--configs "configs/cifar10_$student" --teacher "$TEACHER") ;;
      mixt) name=cifar10_mixt; extra=(--configs configs/cifar10_mixt --teacher-mixup) ;;
      *) name=cifar10_catalogue_$student; extra=(--student "$student" --teacher "$TEACHER" --probe-name catalogue) ;;
    esac
    echo "start $(date -u +%FT%TZ)" >> "$CLAIMS/$job/log"
    nice -n 10 "$PY" benchmarks/cifar10_kd.py --arms all --only "$arm" --seeds "$seed" "${extra[@]}" \
      --name "$name" >> "$CLAIMS/$job/log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
      touch "$CLAIMS/$job/done"
      # a row whose seeds now ask for another (rule 4: a 2-seed arm's seeds differ by more than a point) gets it
      "$PY" benchmarks/verdicts.py --extend-jobs "$JOBS" >> "$CLAIMS/$job/log" 2>&1
    fi
    echo "end rc=$rc $(date -u +%FT%TZ)" >> "$CLAIMS/$job/log"
  done
}

for i in $(seq 1 "${WORKERS:-2}"); do
  worker &
  sleep "${STAGGER:-5}"  # the first worker claims its job before the next reads the list
done
wait
exit
}
