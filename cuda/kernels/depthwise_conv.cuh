#pragma once
// Depthwise 2-D convolution, NHWC, weight [C, 1, KH, KW] (PyTorch's layout), any stride,
// padding and dilation: forward, input gradient (a gather: no atomics) and weight gradient
// (partial sums over chunks of output positions, then a sum over the chunks). The 3x3 and 7x7
// kernels of MiT and ConvNeXt get their tap loops unrolled.
#include <algorithm>

#include "cuda/kernels/reduce.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

struct DepthwiseGeometry {
  int64_t n, h, w, c;  // input [n, h, w, c]
  int64_t kh, kw;
  int64_t oh, ow;      // output [n, oh, ow, c]
  int64_t stride, padding, dilation;
};

// K > 0: a K x K kernel known at compile time; 0: g.kh x g.kw.
template <int K>
__device__ __forceinline__ int64_t taps_h(const DepthwiseGeometry& g) { return K ? K : g.kh; }
template <int K>
__device__ __forceinline__ int64_t taps_w(const DepthwiseGeometry& g) { return K ? K : g.kw; }

template <typename T, int K>
__global__ void depthwise_forward_kernel(DepthwiseGeometry g, const T* x, const T* weight, T* y) {
  const int64_t total = g.n * g.oh * g.ow * g.c;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t c = i % g.c, ox = i / g.c % g.ow, oy = i / (g.c * g.ow) % g.oh,
                  n = i / (g.c * g.ow * g.oh);
    const T* wc = weight + c * taps_h<K>(g) * taps_w<K>(g);
    float acc = 0.0f;
    for (int64_t ky = 0; ky < taps_h<K>(g); ++ky) {
      const int64_t iy = oy * g.stride - g.padding + ky * g.dilation;
      if (iy < 0 || iy >= g.h) continue;
      for (int64_t kx = 0; kx < taps_w<K>(g); ++kx) {
        const int64_t ix = ox * g.stride - g.padding + kx * g.dilation;
        if (ix < 0 || ix >= g.w) continue;
        acc += x[((n * g.h + iy) * g.w + ix) * g.c + c] * wc[ky * taps_w<K>(g) + kx];
      }
    }
    y[i] = acc;
  }
}

// grad_x[n, iy, ix, c] = sum over the taps that read (iy, ix) of grad_y * weight.
template <typename T, int K>
__global__ void depthwise_backward_input_kernel(DepthwiseGeometry g, const T* grad_y,
                                                const T* weight, T* grad_x) {
  const int64_t total = g.n * g.h * g.w * g.c;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t c = i % g.c, ix = i / g.c % g.w, iy = i / (g.c * g.w) % g.h,
                  n = i / (g.c * g.w * g.h);
    const T* wc = weight + c * taps_h<K>(g) * taps_w<K>(g);
    float acc = 0.0f;
    for (int64_t ky = 0; ky < taps_h<K>(g); ++ky) {
      const int64_t ty = iy + g.padding - ky * g.dilation;
      if (ty < 0 || ty % g.stride != 0 || ty / g.stride >= g.oh) continue;
      for (int64_t kx = 0; kx < taps_w<K>(g); ++kx) {
        const int64_t tx = ix + g.padding - kx * g.dilation;
        if (tx < 0 || tx % g.stride != 0 || tx / g.stride >= g.ow) continue;
        acc += grad_y[((n * g.oh + ty / g.stride) * g.ow + tx / g.stride) * g.c + c] *
               wc[ky * taps_w<K>(g) + kx];
      }
    }
    grad_x[i] = acc;
  }
}

// Block (32, kTileRows) at (channel tile, tap, chunk): sums grad_y * x over the chunk's output
// positions into partial[chunk][c][tap].
template <typename T>
__global__ void depthwise_weight_partial_kernel(DepthwiseGeometry g, int64_t chunk_positions,
                                                const T* x, const T* grad_y, T* partial) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t tap = blockIdx.y, taps = g.kh * g.kw;
  const int64_t ky = tap / g.kw, kx = tap % g.kw;
  const int64_t positions = g.n * g.oh * g.ow;
  const int64_t first = blockIdx.z * chunk_positions;
  const int64_t last = first + chunk_positions < positions ? first + chunk_positions : positions;
  float acc = 0.0f;
  if (c < g.c) {
    for (int64_t p = first + threadIdx.y; p < last; p += kTileRows) {
      const int64_t ox = p % g.ow, oy = p / g.ow % g.oh, n = p / (g.ow * g.oh);
      const int64_t iy = oy * g.stride - g.padding + ky * g.dilation;
      const int64_t ix = ox * g.stride - g.padding + kx * g.dilation;
      if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
        acc += grad_y[p * g.c + c] * x[((n * g.h + iy) * g.w + ix) * g.c + c];
    }
  }
  acc = sum_over_tile_rows(acc);
  if (threadIdx.y == 0 && c < g.c) partial[(blockIdx.z * g.c + c) * taps + tap] = acc;
}

// Calls f(std::integral_constant<int, K>) with K = 3, 7 or 0 (any other square or non-square size).
template <typename F>
void dispatch_taps(const DepthwiseGeometry& g, F&& f) {
  if (g.kh == 3 && g.kw == 3) f(std::integral_constant<int, 3>{});
  else if (g.kh == 7 && g.kw == 7) f(std::integral_constant<int, 7>{});
  else f(std::integral_constant<int, 0>{});
}

inline void depthwise_forward(const DepthwiseGeometry& g, const float* x, const float* weight,
                              float* y, cudaStream_t stream) {
  dispatch_taps(g, [&](auto k) {
    launch("depthwise_conv_forward", depthwise_forward_kernel<float, decltype(k)::value>,
           elementwise_config(g.n * g.oh * g.ow * g.c, stream), g, x, weight, y);
  });
}

inline void depthwise_backward_input(const DepthwiseGeometry& g, const float* grad_y,
                                     const float* weight, float* grad_x, cudaStream_t stream) {
  dispatch_taps(g, [&](auto k) {
    launch("depthwise_conv_backward_input", depthwise_backward_input_kernel<float, decltype(k)::value>,
           elementwise_config(g.n * g.h * g.w * g.c, stream), g, grad_y, weight, grad_x);
  });
}

inline int64_t depthwise_weight_chunks(const DepthwiseGeometry& g) {
  return std::clamp<int64_t>(ceil_div(g.n * g.oh * g.ow, 256), 1, 64);
}
// Floats of scratch depthwise_backward_weight needs.
inline int64_t depthwise_backward_weight_workspace(const DepthwiseGeometry& g) {
  return depthwise_weight_chunks(g) * g.c * g.kh * g.kw;
}

inline void depthwise_backward_weight(const DepthwiseGeometry& g, const float* x,
                                      const float* grad_y, float* grad_weight, float* workspace,
                                      cudaStream_t stream) {
  const int64_t chunks = depthwise_weight_chunks(g), taps = g.kh * g.kw;
  launch("depthwise_conv_weight_partial", depthwise_weight_partial_kernel<float>,
         {dim3(static_cast<unsigned>(ceil_div(g.c, kWarp)), static_cast<unsigned>(taps),
               static_cast<unsigned>(chunks)),
          dim3(kWarp, kTileRows), 0, stream},
         g, ceil_div(g.n * g.oh * g.ow, chunks), x, grad_y, workspace);
  column_sums(workspace, chunks, g.c * taps, grad_weight, stream);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
