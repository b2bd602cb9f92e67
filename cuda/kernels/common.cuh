#pragma once
// What every kernel header shares. Kernel headers compile under nvcc (included by
// cuda/cuda_backend.cu) and under a host compiler with the SIMT emulator (tests/test_cuda_kernels.cpp),
// so they hold only code valid in both:
// - kernels are templates (nvcc ignores `inline` on __global__, and a header's non-inline
//   function would be defined twice when two files include it);
// - no inline PTX, only _sync warp intrinsics and WMMA (the emulator has both: cuda/simt);
// - each op family has host launchers taking raw pointers, sizes and a stream, which the
//   backend (cuda/cuda_backend.cu) and the tests both call.
#include <cstdint>
#include <math.h>

#include "cuda/launch.h"
#include "tensor/error.h"

#ifdef __CUDACC__
#define SONO_UNROLL _Pragma("unroll")
// A loop kept rolled: its body is unrolled inside, and the whole unrolled would outgrow the
// instruction cache.
#define SONO_NO_UNROLL _Pragma("unroll 1")
#else
#define SONO_UNROLL
#define SONO_NO_UNROLL
#endif

#ifdef __CUDACC__
#define DYNAMIC_SMEM(T, name)                                            \
  extern __shared__ __align__(16) unsigned char sono_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(sono_dynamic_smem_)
#else
#define DYNAMIC_SMEM(T, name) T* name = static_cast<T*>(::simt::dynamic_smem())
#endif

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
// Grid-stride kernels cap their grid here: enough blocks to fill an H100 several times.
constexpr int64_t kMaxGridBlocks = 4096;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for n items at `per_block` items a block, at most kMaxGridBlocks (grid-stride loops
// cover the rest).
inline unsigned grid_blocks(int64_t n, int64_t per_block) {
  int64_t b = ceil_div(n, per_block);
  return static_cast<unsigned>(b < kMaxGridBlocks ? b : kMaxGridBlocks);
}

// a / b and a % b for a >= 0, b > 0; in 32 bits where both fit. A GPU divides 64-bit integers
// in a software routine several times longer than the 32-bit one, and the index arithmetic of
// elementwise kernels is what bounds them: a contiguous copy doing one 64-bit division an
// element moved 1.1 TB/s on the H200, a plain conversion without one 1.9.
struct QuotientRemainder {
  int64_t quotient, remainder;
};
__host__ __device__ inline QuotientRemainder divide(int64_t a, int64_t b) {
  if (static_cast<uint64_t>(a | b) <= 0xffffffffu) {
    const uint32_t q = static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
    return {q, static_cast<uint32_t>(a) - q * static_cast<uint32_t>(b)};
  }
  return {a / b, a % b};
}

// The coordinates of element i of a contiguous NHWC tensor of h x w x c images.
struct Nhwc {
  int64_t n, y, x, c;
};
__host__ __device__ inline Nhwc nhwc_index(int64_t i, int64_t h, int64_t w, int64_t c) {
  const QuotientRemainder pixel = divide(i, c), row = divide(pixel.quotient, w),
                          image = divide(row.quotient, h);
  return {image.quotient, image.remainder, row.remainder, pixel.remainder};
}

// Index of this thread in a 1-D grid and the number of threads of the grid.
__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Rows handled a warp per row, grid-stride: every lane of a warp sees the same sequence, so
// warp intrinsics stay converged.
#define SONO_FOR_EACH_WARP_ROW(row, rows)                                          \
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) +     \
                     threadIdx.x / kWarp;                                          \
       row < (rows); row += static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp))

struct SumOp {
  template <typename T>
  __host__ __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <typename T>
  __host__ __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};

// Butterfly reduction: every lane of the warp ends up with the result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  return warp_reduce(v, SumOp{});
}

// Reduction over a 1-D block whose size is a multiple of 32; every thread gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T identity, Op op) {
  __shared__ T partial[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_reduce(v, op);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / kWarp) ? partial[lane] : identity;
  v = warp_reduce(v, op);  // each warp reduces the partials itself: no broadcast needed
  __syncthreads();         // `partial` is reused by the next call
  return v;
}

// Column reductions over a (32, Rows) block: v folded over threadIdx.y in order, valid where
// threadIdx.y == 0. The first stage of the two-stage column reductions (Rows = kTileRows).
constexpr int kTileRows = 8;
template <int Rows = kTileRows, typename T, typename Op>
__device__ __forceinline__ T reduce_over_tile_rows(T v, T identity, Op op) {
  __shared__ T tile[Rows][kWarp + 1];  // +1: no bank conflicts
  tile[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  T total = identity;
  if (threadIdx.y == 0)
    for (int i = 0; i < Rows; ++i) total = op(total, tile[i][threadIdx.x]);
  __syncthreads();  // `tile` is reused by the next call
  return total;
}
template <typename T>
__device__ __forceinline__ T sum_over_tile_rows(T v) {
  return reduce_over_tile_rows(v, T(0), SumOp{});
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
