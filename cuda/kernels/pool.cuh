#pragma once
// Max pooling of NHWC images, as F.max_pool2d (tensor/cpu/pool.cpp is the CPU reference): the
// forward a thread per output value, keeping each maximum's input pixel (argmax); the backward a
// thread per input value, gathering grad_y from the few windows that hold it where argmax names
// it (no atomics, a fixed order).
#include "cuda/kernels/elementwise.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

struct PoolGeometry {
  int64_t n, h, w, c, oh, ow, kernel, stride, padding;
};

// Input rows [first, last) of output row o's window, inside the image.
struct PoolSpan {
  int64_t first, last;
};
__host__ __device__ inline PoolSpan pool_window(int64_t o, int64_t size, const PoolGeometry& g) {
  const int64_t start = o * g.stride - g.padding, end = start + g.kernel;
  return {start > 0 ? start : 0, end < size ? end : size};
}
// Output rows [first, last) whose windows hold input row i.
__host__ __device__ inline PoolSpan pool_readers(int64_t i, int64_t out, const PoolGeometry& g) {
  const int64_t reach = i + g.padding - (g.kernel - 1);
  const int64_t last = (i + g.padding) / g.stride + 1;
  return {reach <= 0 ? 0 : (reach + g.stride - 1) / g.stride, last < out ? last : out};
}

template <typename T>
__global__ void max_pool_forward_kernel(PoolGeometry g, const T* x, T* y, int64_t* argmax) {
  const int64_t total = g.n * g.oh * g.ow * g.c;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const Nhwc o = nhwc_index(i, g.oh, g.ow, g.c);
    const PoolSpan sy = pool_window(o.y, g.h, g), sx = pool_window(o.x, g.w, g);
    float best = -INFINITY;
    int64_t at = sy.first * g.w + sx.first;
    for (int64_t iy = sy.first; iy < sy.last; ++iy)
      for (int64_t ix = sx.first; ix < sx.last; ++ix) {
        const float v = x[((o.n * g.h + iy) * g.w + ix) * g.c + o.c];
        if (v > best || isnan(v)) {
          best = v;
          at = iy * g.w + ix;
        }
      }
    y[i] = best;
    if (argmax) argmax[i] = at;
  }
}

template <typename T>
__global__ void max_pool_backward_kernel(PoolGeometry g, const T* grad_y, const int64_t* argmax,
                                         T* grad_x) {
  const int64_t total = g.n * g.h * g.w * g.c;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const Nhwc q = nhwc_index(i, g.h, g.w, g.c);
    const PoolSpan oy = pool_readers(q.y, g.oh, g), ox = pool_readers(q.x, g.ow, g);
    const int64_t pixel = q.y * g.w + q.x;
    T acc = 0;
    for (int64_t y = oy.first; y < oy.last; ++y)
      for (int64_t x = ox.first; x < ox.last; ++x) {
        const int64_t out = ((q.n * g.oh + y) * g.ow + x) * g.c + q.c;
        if (argmax[out] == pixel) acc += grad_y[out];
      }
    grad_x[i] = acc;
  }
}

inline void max_pool_forward(const PoolGeometry& g, const float* x, float* y, int64_t* argmax,
                             cudaStream_t stream) {
  const int64_t n = g.n * g.oh * g.ow * g.c;
  LaunchConfig cfg = elementwise_config(n, 0, sizeof(float) + (argmax ? sizeof(int64_t) : 0), stream);
  cfg.cost.bytes_read = 4.0 * g.n * g.h * g.w * g.c;
  cfg.cost.per_item = g.kernel * g.kernel;  // a thread's window
  launch("max_pool_forward", max_pool_forward_kernel<float>, cfg, g, x, y, argmax);
}

inline void max_pool_backward(const PoolGeometry& g, const float* grad_y, const int64_t* argmax,
                              float* grad_x, cudaStream_t stream) {
  const int64_t n = g.n * g.h * g.w * g.c;
  LaunchConfig cfg = elementwise_config(n, 0, sizeof(float), stream);
  cfg.cost.bytes_read = (4.0 + 8.0) * g.n * g.oh * g.ow * g.c;
  cfg.cost.per_item = ceil_div(g.kernel, g.stride) * ceil_div(g.kernel, g.stride);  // its windows
  launch("max_pool_backward", max_pool_backward_kernel<float>, cfg, g, grad_y, argmax, grad_x);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
