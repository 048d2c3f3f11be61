#!/usr/bin/env bash
# The GPU benchmarks behind docs/benchmarks.md ("Train step and sampler"), in the order the
# lent GPU's time allows. Each part writes its JSON to $OUT (default: benchmarks/) after every
# row, so a part cut short by its time limit keeps what it measured.
#
#   bash benchmarks/gpu_suite.sh train     # train-step MFU: 1B at 1024 tokens (pallas vs chunked,
#                                          # profiled), then B / XL / 1B at 256 and 1024 tokens
#   bash benchmarks/gpu_suite.sh sampler   # sampler images/s and loop overhead (B, 256/1024 tokens)
#   bash benchmarks/gpu_suite.sh mfu       # levers on the 1B step at 1024 tokens, one process
#                                          # each: the baseline, batch 20, XLA GPU flags
#   bash benchmarks/gpu_suite.sh scaling   # weak scaling over 1, 2 and 4 GPUs of the host
#                                          # (data and FSDP meshes); needs a multi-GPU machine
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv || true
case "${1:-train}" in
  train)
    timeout 220 python -m mdd.bench.train_step --variants=1B --grids=32 --impls=pallas,chunked \
        --profile --out="$OUT/train_step_1b.json"
    timeout 250 python -m mdd.bench.train_step --variants=B,XL --grids=16,32 --impls=pallas \
        --out="$OUT/train_step_b_xl.json"
    timeout 110 python -m mdd.bench.train_step --variants=1B --grids=16 --impls=pallas \
        --out="$OUT/train_step_1b_256.json"
    ;;
  scaling)
    # B and 1B at 1024 tokens x 16 per GPU: the small model shows communication overhead
    # first, the large one whether it fits a data mesh (replicated state) at all.
    timeout 540 python -m mdd.bench.scaling --variants=B,1B --grid=32 --tokens_per_device=16384 \
        --devices=1,2,4 --meshes=data,fsdp --out="$OUT/scaling.json"
    ;;
  sampler)
    timeout 420 python -m mdd.bench.sampler --variant=B --grids=16,32 --steps=8,16,32 \
        --batches=1,8,32 --out="$OUT/sampler.json"
    ;;
  mfu)
    # The baseline again in the same call (machines are noisy: compare ratios), then one lever
    # per process. XLA_FLAGS are read when the backend starts, hence a process per setting.
    base=(python -m mdd.bench.train_step --variants=1B --grids=32 --impls=pallas --remat=0)
    timeout 140 "${base[@]}" --out="$OUT/mfu_1b_baseline.json"
    timeout 140 "${base[@]}" --tokens_per_step=20480 --out="$OUT/mfu_1b_batch20.json"
    XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true" timeout 140 "${base[@]}" \
        --out="$OUT/mfu_1b_lhs.json"
    XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" timeout 140 "${base[@]}" \
        --out="$OUT/mfu_1b_no_triton_gemm.json"
    ;;
  *) echo "usage: $0 train|sampler|mfu" >&2; exit 2 ;;
esac
