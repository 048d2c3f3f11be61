#!/usr/bin/env bash
# Multi-node GPU job under SLURM: one process per node driving all its GPUs. jax.distributed
# reads SLURM's environment (coordinator = first node, process id = SLURM_PROCID).
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_gpu.sh \
#       --config=configs/t2i.py:res=512,variant=L --workdir=/shared/runs/l512
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# Keep NVLink multicast (NVLS) off: shared hosts can be put out of service by it.
export NCCL_NVLS_ENABLE=0
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
srun python -m mdd.main --distributed "$@"
