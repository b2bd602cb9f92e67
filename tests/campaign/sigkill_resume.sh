#!/usr/bin/env bash
# Issue 15's SIGKILL check, re-runnable: a short seg_train run killed (SIGKILL) at a random
# moment, then continued with --resume (or restarted when no state was saved yet), N times; each
# must finish with the uninterrupted run's per-epoch log (training is deterministic per seed)
# and leave no temp file.
#   bash tests/campaign/sigkill_resume.sh BUILD_DIR BUSI_FOLDER [N]
set -uo pipefail
build=$(realpath "$1") busi=$(realpath "$2") trials=${3:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
for c in benign malignant normal; do  # 5 images of each class, with their masks
  mkdir -p "data/$c"
  find "$busi/$c" -name "$c (*).png" ! -name '*_mask*' | sort | head -5 | while read -r f; do
    cp "$f" "${f%.png}"_mask*.png "data/$c/"
  done
done
args=(--images-dir data --arch mit_b0 --img-size 64 --epochs 5 --batch-size 2 --threads 1 --workers 1 --val-split 0.34)
losses() { cut -d, -f1-3 "$1/segmentation_log.csv"; }
"$build/bin/seg_train" "${args[@]}" --save-path ref.safetensors --log-dir ref >/dev/null 2>&1 || { echo "reference run failed"; exit 1; }
start=$(date +%s.%N)
"$build/bin/seg_train" "${args[@]}" --save-path timing.safetensors --log-dir timing >/dev/null 2>&1
seconds=$(echo "$(date +%s.%N) - $start" | bc)
failed=0
for trial in $(seq "$trials"); do
  rm -rf run run.*
  delay=$(awk -v s="$seconds" -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.1 + (s - 0.2) * r / 32767 }')
  "$build/bin/seg_train" "${args[@]}" --save-path run.safetensors --log-dir run >/dev/null 2>&1 &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  resume=()
  [ -f run.last.safetensors ] && resume=(--resume run.last.safetensors)
  "$build/bin/seg_train" "${args[@]}" --save-path run.safetensors --log-dir run "${resume[@]}" >/dev/null 2>&1
  rc=$?
  same=no
  [ "$(losses run)" = "$(losses ref)" ] && same=yes
  temps=$(find . -maxdepth 1 -name '*tmp*' | wc -l)
  echo "trial $trial: killed after ${delay}s of ${seconds%.*}s, ${resume[*]:-restarted}: exit $rc, log as uninterrupted: $same, temp files left: $temps"
  [ "$rc" = 0 ] && [ "$same" = yes ] && [ "$temps" = 0 ] || failed=$((failed + 1))
done
echo "sigkill_resume: $((trials - failed)) of $trials passed"
((failed == 0))
