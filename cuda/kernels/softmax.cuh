#pragma once
// Softmax and log-softmax over the last dim of contiguous rows: a warp per row. The forward
// pass reads the row once for an online max and sum (each lane rescales its running sum when its
// max grows; lanes merge their pairs by shuffles), then once more to write.
#include "cuda/kernels/common.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

constexpr int kSoftmaxWarps = 4;  // rows per block

// Running (max, sum of exp(x - max)) of a set of values; empty: (-inf, 0).
struct MaxSum {
  float max = -INFINITY;
  float sum = 0.0f;

  __device__ void add(float v) {
    if (v > max) {
      sum = sum * expf(max - v) + 1.0f;  // exp(-inf) = 0 for the first value
      max = v;
    } else if (v > -INFINITY) {
      sum += expf(v - max);
    }
  }
  __device__ void merge(float other_max, float other_sum) {
    const float m = fmaxf(max, other_max);
    if (m == -INFINITY) return;
    sum = (max == -INFINITY ? 0.0f : sum * expf(max - m)) +
          (other_max == -INFINITY ? 0.0f : other_sum * expf(other_max - m));
    max = m;
  }
};

template <bool Log>
__global__ void softmax_forward_kernel(int64_t rows, int64_t cols, const float* x, float* y) {
  const int lane = threadIdx.x % kWarp;
  SONO_FOR_EACH_WARP_ROW(row, rows) {
    const float* xr = x + row * cols;
    float* yr = y + row * cols;
    MaxSum ms;
    for (int64_t c = lane; c < cols; c += kWarp) ms.add(xr[c]);
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float other_max = __shfl_xor_sync(kFullMask, ms.max, offset);
      const float other_sum = __shfl_xor_sync(kFullMask, ms.sum, offset);
      ms.merge(other_max, other_sum);
    }
    const float log_sum = logf(ms.sum);
    for (int64_t c = lane; c < cols; c += kWarp) {
      const float shifted = xr[c] - ms.max;
      yr[c] = Log ? shifted - log_sum : expf(shifted) / ms.sum;
    }
  }
}

// softmax: grad_x = y (grad_y - sum(grad_y y)); log-softmax: grad_x = grad_y - exp(y) sum(grad_y).
template <bool Log>
__global__ void softmax_backward_kernel(int64_t rows, int64_t cols, const float* y,
                                        const float* grad_y, float* grad_x) {
  const int lane = threadIdx.x % kWarp;
  SONO_FOR_EACH_WARP_ROW(row, rows) {
    const float* yr = y + row * cols;
    const float* gr = grad_y + row * cols;
    float* gx = grad_x + row * cols;
    float dot = 0.0f;
    for (int64_t c = lane; c < cols; c += kWarp) dot += Log ? gr[c] : gr[c] * yr[c];
    dot = warp_sum(dot);
    for (int64_t c = lane; c < cols; c += kWarp)
      gx[c] = Log ? gr[c] - expf(yr[c]) * dot : yr[c] * (gr[c] - dot);
  }
}

// A warp per row; each row element is read `reads` times (4 bytes) and written once.
inline LaunchConfig softmax_config(int64_t rows, int64_t cols, int reads, cudaStream_t stream) {
  const double elements = static_cast<double>(rows * cols);
  return {dim3(grid_blocks(rows, kSoftmaxWarps)), dim3(kSoftmaxWarps * kWarp), 0, stream,
          looped(4.0 * reads * elements, 4.0 * elements, rows * kWarp, ceil_div(cols, kWarp))};
}

inline void softmax_forward(int64_t rows, int64_t cols, const float* x, float* y, bool log,
                            cudaStream_t stream) {
  if (log)
    launch("log_softmax_forward", softmax_forward_kernel<true>, softmax_config(rows, cols, 1, stream), rows,
           cols, x, y);
  else
    launch("softmax_forward", softmax_forward_kernel<false>, softmax_config(rows, cols, 1, stream), rows,
           cols, x, y);
}

inline void softmax_backward(int64_t rows, int64_t cols, const float* y, const float* grad_y,
                             float* grad_x, bool log, cudaStream_t stream) {
  if (log)
    launch("log_softmax_backward", softmax_backward_kernel<true>, softmax_config(rows, cols, 2, stream),
           rows, cols, y, grad_y, grad_x);
  else
    launch("softmax_backward", softmax_backward_kernel<false>, softmax_config(rows, cols, 2, stream), rows,
           cols, y, grad_y, grad_x);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
