#pragma once
// bfloat16 for mixed precision (tensor/autocast.h): a float32 rounded to nearest even into its
// top 16 bits, as __float2bfloat16_rn does. Plain bits rather than cuda_bf16.h's type, so the
// same kernels build under the emulator; cuBLAS reads them as CUDA_R_16BF.
#include "cuda/kernels/common.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

struct bfloat16 {
  uint16_t bits;
};

__device__ __forceinline__ bfloat16 bf16_from_float(float x) {
  const unsigned u = __float_as_uint(x);
  // A NaN keeps its sign and top payload and is made quiet, so rounding cannot turn it into inf.
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
__device__ __forceinline__ float bf16_to_float(bfloat16 b) {
  return __uint_as_float(static_cast<unsigned>(b.bits) << 16);
}
// x rounded to the nearest bfloat16, kept in a float (operands of bf16 GEMMs, loaded as tiles).
__device__ __forceinline__ float bf16_round(float x) { return bf16_to_float(bf16_from_float(x)); }

// A value as a float: float32 as it is, bfloat16 widened (exact).
__device__ __forceinline__ float load_float(float x) { return x; }
__device__ __forceinline__ float load_float(bfloat16 x) { return bf16_to_float(x); }
// Stores a float result as float32, or rounded to bfloat16 (autocast's activations).
__device__ __forceinline__ void store_float(float& y, float v) { y = v; }
__device__ __forceinline__ void store_float(bfloat16& y, float v) { y = bf16_from_float(v); }

template <typename From, typename To>
__global__ void bf16_convert_kernel(int64_t n, const From* x, To* y) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) store_float(y[i], load_float(x[i]));
}

// y = x converted float32 -> bfloat16 (rounded) or bfloat16 -> float32 (exact), n elements.
template <typename From, typename To>
void bf16_convert(int64_t n, const From* x, To* y, cudaStream_t stream) {
  constexpr int threads = 256;
  launch("bf16_convert", bf16_convert_kernel<From, To>,
         {dim3(grid_blocks(n, threads)), dim3(threads), 0, stream,
          per_element(n, sizeof(From), sizeof(To))},
         n, x, y);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
