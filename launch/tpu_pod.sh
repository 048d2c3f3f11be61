#!/usr/bin/env bash
# Runs mdd on every worker of a Cloud TPU VM pod slice (or a multi-slice job). On TPU VMs,
# jax.distributed.initialize() discovers the coordinator and process ids by itself, so each worker
# runs the same command with --distributed. Assumes the repo is at the same path on every worker
# and a shared (GCS or NFS) workdir; data and workdir can both be gs:// URLs (mdd.utils.fileio).
#
#   TPU_NAME=my-v5e-64 ZONE=us-west4-a launch/tpu_pod.sh \
#       --config=configs/t2i.py:res=256,variant=B,source=arrayrecord \
#       --config.data.records=gs://bucket/pairs --workdir=gs://bucket/runs/b256
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-'~/mdd'}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && . .venv/bin/activate && python -m mdd.main --distributed $ARGS"
