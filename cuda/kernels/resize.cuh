#pragma once
// Bilinear resize of NHWC images, as F.interpolate(mode="bilinear") with and without
// align_corners: forward a thread per output value, backward scatters each output gradient to
// its four inputs with atomicAdd (into a zeroed grad_x).
#include "cuda/kernels/elementwise.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

struct ResizeGeometry {
  int64_t n, in_h, in_w, out_h, out_w, c;
  bool align_corners;
};

// The two source rows (or columns) an output row reads and their weights.
struct Taps {
  int64_t i0, i1;
  float l0, l1;
};

// PyTorch's area_pixel_compute_scale / compute_source_index_and_lambda, in float.
__host__ __device__ inline Taps source_taps(int64_t dst, int64_t in, int64_t out,
                                            bool align_corners) {
  if (in == out) return {dst, dst, 1.0f, 0.0f};
  const float scale = align_corners ? (out > 1 ? static_cast<float>(in - 1) / (out - 1) : 0.0f)
                                    : static_cast<float>(in) / out;
  float src = align_corners ? scale * dst : scale * (dst + 0.5f) - 0.5f;
  if (src < 0.0f) src = 0.0f;
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in - 1) i0 = in - 1;
  const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
  float l1 = src - i0;
  l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
  return {i0, i1, 1.0f - l1, l1};
}

// Output element i: the offsets in the input of the four pixels it blends, and their weights.
struct BilinearPoint {
  int64_t offset[4];
  float weight[4];
};

__host__ __device__ inline BilinearPoint bilinear_point(const ResizeGeometry& g, int64_t i) {
  const Nhwc o = nhwc_index(i, g.out_h, g.out_w, g.c);
  const Taps ty = source_taps(o.y, g.in_h, g.out_h, g.align_corners);
  const Taps tx = source_taps(o.x, g.in_w, g.out_w, g.align_corners);
  const int64_t image = o.n * g.in_h * g.in_w;
  auto at = [&](int64_t yy, int64_t xx) { return (image + yy * g.in_w + xx) * g.c + o.c; };
  return {{at(ty.i0, tx.i0), at(ty.i0, tx.i1), at(ty.i1, tx.i0), at(ty.i1, tx.i1)},
          {ty.l0 * tx.l0, ty.l0 * tx.l1, ty.l1 * tx.l0, ty.l1 * tx.l1}};
}

template <typename T>
__global__ void resize_bilinear_forward_kernel(ResizeGeometry g, const T* x, T* y) {
  const int64_t total = g.n * g.out_h * g.out_w * g.c;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const BilinearPoint p = bilinear_point(g, i);
    T v = 0;
    for (int k = 0; k < 4; ++k) v += p.weight[k] * x[p.offset[k]];
    y[i] = v;
  }
}

template <typename T>
__global__ void resize_bilinear_backward_kernel(ResizeGeometry g, const T* grad_y, T* grad_x) {
  const int64_t total = g.n * g.out_h * g.out_w * g.c;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const BilinearPoint p = bilinear_point(g, i);
    for (int k = 0; k < 4; ++k) atomicAdd(grad_x + p.offset[k], p.weight[k] * grad_y[i]);
  }
}

inline void resize_bilinear_forward(const ResizeGeometry& g, const float* x, float* y,
                                    cudaStream_t stream) {
  launch("resize_bilinear_forward", resize_bilinear_forward_kernel<float>,
         elementwise_config(g.n * g.out_h * g.out_w * g.c, 4 * 4, 4, stream), g, x, y);
}

// grad_x must be zeroed: gradients accumulate into it.
inline void resize_bilinear_backward(const ResizeGeometry& g, const float* grad_y, float* grad_x,
                                     cudaStream_t stream) {
  launch("resize_bilinear_backward", resize_bilinear_backward_kernel<float>,
         elementwise_config(g.n * g.out_h * g.out_w * g.c, 4, 4 * 4, stream), g, grad_y, grad_x);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
