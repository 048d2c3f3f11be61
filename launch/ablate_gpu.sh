#!/usr/bin/env bash
# The paper's claims on the GPU config (configs/shapes_gpu.py, 64 px) on one GPU host, in
# time-limited pieces: every piece gets SIGTERM at LIMIT seconds, the ablation waits up to
# 60 s more for its trainings to save a checkpoint, and the same command resumes it, on the
# same machine, where it stopped. Give each piece LIMIT + 90 s (the archive of what it scored).
#
#   bash launch/ablate_gpu.sh loss LIMIT      # CE vs GCE (+ce_mix), 2 training seeds,
#                                             # ShapeGenEval every GENEVAL_EVERY steps
#   bash launch/ablate_gpu.sh sampler LIMIT   # the GCE models: edits off / on / ReMDM at 4-64
#                                             # sampler steps, then the held-out prompts
#   bash launch/ablate_gpu.sh editing LIMIT   # both in one ablation without CE: trains the
#                                             # config's loss only (SEEDS), then the sampler piece
#
# Environment: CONFIG (default configs/shapes_gpu.py:vocab=VOCAB[,noise=NOISE]; a CPU config
# such as configs/shapes_tiny.py:runlocal tries the pieces at toy size with GPUS=0),
# VOCAB (16 = 2^16 codes; 18), NOISE (pixel noise on the images, 0-255 std; 0 = none; 12 makes
# the tokenizer fill far more of its codes), STEPS (denoiser steps), GENEVAL_EVERY, SEEDS, EVAL_BATCH
# (images per sampler call; default 64, or 8 at 2^18 codes, where the sampler holds about 1 GB
# of temporaries per image and four jobs share one card),
# PARALLEL (runs side by side), GPUS, WD (the ablation's workdir), OUT (where ablate.json and
# the scored layouts are copied when the piece ends).
set -uo pipefail
cd "$(dirname "$0")/.."
phase="${1:?usage: $0 loss|sampler|editing LIMIT}"
limit="${2:?usage: $0 loss|sampler|editing LIMIT}"
# The sampler settings of the editing study: edits off and on at every step count, ReMDM at two.
SAMPLER_ONLY='^(no_edit|edit_t0.5)@|^remdm@(8|32)$'
VOCAB="${VOCAB:-16}" NOISE="${NOISE:-0}" STEPS="${STEPS:-3000}" GENEVAL_EVERY="${GENEVAL_EVERY:-1000}"
SEEDS="${SEEDS:-0,1}" PARALLEL="${PARALLEL:-4}" GPUS="${GPUS:-1}"
noisy=""
if [ "$NOISE" != "0" ]; then noisy="_noise${NOISE}"; fi
WD="${WD:-workdirs/ablate_gpu_v${VOCAB}${noisy}}" OUT="${OUT:-$WD/out}"
export PYTHONUNBUFFERED=1
CONFIG="${CONFIG:-configs/shapes_gpu.py:vocab=${VOCAB}${noisy:+,noise=${NOISE}}}"
args=(--config="$CONFIG" --workdir="$WD" --seeds="$SEEDS"
      --parallel="$PARALLEL" --gpus="$GPUS" --eval_every=500 --images_per_prompt=1
      --eval_batch_size="${EVAL_BATCH:-$(( VOCAB >= 18 ? 8 : 64 ))}" --set "denoiser_train.num_steps=${STEPS}")
case "$phase" in
  loss)
    # timeout signals the whole process group: the ablation and every training under it;
    # the ablation exits once its trainings have saved.
    timeout -s TERM -k 60 "$limit" python -m mdd.experiments.ablate "${args[@]}" \
        --studies=loss --loss_variants=ce,gce_soft_ce_mix --geneval_every="$GENEVAL_EVERY"
    ;;
  sampler)
    timeout -s TERM -k 60 "$limit" python -m mdd.experiments.ablate "${args[@]}" \
        --studies=sampler,heldout --only="$SAMPLER_ONLY"
    ;;
  editing)
    timeout -s TERM -k 60 "$limit" python -m mdd.experiments.ablate "${args[@]}" \
        --studies=loss,sampler,heldout --loss_variants=gce_soft_ce_mix \
        --geneval_every="$STEPS" --only="$SAMPLER_ONLY"
    ;;
  *) echo "usage: $0 loss|sampler|editing LIMIT" >&2; exit 2 ;;
esac
status=$?
python -m mdd.experiments.ablate "${args[@]}" --collect
mkdir -p "$OUT"
cp "$WD/ablate.json" "$OUT/ablate.json"
# The scored images (small PNGs) for the scorer's agreement checks, and the training logs; the
# archive is cut into 15 MiB pieces (the device tool returns files of at most 16 MiB):
# `cat layouts.tgz.* | tar -xz` puts it together.
rm -f "$OUT"/layouts.tgz*
(cd "$WD" && find . -path '*/curve/*' -name '*.png' -o -path './evals/*' -name '*.png' \
    -o -name 'metadata.jsonl' -o -name 'summary.json' | tar -cz -T - ) \
    | split -b 15M -d - "$OUT/layouts.tgz." || true
tar -czf "$OUT/logs.tgz" -C "$WD" logs 2>/dev/null || true
grep -h "steps/s\|step " "$WD"/logs/loss_*.log 2>/dev/null | tail -8
echo "piece '$phase' exit $status"
exit 0
