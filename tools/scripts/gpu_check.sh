#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (the `device` tool's, or yours): the CUDA tests on the real
# device, then training and inference steps of both models on it, ours in float32 and bf16, our
# convs forced to our kernels and to cuDNN, and PyTorch's beside them where torch with CUDA
# imports. Everything is written under ${OUT:-gpu_check}/; one short run (a few minutes on 16
# cores, most of it the build).
#   bash tools/scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
SONO_CMAKE_ARGS="-DSONO_BUILD_BENCH=ON" bash tools/scripts/build.sh test_cuda_kernels \
  test_cuda_conv_impl test_cuda_amp_convnext test_cuda_amp_deeplab model_bench \
  >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }

# The tests, on the GPU instead of the emulator (tests/test_device.h).
for t in test_cuda_kernels test_cuda_conv_impl test_cuda_amp_convnext test_cuda_amp_deeplab; do
  SONO_TEST_DEVICE=gpu build/tests/$t >"$out/$t.log" 2>&1
  echo "$t: exit $? ($(grep -E '^\[doctest\] (test cases|assertions)' "$out/$t.log" | tr '\n' ' '))"
done

# Step times and memory, one config per process.
bench() { build/tools/bench/model_bench --device cuda --warmup 3 --repeats 10 "$@"; }
{
  for amp in off bf16; do
    for mode in train infer; do
      bench --model mit_b2 --size 256 --batch 8 --mode $mode --amp $amp
      bench --model convnext_base --size 224 --batch 16 --mode $mode --amp $amp
    done
  done
  for impl in ours cudnn; do
    SONO_CONV_IMPL=$impl bench --model mit_b2 --size 256 --batch 8 --mode train
  done
} | tee "$out/models_sono.jsonl"

python=${PYTHON:-python3}
if $python -c "import torch, timm, segmentation_models_pytorch; assert torch.cuda.is_available()" 2>/dev/null; then
  for amp in off bf16; do
    $python tools/bench/compare.py --build-dir build --device cuda --amp $amp --rounds 1 \
      --quiet-wait 0 --warmup 3 --repeats 10 --models mit_b2:256,convnext_base:224 --batches 8 \
      | tee "$out/models_vs_torch_$amp.txt"
  done
else
  echo "torch with CUDA, timm and smp not importable: PyTorch's side skipped" | tee "$out/torch.txt"
fi
