#pragma once
// The emulated CUDA device: the CUDA backend's kernels (cuda/kernel_backend.cuh) compiled by the
// host compiler and run by the SIMT emulator over host memory, with the CPU's GEMM in place of
// cuBLAS. The kernel tests make it Device::cuda; so do the tools given --device cuda with
// SONO_CUDA_EMULATOR=1 in the environment (slow: for checking a machine without a GPU).
#include "tensor/backend.h"

namespace sono::cuda {

Backend& emulated_backend();  // one per process

}  // namespace sono::cuda
