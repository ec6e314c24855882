#!/usr/bin/env bash
# The protocol queue of issue 17 (benchmarks/README.md, "The protocol queue"): one arm after another, each as a
# single-thread process at low priority, 3 seeds each, resumable (a killed run continues from its checkpoint; a
# finished seed is skipped). Arms: the arguments, default the six of the current table. Log: runs/logs/protocol30.log
#   nohup setsid bash benchmarks/protocol_queue.sh lskd at fitnet > /dev/null 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
ARMS="scratch kd dkd lskd at fitnet"
if [ $# -gt 0 ]; then TODO=("$@"); else read -r -a TODO <<< "$ARMS"; fi
for arm in "${TODO[@]}"; do  # the table covers every arm asked for
  case " $ARMS " in *" $arm "*) ;; *) ARMS="$ARMS $arm" ;; esac
done
mkdir -p runs/logs
for arm in "${TODO[@]}"; do
  nice -n 15 .venv/bin/python benchmarks/cifar10_kd.py --arms $ARMS --only "$arm" --seeds 0 1 2 --epochs 30 \
    --teacher src/distill/assets/resnet56_cifar10_jpeg.safetensors --name cifar10_protocol30 \
    >> runs/logs/protocol30.log 2>&1
  echo "done $arm $(date -u)" >> runs/logs/protocol30.log
done
