#pragma once
// Depthwise 2-D convolution, NHWC, weight [C, 1, KH, KW] (PyTorch's layout), any stride,
// padding and dilation: forward, input gradient (a gather: no atomics) and weight gradient
// (partial sums over chunks of output positions, then a sum over the chunks). The 3x3 and 7x7
// kernels of MiT and ConvNeXt get their tap loops unrolled. Under bf16 autocast (Bf16) both
// operands are rounded to bfloat16 and sums stay float32; the forward then reads and writes
// autocast's bfloat16 activations.
#include <type_traits>

#include "cuda/kernels/bf16.cuh"
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

// Where tap k of a row (or column) `at` reads, or -1 where it reads padding. Forward: output
// row `at` reads input row at * stride - padding + k * dilation. Input gradient: input row `at`
// gathers from the output row that read it through tap k, if any. G: any geometry with
// stride, padding and dilation (the dense convolutions of conv.cuh share this).
template <bool InputGrad, typename G>
__device__ __forceinline__ int64_t tap_source(int64_t at, int64_t k, int64_t size, const G& g) {
  if (!InputGrad) {
    const int64_t r = at * g.stride - g.padding + k * g.dilation;
    return r >= 0 && r < size ? r : -1;
  }
  const int64_t t = at + g.padding - k * g.dilation;
  return t >= 0 && t % g.stride == 0 && t / g.stride < size ? t / g.stride : -1;
}

// An operand as the products read it: rounded to bfloat16 under autocast (exact for a value
// that already is one).
template <bool Bf16, typename T>
__device__ __forceinline__ float product_operand(T v) {
  return Bf16 ? bf16_round(load_float(v)) : load_float(v);
}

// dst[n, y, x, c] = sum over taps of src[n, source(y), source(x), c] * weight[c, tap]: the
// forward pass (src = x, dst = y) or the input gradient (src = grad_y, dst = grad_x; a
// gather, so no atomics). Src and Dst: float, or bfloat16 (autocast's x and y).
template <typename Src, typename Dst, int K, bool InputGrad, bool Bf16>
__global__ void depthwise_gather_kernel(DepthwiseGeometry g, const Src* src, const float* weight,
                                        Dst* dst) {
  const int64_t src_h = InputGrad ? g.oh : g.h, src_w = InputGrad ? g.ow : g.w;
  const int64_t dst_h = InputGrad ? g.h : g.oh, dst_w = InputGrad ? g.w : g.ow;
  const int64_t total = g.n * dst_h * dst_w * g.c;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const Nhwc d = nhwc_index(i, dst_h, dst_w, g.c);
    const float* wc = weight + d.c * taps_h<K>(g) * taps_w<K>(g);
    float acc = 0.0f;
    for (int64_t ky = 0; ky < taps_h<K>(g); ++ky) {
      const int64_t sy = tap_source<InputGrad>(d.y, ky, src_h, g);
      if (sy < 0) continue;
      for (int64_t kx = 0; kx < taps_w<K>(g); ++kx) {
        const int64_t sx = tap_source<InputGrad>(d.x, kx, src_w, g);
        if (sx < 0) continue;
        acc += product_operand<Bf16>(src[((d.n * src_h + sy) * src_w + sx) * g.c + d.c]) *
               product_operand<Bf16>(wc[ky * taps_w<K>(g) + kx]);
      }
    }
    store_float(dst[i], acc);
  }
}

// Block (32, kTileRows) at (channel tile, tap, chunk): sums grad_y * x over the chunk's output
// positions into partial[chunk][c][tap]. X: float, or bfloat16 (autocast's saved x).
template <typename X, bool Bf16>
__global__ void depthwise_weight_partial_kernel(DepthwiseGeometry g, int64_t chunk_positions,
                                                const X* x, const float* grad_y, float* partial) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t tap = blockIdx.y, taps = g.kh * g.kw;
  const int64_t ky = tap / g.kw, kx = tap % g.kw;
  const int64_t positions = g.n * g.oh * g.ow;
  const int64_t first = blockIdx.z * chunk_positions;
  const int64_t last = first + chunk_positions < positions ? first + chunk_positions : positions;
  float acc = 0.0f;
  if (c < g.c) {
    for (int64_t p = first + threadIdx.y; p < last; p += kTileRows) {
      const Nhwc o = nhwc_index(p, g.oh, g.ow, 1);
      const int64_t iy = tap_source<false>(o.y, ky, g.h, g);
      const int64_t ix = tap_source<false>(o.x, kx, g.w, g);
      if (iy >= 0 && ix >= 0)
        acc += product_operand<Bf16>(grad_y[p * g.c + c]) *
               product_operand<Bf16>(x[((o.n * g.h + iy) * g.w + ix) * g.c + c]);
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

// The gather kernel for `g`'s taps, with or without bf16 operands.
template <typename Src, typename Dst, bool InputGrad>
void launch_depthwise_gather(const char* name, const DepthwiseGeometry& g, const Src* src,
                             const float* weight, Dst* dst, bool bf16, cudaStream_t stream) {
  const int64_t outputs = InputGrad ? g.n * g.h * g.w * g.c : g.n * g.oh * g.ow * g.c;
  dispatch_taps(g, [&](auto k) {
    constexpr int K = decltype(k)::value;
    const LaunchConfig cfg = elementwise_config(outputs, stream);
    if (bf16) launch(name, depthwise_gather_kernel<Src, Dst, K, InputGrad, true>, cfg, g, src, weight, dst);
    else launch(name, depthwise_gather_kernel<Src, Dst, K, InputGrad, false>, cfg, g, src, weight, dst);
  });
}

// bf16: operands rounded to bfloat16 (mixed precision). X, Y: float or bfloat16.
template <typename X, typename Y>
void depthwise_forward(const DepthwiseGeometry& g, const X* x, const float* weight, Y* y,
                       cudaStream_t stream, bool bf16 = false) {
  launch_depthwise_gather<X, Y, false>("depthwise_conv_forward", g, x, weight, y, bf16, stream);
}

inline void depthwise_backward_input(const DepthwiseGeometry& g, const float* grad_y,
                                     const float* weight, float* grad_x, cudaStream_t stream,
                                     bool bf16 = false) {
  launch_depthwise_gather<float, float, true>("depthwise_conv_backward_input", g, grad_y, weight,
                                              grad_x, bf16, stream);
}

// Chunks of output positions for the weight gradient's first stage: enough to fill the GPU.
inline int64_t depthwise_weight_chunks(const DepthwiseGeometry& g) {
  return fill_chunks(g.n * g.oh * g.ow, ceil_div(g.c, kWarp) * g.kh * g.kw, kTileRows,
                     kTileRows * 16);
}
// Floats of scratch depthwise_backward_weight needs.
inline int64_t depthwise_backward_weight_workspace(const DepthwiseGeometry& g) {
  return depthwise_weight_chunks(g) * g.c * g.kh * g.kw;
}

template <typename X>
void depthwise_backward_weight(const DepthwiseGeometry& g, const X* x, const float* grad_y,
                               float* grad_weight, float* workspace, cudaStream_t stream,
                               bool bf16 = false) {
  const int64_t chunks = depthwise_weight_chunks(g), taps = g.kh * g.kw;
  const LaunchConfig cfg{dim3(static_cast<unsigned>(ceil_div(g.c, kWarp)),
                              static_cast<unsigned>(taps), static_cast<unsigned>(chunks)),
                         dim3(kWarp, kTileRows), 0, stream};
  const int64_t chunk_positions = ceil_div(g.n * g.oh * g.ow, chunks);
  const char* name = "depthwise_conv_weight_partial";
  if (bf16) launch(name, depthwise_weight_partial_kernel<X, true>, cfg, g, chunk_positions, x, grad_y, workspace);
  else launch(name, depthwise_weight_partial_kernel<X, false>, cfg, g, chunk_positions, x, grad_y, workspace);
  column_sums(workspace, chunks, g.c * taps, grad_weight, stream);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
