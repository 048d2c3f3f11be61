#!/usr/bin/env bash
# Runs mdd on this machine. With NUM_PROCESSES>1 it starts that many processes that join one
# jax.distributed job over localhost (CPU collectives through gloo), which is how multi-host code
# paths are exercised without a cluster.
#
#   launch/local.sh --config=configs/shapes_tiny.py --workdir=workdirs/tiny
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local.sh --config=... --workdir=...
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_PROCESSES=${NUM_PROCESSES:-1}
if [ "$NUM_PROCESSES" -eq 1 ]; then
  exec python -m mdd.main "$@"
fi
PORT=${PORT:-$((20000 + RANDOM % 20000))}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  JAX_PLATFORMS=cpu MDD_CPU_COLLECTIVES=gloo \
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:${PORT}" JAX_NUM_PROCESSES="$NUM_PROCESSES" \
  JAX_PROCESS_ID="$i" python -m mdd.main --distributed "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
