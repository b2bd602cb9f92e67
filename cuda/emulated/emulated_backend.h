#pragma once
// The emulated CUDA device: the CUDA backend's kernels (cuda/kernel_backend.cuh) compiled by the
// host compiler and run by the SIMT emulator over host memory, with the CPU's GEMM in place of
// cuBLAS. The kernel tests make it Device::cuda; so do the tools given --device cuda with
// SONO_CUDA_EMULATOR=1 in the environment (slow: for checking a machine without a GPU).
#include "cuda/allocator.h"
#include "tensor/backend.h"

namespace sono::cuda {

Backend& emulated_backend();  // one per process
// Its memory is host memory through the CUDA backend's caching allocator: the same in-use and
// peak figures as cuda::memory_stats() gives on a GPU.
MemoryStats emulated_memory_stats();
void reset_emulated_peak_memory();

}  // namespace sono::cuda
