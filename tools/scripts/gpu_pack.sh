#!/usr/bin/env bash
# On a machine without a GPU: builds what tools/scripts/gpu_check.sh runs on one, and packs it
# into gpu/ (ignored by git: .gitignore), so that the GPU's scarce minutes go to measuring, not
# building. Portable binaries (-march=x86-64-v4 instead of this CPU's, sm_80 + sm_90) in a
# separate build folder, build-gpu/: the CUDA tests, model_bench and the tools, as an xz tar;
# libgomp and the CUDA runtime; the run script and the Python it needs;
# segmentation_models_pytorch's wheel when pip can fetch it (PyTorch and timm come with the GPU
# machine). Fails when the folder would exceed the device tool's 64 MiB carry limit.
#   bash tools/scripts/gpu_pack.sh
# then, on the GPU machine, from the repository root: OUT=results bash gpu/gpu_check.sh (tests,
# speed, ncu, sanitizers) or DATA=... OUT=results bash gpu/gpu_train.sh (5-fold training)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${SONO_GPU_BUILD:-build-gpu}
pack=gpu
limit_mib=64
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
if ! command -v nvcc >/dev/null; then
  echo "gpu_pack.sh: nvcc not found (PATH, /usr/local/cuda/bin): the CUDA backend cannot be built" >&2
  exit 1
fi

tests=(test_cuda_kernels test_cuda_conv_impl test_cuda_amp_convnext test_cuda_amp_deeplab test_nccl)
tools=(seg_train cls_train predict model_info)
# Without MPI and DCMTK: the GPU machine has neither library, and the tools would not start.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSONO_NATIVE=OFF \
  -DCMAKE_CXX_FLAGS=-march=x86-64-v4 -DCMAKE_CUDA_ARCHITECTURES="80;90" -DSONO_BUILD_BENCH=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON -DCMAKE_DISABLE_FIND_PACKAGE_DCMTK=ON >/dev/null
targets=()
for t in "${tests[@]}" "${tools[@]}" model_bench; do targets+=(--target "$t"); done
cmake --build "$build" -j"$(nproc)" "${targets[@]}"

rm -rf "$pack"
mkdir -p "$pack/lib"
binaries=(tools/bench/model_bench)
for t in "${tests[@]}"; do binaries+=("tests/$t"); done
for t in "${tools[@]}"; do binaries+=("bin/$t"); done
# One xz stream with a dictionary larger than all binaries together: they share most of their
# CUDA fat binary, so this packs ~180 MiB into ~5 (blocks of a multi-threaded xz would not).
tar -C "$build" -c "${binaries[@]}" | xz -9 -T1 --lzma2=preset=9,dict=256MiB >"$pack/bins.tar.xz"
# libgomp, the CUDA runtime and libdeflate (PNG reading) the binaries were linked with (small;
# cuBLAS and cuDNN are large and come with the GPU machine's toolkit or PyTorch)
for lib in libgomp.so.1 libcudart.so libdeflate.so.0; do
  path=$(ldd "$build/bin/predict" | awk -v l="$lib" 'index($1, l) == 1 {print $3}')
  if [ -z "$path" ]; then
    echo "gpu_pack.sh: ldd finds no $lib for $build/bin/predict" >&2
    exit 1
  fi
  cp -L "$path" "$pack/lib/"
done
cp tools/scripts/gpu_check.sh tools/scripts/gpu_env.sh tools/scripts/gpu_train.sh tools/bench/torch_bench.py tools/bench/gpu_table.py \
  tools/bench/ncu_summary.py "$pack/"
if ! python3 -m pip download -q --no-deps --only-binary :all: -d "$pack/whl" \
    "segmentation-models-pytorch==0.6.0" 2>/dev/null; then
  rm -rf "$pack/whl"
  echo "gpu_pack.sh: no segmentation_models_pytorch wheel (pip download failed): PyTorch's mit_b2 runs need it on the GPU machine"
fi

for b in "${binaries[@]}"; do
  printf '%8.1f MiB  %s (unpacked)\n' "$(du -k "$build/$b" | awk '{print $1 / 1024}')" "$build/$b"
done
du -ak "$pack" | sort -k2 | awk '{printf "%8.1f MiB  %s\n", $1 / 1024, $2}'
total_kib=$(du -sk "$pack" | cut -f1)
if (( total_kib > limit_mib * 1024 )); then
  echo "gpu_pack.sh: $pack/ is $((total_kib / 1024)) MiB, over the device tool's ${limit_mib} MiB carry limit" >&2
  exit 1
fi
echo "packed $pack/ ($((total_kib / 1024)) MiB of ${limit_mib}): carry it and run 'OUT=\$OUT bash $pack/gpu_check.sh'"
