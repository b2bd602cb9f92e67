#pragma once
// Tensor-core tiles through the WMMA API (bfloat16 x bfloat16 -> float32, 16x16x16): nvcc's
// <mma.h> on the device, the emulator's warp-collective (cuda/simt/wmma.h) under a host
// compiler, so one kernel source runs on sm_80/sm_90 tensor cores and in the tests. WMMA's
// fragment layout is opaque, which is what lets the emulator implement it exactly.
// SONO_WMMA_BF16 is 1 where bf16 WMMA exists: the emulator, nvcc's host pass, sm_80 and later;
// kernels keep a SIMT fallback for the rest.
#include "cuda/kernels/bf16.cuh"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <mma.h>
#else
#include "cuda/simt/wmma.h"
#endif

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define SONO_WMMA_BF16 1
#else
#define SONO_WMMA_BF16 0
#endif

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

namespace wmma = nvcuda::wmma;
constexpr int kWmmaTile = 16;  // M = N = K

// The bfloat16 type WMMA loads: cuda_bf16.h's on the device (the same 16 bits as ours).
#ifdef __CUDACC__
using WmmaBf16 = __nv_bfloat16;
#else
using WmmaBf16 = bfloat16;
#endif
__device__ __forceinline__ const WmmaBf16* as_wmma(const bfloat16* p) {
  return reinterpret_cast<const WmmaBf16*>(p);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
