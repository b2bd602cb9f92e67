#!/usr/bin/env bash
# On a GPU machine, from the folder tools/scripts/gpu_pack.sh filled (gpu/): K-fold training of
# the shipped pair's candidate recipes (models/weights/README.md), so that many epochs fit in the
# device tool's few minutes. The segmenters first, side by side (a small model leaves the GPU
# mostly idle, so processes share it well), then the classifiers, each fold on the masks of the
# segmenter that did not train on it. Every run is capped to the DEADLINE (seconds from the
# start). Into $OUT, at most 8 files: timeline.txt; logs.tar.xz (each run's output, per-fold
# CSVs and curves, cross_validation.csv, the reliability diagrams); and each recipe's fold-1
# checkpoint as F16, NAME.safetensors (what would ship).
#   DATA=path/to/Dataset_BUSI_with_GT OUT=results bash gpu/gpu_train.sh
# FOLDS (5) and DEADLINE (420) size the run: each phase's epochs are what fits its share of the
# time, reckoned from model_bench's step time (EPOCHS_SEG, EPOCHS_CLS set them instead).
# DEVICE=cpu AMP=off try the script out on a machine without a GPU.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$here/train}
DATA=${DATA:?DATA: the BUSI folder (Dataset_BUSI_with_GT)}
FOLDS=${FOLDS:-5}
DEADLINE=${DEADLINE:-420}
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-bf16}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$OUT/timeline.txt"; }
source "$here/gpu_env.sh" || { log "cannot set up the binaries from $here"; exit 1; }
R=/tmp/sono-train
rm -rf "$R" && mkdir -p "$R"

# The candidates: NAME and its flags. The segmenter of the first seg recipe gives the
# classifiers their masks. cls_atto_us is models/weights/README.md's row 7, whose training loss
# stayed near 0.95: cls_atto_light drops its augmentation and regularisation to learn more.
seg_recipes=(
  "seg_b0_us --arch mit_b0 --img-size 256 --batch-size 16 --lr 1e-3 --warmup-epochs 3 --augment ultrasound --ema 0.99 --flip-tta"
  "seg_b0_std --arch mit_b0 --img-size 256 --batch-size 16 --lr 1e-3 --warmup-epochs 3"
)
cls_recipes=(
  "cls_atto_light --arch convnext_atto --img-size 256 --batch-size 32 --lr 1e-3 --warmup-epochs 3 --drop-path 0 --label-smoothing 0 --class-weights balanced --flip-tta"
  "cls_atto_us --arch convnext_atto --img-size 256 --batch-size 32 --lr 5e-4 --warmup-epochs 3 --class-weights balanced --augment ultrasound --ema 0.99 --flip-tta"
)

# epochs_in SECONDS MODEL SIZE BATCH FACTOR: the epochs of K folds that fit in SECONDS, from one
# training step's median time. A fold trains on (K-1)/K of BUSI's 624 images; an epoch takes
# FACTOR times its steps' time, with validation (flip TTA), data preparation and the recipes
# sharing the GPU. Measured on the H200 (tools/bench/results/h200-2026-12-04-run4): 3 for the
# segmenters; 12 for the classifiers, whose small steps wait on their augmentation (4 workers).
epochs_in() {
  local ms
  ms=$("$B/tools/bench/model_bench" --device "$DEVICE" --amp "$AMP" --mode train --warmup 2 --repeats 5 \
    --model "$2" --size "$3" --batch "$4" | python3 -c "import json, sys; print(json.loads(sys.stdin.read())['median_ms'])")
  python3 -c "import math; k, b = $FOLDS, $4; steps = math.ceil(624 * (k - 1) / k / b); \
print(max(3, min(150, int($1 * 1000 / (k * steps * $ms * $5)))))"
}

# train TOOL EPOCHS "NAME FLAGS..." [MORE FLAGS...]: one recipe's K folds, in the background,
# stopped at PHASE_END (seconds from the start).
train() {
  local tool=$1 epochs=$2 name=${3%% *} flags=${3#* } left
  shift 3
  left=$((PHASE_END - ($(date +%s) - T0)))
  if ((left < 10)); then
    log "SKIP (no time left): $name"
    return 0
  fi
  mkdir -p "$R/$name"
  log "start $name ($epochs epochs, ${left}s left): $tool $flags $*"
  # shellcheck disable=SC2086  # flags is a list
  (timeout -k 5 "$left" "$B/bin/$tool" --images-dir "$DATA" --folds "$FOLDS" --epochs "$epochs" \
    --device "$DEVICE" --amp "$AMP" --workers 4 --threads 2 $flags "$@" \
    --save-path "$R/$name/$name.safetensors" --log-dir "$R/$name/log" >"$R/$name/output.txt" 2>&1
   log "end $name: rc=$?") &
}

# the segmenters get 60% of the time (stopped at 72%), the classifiers the rest
PHASE_END=$((DEADLINE * 72 / 100))
EPOCHS_SEG=${EPOCHS_SEG:-$(epochs_in $((DEADLINE * 60 / 100)) mit_b0 256 16 3)}
for recipe in "${seg_recipes[@]}"; do train seg_train "$EPOCHS_SEG" "$recipe"; done
wait
masks="$R/${seg_recipes[0]%% *}/${seg_recipes[0]%% *}.fold{fold}.safetensors"
[ -f "${masks/\{fold\}/$FOLDS}" ] || { log "no segmenter of fold $FOLDS: no classifiers"; PHASE_END=0; }
PHASE_END=$((DEADLINE - 20))  # the F16 exports and the logs' archive take seconds
EPOCHS_CLS=${EPOCHS_CLS:-$(epochs_in $((DEADLINE - ($(date +%s) - T0) - 30)) convnext_atto 256 32 12)}
for recipe in "${cls_recipes[@]}"; do train cls_train "$EPOCHS_CLS" "$recipe" --seg-model "$masks"; done
wait

for dir in "$R"/*/; do
  name=$(basename "$dir")
  grep -A12 '^cross-validation' "$dir/output.txt" | sed "s/^/$name: /"
  fold1="$dir/$name.fold1.safetensors"
  [ -f "$fold1" ] && "$B/bin/model_info" --checkpoint "$fold1" --export-f16 "$OUT/$name.safetensors" >/dev/null
done | tee -a "$OUT/timeline.txt"
find "$R" -name '*.safetensors' -delete
tar -C "$R" -cJf "$OUT/logs.tar.xz" .
log "end"
