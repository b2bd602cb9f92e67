#!/usr/bin/env bash
# On a GPU machine, from the folder tools/scripts/gpu_pack.sh filled (gpu/): never builds. In
# one short run (DEADLINE seconds, 360 by default: the device tool lends 15 minutes, start-up
# included), each step capped and skipped once time runs out, most wanted first:
#   1. the CUDA tests on the device (SONO_TEST_DEVICE=gpu), side by side;
#   2. step times and peak device memory, ours (model_bench) and PyTorch's (torch_bench.py, eager,
#      channels_last, cudnn.benchmark on): mit_b2 256 bs8 and convnext_base 224 bs16, train and
#      infer, float32 and bf16, one config a process; then the side-by-side table;
#   3. ncu's per-kernel time of one training step of each model, and its summary table;
#   4. compute-sanitizer memcheck and racecheck over the kernel tests on the device, side by side;
#   5. ncu of the other two training configs, if time is left.
# With PREDICT_DIR (a flat folder of scans, e.g. gpudata/Dataset_BUSI_with_GT/benign), step 2
# also runs predict on it with the shipped models on the device (--batch_size 8 and 32; images/s
# in timeline.txt).
# Runs whose speed is not measured (tests, sanitizers) share the GPU; timed ones have it alone.
# At most 8 files in $OUT: gpu.txt (machine, libraries, wheel install), timeline.txt (each
# step's exit status and seconds), tests.log, bench.jsonl, table.txt, ncu.txt, ncu_summary.txt,
# sanitizer.log.
#   OUT=results bash gpu/gpu_check.sh
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$here/results}
mkdir -p "$OUT"
T0=$(date +%s)
DEADLINE=${DEADLINE:-360}
MODES=${MODES:-train infer}  # the modes step 2 times ("train": the kernels changed by training alone)
SANITIZERS=${SANITIZERS-memcheck racecheck}  # step 4's tools (empty: none)
THEIRS=${THEIRS:-1}  # 0: step 2 times ours alone, to be set beside an earlier run's PyTorch figures
log() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$OUT/timeline.txt"; }
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
# step CAP FILE CMD...: CMD with min(CAP, time left - 5) seconds, its output appended to FILE
# (a path) under a '=== CMD' header; skipped when under 10 seconds are left.
step() {
  local cap=$1 file=$2 t s rc
  shift 2
  t=$(left)
  t=$((t - 5 < cap ? t - 5 : cap))
  if ((t < 10)); then
    log "SKIP (no time left): $*"
    return 0
  fi
  s=$(date +%s)
  echo "=== $* (cap ${t}s)" >>"$file"
  timeout -k 5 "$t" "$@" >>"$file" 2>&1
  rc=$?
  log "rc=$rc$( ((rc == 124 || rc == 137)) && echo ' TIMED OUT') $(($(date +%s) - s))s: $*"
}

# --- setup: binaries and libraries (gpu_env.sh), smp's wheel where carried
source "$here/gpu_env.sh" || { log "cannot set up the binaries from $here"; exit 1; }
if [ -d "$here/whl" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/sono-site \
    "$here"/whl/*.whl >>"$OUT/gpu.txt" 2>&1
  export PYTHONPATH=/tmp/sono-site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  grep -m1 'model name' /proc/cpuinfo
  nproc
  echo "cudnn: ${cudnn:-none found}"
  echo "cublas: ${cublas:-none found}"
  echo "nccl: ${nccl:-none found}"
  ldd "$B/tests/test_cuda_kernels" | grep -E 'not found|cudnn|cublas|cudart|gomp'
  env LD_LIBRARY_PATH="$machine_libs" python3 -c "import torch, timm, segmentation_models_pytorch as smp; print('torch', torch.__version__, \
'timm', timm.__version__, 'smp', smp.__version__, 'cudnn', torch.backends.cudnn.version())"
  command -v ncu compute-sanitizer
} >>"$OUT/gpu.txt" 2>&1
log "setup done"

# --- 1. the CUDA tests on the device
export SONO_TEST_DEVICE=gpu
tests=(test_cuda_kernels test_cuda_conv_impl test_cuda_amp_convnext test_cuda_amp_deeplab test_nccl)
for t in "${tests[@]}"; do step 90 "$B/$t.log" "$B/tests/$t" & done
wait
for t in "${tests[@]}"; do cat "$B/$t.log" 2>/dev/null; done >"$OUT/tests.log"
grep -E '^=== |^\[doctest\] (test cases|assertions)|ERROR|skipped:' "$OUT/tests.log"

# --- 2. ours beside PyTorch, one config a process
ours() { step 25 "$OUT/bench.jsonl" "$B/tools/bench/model_bench" --device cuda --warmup 3 --repeats 10 "$@"; }
theirs() {
  step 60 "$OUT/bench.jsonl" env LD_LIBRARY_PATH="$machine_libs" python3 -c "import sys, runpy, torch; torch.backends.cudnn.benchmark = True; \
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" \
    "$here/torch_bench.py" --device cuda --warmup 3 --repeats 10 "$@"
}
configs=("--model mit_b2 --size 256 --batch 8" "--model convnext_base --size 224 --batch 16")
for amp in off bf16; do
  for mode in $MODES; do
    for cfg in "${configs[@]}"; do
      # shellcheck disable=SC2086  # cfg is a list of flags
      ours $cfg --mode $mode --amp $amp
      # shellcheck disable=SC2086
      ((THEIRS)) && theirs $cfg --mode $mode --amp $amp
    done
  done
done
python3 "$here/gpu_table.py" "$OUT/bench.jsonl" >"$OUT/table.txt" 2>&1
cat "$OUT/table.txt"

# --- 2b. folder prediction on the device (issue 18's images/s), timed: the GPU alone
if [ -n "${PREDICT_DIR:-}" ]; then
  weights=$here/../models/weights
  . "$weights/shipped.env"
  for bs in 8 32; do
    step 45 "$OUT/timeline.txt" "$B/bin/predict" --device cuda --image "$PREDICT_DIR" --batch_size "$bs" --workers 8 \
      --seg_model "$weights/$SONO_SEG_WEIGHTS" --cls_model "$weights/$SONO_CLS_WEIGHTS" \
      --csv "/tmp/predict_bs$bs.csv" --overwrite
  done
fi

# --- 3. where one training step's GPU time goes (float32 MiT, bf16 ConvNeXt: the worst ratios)
ncu_step() {
  step 60 "$OUT/ncu.txt" ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --print-summary per-kernel \
    "$B/tools/bench/model_bench" --device cuda --warmup 1 --repeats 1 --mode train "$@"
}
ncu_step --model mit_b2 --size 256 --batch 8 --amp off
ncu_step --model convnext_base --size 224 --batch 16 --amp bf16
python3 "$here/ncu_summary.py" "$OUT/ncu.txt" >"$OUT/ncu_summary.txt" 2>&1
cat "$OUT/ncu_summary.txt"

# --- 4. the kernel tests under compute-sanitizer
# racecheck with our convs only: it reports hazards inside cuDNN's own sm90 kernels, which are
# not ours to fix, and runs slower than memcheck.
for tool in $SANITIZERS; do
  if [ "$tool" = racecheck ]; then
    SONO_CONV_IMPL=ours step 150 "$B/$tool.log" compute-sanitizer --tool "$tool" --print-limit 20 "$B/tests/test_cuda_kernels" &
  else
    step 120 "$B/$tool.log" compute-sanitizer --tool "$tool" --print-limit 20 "$B/tests/test_cuda_kernels" &
  fi
done
wait
cat "$B/memcheck.log" "$B/racecheck.log" >"$OUT/sanitizer.log" 2>/dev/null
grep -E '^=== |ERROR SUMMARY|RACECHECK SUMMARY|test cases' "$OUT/sanitizer.log" | tee -a "$OUT/timeline.txt"

# --- 5. if time is left: ncu of the other two training configs
ncu_step --model convnext_base --size 224 --batch 16 --amp off
ncu_step --model mit_b2 --size 256 --batch 8 --amp bf16
python3 "$here/ncu_summary.py" "$OUT/ncu.txt" >"$OUT/ncu_summary.txt" 2>&1

log "end"
