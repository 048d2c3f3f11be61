#!/usr/bin/env bash
# Runs independent jobs side by side, one GPU each: job i sees only GPU i
# (CUDA_VISIBLE_DEVICES=i), its output goes to $LOGDIR/job<i>.log, and the script waits for all
# of them and exits non-zero if any failed. For sweeps and ablations whose parts do not talk to
# each other (a single multi-GPU job is `python -m mdd.main` with the mesh in its config).
#
#   LOGDIR=logs launch/per_gpu.sh "python -m mdd.bench.gce --points=..." \
#                                 "python -m mdd.main --config=configs/shapes_gpu.py ..."
set -uo pipefail
cd "$(dirname "$0")/.."
LOGDIR=${LOGDIR:-per_gpu_logs}
mkdir -p "$LOGDIR"
pids=()
i=0
for cmd in "$@"; do
  echo "job$i (GPU $i): $cmd"
  CUDA_VISIBLE_DEVICES=$i bash -c "$cmd" > "$LOGDIR/job$i.log" 2>&1 &
  pids+=($!)
  i=$((i + 1))
done
status=0
i=0
for pid in "${pids[@]}"; do
  if wait "$pid"; then echo "job$i: ok"; else rc=$?; echo "job$i: exit $rc"; status=$rc; fi
  i=$((i + 1))
done
exit "$status"
