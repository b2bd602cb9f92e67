#!/usr/bin/env bash
# Folder prediction throughput, one predict binary beside another on the same folder and threads:
#   tools/bench/folder_predict.sh BASELINE_PREDICT PREDICT FOLDER [THREADS=2] [ROUNDS=3] [-- PREDICT ARGS]
# e.g. the baseline built from the commit before folder runs were batched (3a30d49):
#   git worktree add /tmp/base 3a30d49 && cmake -S /tmp/base -B /tmp/base/build -DSONO_CUDA=OFF \
#     && make -C /tmp/base/build -j2 predict
#   tools/bench/folder_predict.sh /tmp/base/build/bin/predict build/bin/predict BUSI_FOLDER 2 3
# SEG_MODEL and CLS_MODEL pick the pair (default: the shipped one). 3a30d49 knows no ResNet classifier, so
# against it run the pair it shipped: SEG_MODEL=/tmp/base/models/weights/seg_mit_b0_busi.safetensors
# CLS_MODEL=/tmp/base/models/weights/cls_convnext_atto_busi.safetensors.
# BASE_SEG_MODEL and BASE_CLS_MODEL give the baseline its own pair (default: the same), to compare a
# folder run of today's shipped pair with one of the pair shipped with the baseline.
# NEW_ARGS adds arguments for PREDICT alone, e.g. NEW_ARGS="--amp bf16" against a baseline that
# has no CPU bf16 (3a30d49 computes in float32 only).
# The two alternate ROUNDS times, each run after waiting (up to 60 s) for the CPUs to be 90% idle;
# each side's best and median images/s are printed, and new/baseline of the best.
set -euo pipefail
base=$1 new=$2 folder=$3 threads=${4:-2} rounds=${5:-3}
shift $(( $# < 5 ? $# : 5 ))
[[ ${1:-} == -- ]] && shift
extra=("$@")
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/models/weights/shipped.env"
seg_model=${SEG_MODEL:-$root/models/weights/$SONO_SEG_WEIGHTS}
cls_model=${CLS_MODEL:-$root/models/weights/$SONO_CLS_WEIGHTS}
base_seg_model=${BASE_SEG_MODEL:-$seg_model} base_cls_model=${BASE_CLS_MODEL:-$cls_model}
images=$(find "$folder" -maxdepth 1 -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.bmp' -o -iname '*.dcm' \) ! -name '*_mask*' | wc -l)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

idle_fraction() {  # over one second, from /proc/stat
  read -r _ a b c d e f g h _ < /proc/stat; local t1=$((a+b+c+d+e+f+g+h)) i1=$((d+e))
  sleep 1
  read -r _ a b c d e f g h _ < /proc/stat; local t2=$((a+b+c+d+e+f+g+h)) i2=$((d+e))
  echo $(( 100 * (i2 - i1) / (t2 - t1 + 1) ))
}

wait_quiet() {
  for _ in $(seq 60); do (( $(idle_fraction) >= 90 )) && return; done
  echo "  (machine not quiet after 60 s: $(idle_fraction)% idle)" >&2
}

read -r -a new_args <<< "${NEW_ARGS:-}"

run() {  # prints images/s for BINARY SEG_MODEL CLS_MODEL; further arguments go to it alone
  local bin=$1 seg=$2 cls=$3 start end
  shift 3
  wait_quiet
  start=$(date +%s.%N)
  "$bin" --threads "$threads" --image "$folder" --seg_model "$seg" --cls_model "$cls" \
    --csv "$out/p.csv" --overwrite "${extra[@]}" "$@" \
    > "$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$images / ($end - $start)" | bc -l
}

declare -a base_rates new_rates
for r in $(seq "$rounds"); do
  base_rates+=("$(run "$base" "$base_seg_model" "$base_cls_model")")
  new_rates+=("$(run "$new" "$seg_model" "$cls_model" "${new_args[@]}")")
  printf 'round %d: baseline %.2f img/s, new %.2f img/s\n' "$r" "${base_rates[-1]}" "${new_rates[-1]}"
done
summary() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {printf "best %.2f img/s, median %.2f", v[NR], v[int((NR+1)/2)]}'; }
echo "$images images, --threads $threads, $rounds rounds ${extra[*]}${NEW_ARGS:+ (new: $NEW_ARGS)}"
echo "baseline: $(summary "${base_rates[@]}")"
echo "new:      $(summary "${new_rates[@]}")"
best() { printf '%s\n' "$@" | sort -g | tail -1; }
printf 'new / baseline (best): %.2fx\n' "$(echo "$(best "${new_rates[@]}") / $(best "${base_rates[@]}")" | bc -l)"
