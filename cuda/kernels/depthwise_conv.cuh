#pragma once
// Depthwise 2-D convolution, NHWC, weight [C, 1, KH, KW] (PyTorch's layout), any stride,
// padding and dilation: forward, input gradient (a gather: no atomics) and weight gradient
// (partial sums over chunks of output positions, then a sum over the chunks). The 3x3 and 7x7
// kernels of MiT and ConvNeXt get their tap loops unrolled, and at stride 1 a gather thread
// computes several outputs of a row from one window of loads. Under bf16 autocast (Bf16) both
// operands are rounded to bfloat16 and sums stay float32; the forward then reads and writes
// autocast's bfloat16 activations.
//
// Expected H200 times, at the memory roofline (bytes moved / 4.3e12 B/s), each pass reading
// its one or two operands once and writing its result once (the taps' overlapping reads hit in
// cache), against the ncu times measured with the previous kernels (scalar, uncoalesced weight
// loads; one block per tap for the weight gradient; shared/measurements/h200-2026-12-04):
// - ConvNeXt-Base 224 bs16, bf16, 7x7 over 56^2x128 (3 blocks), 28^2x256 (3), 14^2x512 (27),
//   7^2x1024 (3): 6.4M, 3.2M, 1.6M, 0.8M elements a layer. Forward (bf16 in, f32 out, 6 B an
//   element): 9.0, 4.5, 2.2, 1.1 us a layer, 104 us a step (measured 5.9 ms); input gradient
//   (8 B): 12, 6.0, 3.0, 1.5 us, 140 us a step (15.7 ms); weight gradient (6 B): as the
//   forward, 104 us a step (22.5 ms).
// - MiT-B2 256 bs8, float32, 3x3 over 64^2x256 (3 blocks), 32^2x512 (4), 16^2x1280 (6),
//   8^2x2048 (3): 8.4M, 4.2M, 2.6M, 1.0M elements. Each pass 8 B an element: 15.6, 7.8, 4.9,
//   2.0 us a layer, 113 us a step per pass (measured, with the 5 separable convs of the
//   DeepLabV3+ head: forward 1.5 ms, input gradient 3.6 ms, weight gradient 4.8 ms).
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
  if constexpr (std::is_same_v<T, bfloat16>) return load_float(v);
  return Bf16 ? bf16_round(load_float(v)) : load_float(v);
}

// V neighbouring values of T moved as one access: a float4, or four bfloat16 in 8 bytes.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

// dst[n, y, x, c] = sum over taps of src[n, source(y), source(x), c] * weight[c, tap]: the
// forward pass (src = x, dst = y) or the input gradient (src = grad_y, dst = grad_x; a
// gather, so no atomics). A thread computes V neighbouring channels of one position with
// vector loads and stores; neighbouring threads take neighbouring channels, so every load of a
// warp is coalesced, and the taps' overlapping reads hit in cache. weight_t is the weight
// transposed to [tap, C], so that the weight loads are coalesced too, and already rounded to
// bfloat16 under Bf16 (transpose_taps_kernel). Src and Dst: float, or bfloat16 (autocast's x
// and y).
template <typename Src, typename Dst, int K, int V, bool InputGrad, bool Bf16>
__global__ void depthwise_gather_kernel(DepthwiseGeometry g, const Src* src, const float* weight_t,
                                        Dst* dst) {
  const int64_t src_h = InputGrad ? g.oh : g.h, src_w = InputGrad ? g.ow : g.w;
  const int64_t dst_h = InputGrad ? g.h : g.oh, dst_w = InputGrad ? g.w : g.ow;
  const int64_t total = g.n * dst_h * dst_w * (g.c / V);
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const Nhwc d = nhwc_index(i, dst_h, dst_w, g.c / V);
    const int64_t c = d.c * V;
    int64_t columns[K > 0 ? K : 1];  // a K x K kernel's source columns, found once
    if constexpr (K > 0) {
      SONO_UNROLL
      for (int kx = 0; kx < K; ++kx) columns[kx] = tap_source<InputGrad>(d.x, kx, src_w, g);
    }
    float acc[V] = {};
    SONO_UNROLL
    for (int64_t ky = 0; ky < taps_h<K>(g); ++ky) {
      const int64_t sy = tap_source<InputGrad>(d.y, ky, src_h, g);
      if (sy < 0) continue;
      const Src* row = src + (d.n * src_h + sy) * src_w * g.c + c;
      SONO_UNROLL
      for (int64_t kx = 0; kx < taps_w<K>(g); ++kx) {
        const int64_t sx = K > 0 ? columns[kx] : tap_source<InputGrad>(d.x, kx, src_w, g);
        if (sx < 0) continue;
        const Pack<Src, V> s = load_pack<V>(row + sx * g.c);
        const Pack<float, V> w = load_pack<V>(weight_t + (ky * taps_w<K>(g) + kx) * g.c + c);
        for (int v = 0; v < V; ++v)
          acc[v] += product_operand<Bf16>(s.v[v]) * w.v[v];
      }
    }
    Pack<Dst, V> out;
    for (int v = 0; v < V; ++v) store_float(out.v[v], acc[v]);
    *reinterpret_cast<Pack<Dst, V>*>(dst + i * V) = out;
  }
}

// Outputs along a row that a thread of depthwise_window_kernel computes.
constexpr int kWindowOutputs = 4;

// The gather of depthwise_gather_kernel for a K x K kernel at stride 1 and dilation 1 (every
// depthwise conv of ConvNeXt and MiT), with kWindowOutputs neighbouring outputs of a row a
// thread: each tap row's kWindowOutputs + K - 1 source columns are loaded once into registers,
// each weight once, where a thread per output loads K of each per output. The sums run in the
// same order (taps row by row, padding skipped), so the results are those of the gather kernel.
// The rows stay a loop: unrolled, a 7x7 kernel's code (208 KB under Bf16) outgrew the
// instruction cache, and ConvNeXt's ran 6-12x slower than its loads and FMAs allow.
template <typename Src, typename Dst, int K, int V, bool InputGrad, bool Bf16>
__global__ void depthwise_window_kernel(DepthwiseGeometry g, const Src* src,
                                        const float* weight_t, Dst* dst) {
  constexpr int R = kWindowOutputs, kWindow = R + K - 1;
  const int64_t src_h = InputGrad ? g.oh : g.h, src_w = InputGrad ? g.ow : g.w;
  const int64_t dst_h = InputGrad ? g.h : g.oh, dst_w = InputGrad ? g.w : g.ow;
  const int64_t runs = ceil_div(dst_w, R);
  const int64_t total = g.n * dst_h * runs * (g.c / V);
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const Nhwc d = nhwc_index(i, dst_h, runs, g.c / V);  // d.x: the run of R outputs
    const int64_t c = d.c * V, x0 = d.x * R;
    // Output x0 + r reads window column r + kx (forward) or r + K - 1 - kx (input gradient).
    const int64_t first_column = InputGrad ? x0 + g.padding - (K - 1) : x0 - g.padding;
    float acc[R][V] = {};
    SONO_NO_UNROLL
    for (int ky = 0; ky < K; ++ky) {
      const int64_t sy = InputGrad ? d.y + g.padding - ky : d.y - g.padding + ky;
      if (sy < 0 || sy >= src_h) continue;
      const Src* row = src + (d.n * src_h + sy) * src_w * g.c + c;
      float window[kWindow][V];
      bool inside[kWindow];
      SONO_UNROLL
      for (int j = 0; j < kWindow; ++j) {
        const int64_t sx = first_column + j;
        inside[j] = sx >= 0 && sx < src_w;
        const Pack<Src, V> s = inside[j] ? load_pack<V>(row + sx * g.c) : Pack<Src, V>{};
        for (int v = 0; v < V; ++v) window[j][v] = product_operand<Bf16>(s.v[v]);
      }
      SONO_UNROLL
      for (int kx = 0; kx < K; ++kx) {
        const Pack<float, V> w = load_pack<V>(weight_t + (ky * K + kx) * g.c + c);
        SONO_UNROLL
        for (int r = 0; r < R; ++r) {
          const int j = InputGrad ? r + K - 1 - kx : r + kx;
          if (!inside[j]) continue;
          for (int v = 0; v < V; ++v) acc[r][v] += window[j][v] * w.v[v];
        }
      }
    }
    SONO_UNROLL
    for (int r = 0; r < R && x0 + r < dst_w; ++r) {
      Pack<Dst, V> out;
      for (int v = 0; v < V; ++v) store_float(out.v[v], acc[r][v]);
      *reinterpret_cast<Pack<Dst, V>*>(dst + ((d.n * dst_h + d.y) * dst_w + x0 + r) * g.c + c) =
          out;
    }
  }
}

// weight_t[tap][c] = weight[c][tap], rounded to bfloat16 under Bf16 (once, not at every
// product).
template <bool Bf16>
__global__ void transpose_taps_kernel(int64_t channels, int64_t taps, const float* weight,
                                      float* weight_t) {
  for (int64_t i = global_thread(); i < channels * taps; i += grid_threads())
    weight_t[i] = product_operand<Bf16>(weight[i % channels * taps + i / channels]);
}

// Block (32 channels, kTileRows) at (channel tile, taps, chunk): sums grad_y * x over the
// chunk's output positions into partial[chunk][c][tap], for the K taps of row blockIdx.y of a
// K x K kernel, or for tap blockIdx.y where K = 0. A row, not all K x K taps: a 7x7 kernel's 49
// unrolled taps took 108 registers and 55 KB of code, and ran 2-4x slower than its loads and
// FMAs allow; the K row blocks of a chunk re-read its grad_y and x from L2. X: float, or
// bfloat16 (autocast's saved x).
template <typename X, int K, bool Bf16>
__global__ void depthwise_weight_partial_kernel(DepthwiseGeometry g, int64_t chunk_positions,
                                                const X* x, const float* grad_y, float* partial) {
  constexpr int kBlockTaps = K > 0 ? K : 1;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t taps = g.kh * g.kw, first_tap = blockIdx.y * kBlockTaps;
  const int64_t positions = g.n * g.oh * g.ow;
  const int64_t first = blockIdx.z * chunk_positions;
  const int64_t last = first + chunk_positions < positions ? first + chunk_positions : positions;
  float acc[kBlockTaps] = {};
  if (c < g.c) {
    for (int64_t p = first + threadIdx.y; p < last; p += kTileRows) {
      const Nhwc o = nhwc_index(p, g.oh, g.ow, 1);
      const float gy = product_operand<Bf16>(grad_y[p * g.c + c]);
      SONO_UNROLL
      for (int t = 0; t < kBlockTaps; ++t) {  // unrolled: acc stays in registers
        const int64_t tap = first_tap + t;  // K > 0: row blockIdx.y, column t
        const int64_t ky = K > 0 ? blockIdx.y : tap / g.kw, kx = K > 0 ? t : tap % g.kw;
        const int64_t iy = tap_source<false>(o.y, ky, g.h, g);
        const int64_t ix = tap_source<false>(o.x, kx, g.w, g);
        if (iy >= 0 && ix >= 0)
          acc[t] += gy * product_operand<Bf16>(x[((o.n * g.h + iy) * g.w + ix) * g.c + c]);
      }
    }
  }
  SONO_UNROLL
  for (int t = 0; t < kBlockTaps; ++t) {
    const float sum = sum_over_tile_rows(acc[t]);
    if (threadIdx.y == 0 && c < g.c) partial[(blockIdx.z * g.c + c) * taps + first_tap + t] = sum;
  }
}

// The first stage of depthwise_weight_partial_kernel for a K x K kernel at stride 1 and dilation
// 1, as depthwise_window_kernel is to the gather: a thread walks runs of kWindowOutputs
// neighbouring outputs of a row, loading their grad_y and the run's kWindowOutputs + K - 1
// columns of x once for the K taps of its block's row, where a thread per output loads K of x
// and works out their indices for each output.
template <typename X, int K, bool Bf16>
__global__ void depthwise_weight_window_kernel(DepthwiseGeometry g, int64_t chunk_runs, const X* x,
                                               const float* grad_y, float* partial) {
  constexpr int R = kWindowOutputs, kWindow = R + K - 1;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int ky = static_cast<int>(blockIdx.y);
  const int64_t row_runs = ceil_div(g.ow, R), runs = g.n * g.oh * row_runs;
  const int64_t first = blockIdx.z * chunk_runs;
  const int64_t last = first + chunk_runs < runs ? first + chunk_runs : runs;
  float acc[K] = {};
  if (c < g.c) {
    for (int64_t i = first + threadIdx.y; i < last; i += kTileRows) {
      const Nhwc o = nhwc_index(i, g.oh, row_runs, 1);  // o.x: the run
      const int64_t iy = o.y - g.padding + ky, x0 = o.x * R;
      if (iy < 0 || iy >= g.h) continue;
      const float* gy_row = grad_y + (o.n * g.oh + o.y) * g.ow * g.c + c;
      const X* x_row = x + (o.n * g.h + iy) * g.w * g.c + c;
      float gy[R];
      SONO_UNROLL
      for (int r = 0; r < R; ++r)
        gy[r] = x0 + r < g.ow ? product_operand<Bf16>(gy_row[(x0 + r) * g.c]) : 0.0f;
      SONO_UNROLL
      for (int j = 0; j < kWindow; ++j) {  // output x0 + r reads column j = r + kx
        const int64_t sx = x0 - g.padding + j;
        const float xj = sx >= 0 && sx < g.w ? product_operand<Bf16>(x_row[sx * g.c]) : 0.0f;
        SONO_UNROLL
        for (int kx = 0; kx < K; ++kx)
          if (j - kx >= 0 && j - kx < R) acc[kx] += gy[j - kx] * xj;
      }
    }
  }
  SONO_UNROLL
  for (int kx = 0; kx < K; ++kx) {
    const float sum = sum_over_tile_rows(acc[kx]);
    if (threadIdx.y == 0 && c < g.c) partial[(blockIdx.z * g.c + c) * K * K + ky * K + kx] = sum;
  }
}

// The side of a square kernel whose tap loops are unrolled (3 and 7: MiT's and ConvNeXt's),
// else 0.
inline int unrolled_taps(const DepthwiseGeometry& g) {
  return g.kh == g.kw && (g.kh == 3 || g.kh == 7) ? static_cast<int>(g.kh) : 0;
}

// Calls f(std::integral_constant<int, K>) with K = unrolled_taps(g).
template <typename F>
void dispatch_taps(const DepthwiseGeometry& g, F&& f) {
  const int k = unrolled_taps(g);
  if (k == 3) f(std::integral_constant<int, 3>{});
  else if (k == 7) f(std::integral_constant<int, 7>{});
  else f(std::integral_constant<int, 0>{});
}

// Floats of scratch the forward and input-gradient gathers need: the transposed weight.
inline int64_t depthwise_gather_workspace(const DepthwiseGeometry& g) {
  return g.c * g.kh * g.kw;
}

// Channels a gather thread takes: 4 where every access of 4 is aligned, else 1.
inline int depthwise_vector_width(const DepthwiseGeometry& g, const void* src, size_t src_size,
                                  const void* dst, size_t dst_size) {
  const auto aligned = [](const void* p, size_t bytes) {
    return reinterpret_cast<uintptr_t>(p) % bytes == 0;
  };
  return g.c % 4 == 0 && aligned(src, 4 * src_size) && aligned(dst, 4 * dst_size) ? 4 : 1;
}

// Whether the gathers of `g` run depthwise_window_kernel.
inline bool depthwise_window_applies(const DepthwiseGeometry& g) {
  return unrolled_taps(g) && g.stride == 1 && g.dilation == 1;
}

// A tap's 64-bit source index, bounds test and its loads (source and weight) cost more than its
// FMA: FP32-equivalent operations per tap a thread visits, fitted to the H200's ncu times of the
// scalar gather (a thread per output) for the 7x7 forward (175 us) and input gradient (464 us,
// its tap_source divides by the stride) at 16 x 56 x 56 x 128.
constexpr double kTapIndexFlops[2] = {36, 98};

// What a gather launch of `threads` threads declares: each output's taps as FMAs, plus the
// index work of the taps each thread visits (V channels at once; the window kernel loads a
// row's kWindowOutputs + K - 1 source columns and K weights once for kWindowOutputs outputs,
// at stride 1 without the input gradient's division). The taps' overlapping reads hit in cache.
inline LaunchCost depthwise_gather_cost(const DepthwiseGeometry& g, bool input_grad, bool window,
                                        int64_t threads, double src_size, double dst_size) {
  const double in = static_cast<double>(g.n * g.h * g.w * g.c);
  const double out = static_cast<double>(g.n * g.oh * g.ow * g.c);
  const int64_t taps = g.kh * g.kw;
  const double rows = input_grad ? in : out;  // the elements written
  LaunchCost cost = looped((input_grad ? out : in) * src_size + 4.0 * taps * g.c,
                           rows * dst_size, threads, taps, 2.0 * rows * taps);
  if (window) {
    const double loads_per_row = (kWindowOutputs + g.kw - 1 + g.kw) / 2.0;  // source + weight
    cost.flops += kTapIndexFlops[0] * threads * g.kh * loads_per_row;
    cost.per_item = g.kh;  // a row's loads go out together
  } else {
    cost.flops += kTapIndexFlops[input_grad] * threads * taps;
  }
  return cost;
}

// The gather kernel for `g`'s taps and vector width, with or without bf16 operands: the
// window kernel where it applies. workspace: depthwise_gather_workspace(g) floats.
template <typename Src, typename Dst, bool InputGrad>
void launch_depthwise_gather(const char* name, const DepthwiseGeometry& g, const Src* src,
                             const float* weight, Dst* dst, float* workspace, bool bf16,
                             cudaStream_t stream) {
  const int64_t taps = g.kh * g.kw;
  launch("depthwise_transpose_taps", bf16 ? transpose_taps_kernel<true> : transpose_taps_kernel<false>,
         elementwise_config(g.c * taps, 4, 4, stream), g.c, taps, weight, workspace);
  const int v = depthwise_vector_width(g, src, sizeof(Src), dst, sizeof(Dst));
  const bool window = depthwise_window_applies(g);
  const int64_t rows = InputGrad ? g.n * g.h : g.n * g.oh, row = InputGrad ? g.w : g.ow;
  const int64_t threads = rows * (window ? ceil_div(row, kWindowOutputs) : row) * g.c / v;
  LaunchConfig cfg = elementwise_config(threads, 0, 0, stream);
  cfg.cost = depthwise_gather_cost(g, InputGrad, window, threads, sizeof(Src), sizeof(Dst));
  dispatch_taps(g, [&](auto k) {
    constexpr int K = decltype(k)::value;
    const auto run = [&](auto width, auto with_bf16) {
      constexpr int V = decltype(width)::value;
      constexpr bool B = decltype(with_bf16)::value;
      if constexpr (K > 0) {
        if (window)
          return launch(name, depthwise_window_kernel<Src, Dst, K, V, InputGrad, B>, cfg, g,
                        src, workspace, dst);
      }
      launch(name, depthwise_gather_kernel<Src, Dst, K, V, InputGrad, B>, cfg, g, src,
             workspace, dst);
    };
    using Four = std::integral_constant<int, 4>;
    using One = std::integral_constant<int, 1>;
    if (v == 4 && bf16) run(Four{}, std::true_type{});
    else if (v == 4) run(Four{}, std::false_type{});
    else if (bf16) run(One{}, std::true_type{});
    else run(One{}, std::false_type{});
  });
}

// bf16: operands rounded to bfloat16 (mixed precision). X, Y: float or bfloat16.
template <typename X, typename Y>
void depthwise_forward(const DepthwiseGeometry& g, const X* x, const float* weight, Y* y,
                       float* workspace, cudaStream_t stream, bool bf16 = false) {
  launch_depthwise_gather<X, Y, false>("depthwise_conv_forward", g, x, weight, y, workspace, bf16,
                                       stream);
}

inline void depthwise_backward_input(const DepthwiseGeometry& g, const float* grad_y,
                                     const float* weight, float* grad_x, float* workspace,
                                     cudaStream_t stream, bool bf16 = false) {
  launch_depthwise_gather<float, float, true>("depthwise_conv_backward_input", g, grad_y, weight,
                                              grad_x, workspace, bf16, stream);
}

// Taps one block of the weight gradient's first stage sums: a row of an unrolled kernel's.
inline int64_t depthwise_weight_block_taps(const DepthwiseGeometry& g) {
  return unrolled_taps(g) ? g.kw : 1;
}

// Chunks of output positions for the weight gradient's first stage: enough to fill the GPU,
// and few enough positions a thread that its serial loop stays short. The chunks are sized as
// if a position's work were all its taps (as when a block summed them all): a row block's
// thread then walks a seventh of that.
inline int64_t depthwise_weight_chunks(const DepthwiseGeometry& g) {
  const int64_t taps = g.kh * g.kw;
  const int64_t blocks = ceil_div(g.c, kWarp) * (taps / depthwise_weight_block_taps(g));
  return fill_chunks(g.n * g.oh * g.ow * taps, blocks, kTileRows, kTileRows * kMinLaneSteps * taps);
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
  const bool window = depthwise_window_applies(g);
  // A chunk's share of what a thread walks: output positions, or runs of them (window).
  const int64_t walked = window ? g.n * g.oh * ceil_div(g.ow, kWindowOutputs) : g.n * g.oh * g.ow;
  const int64_t chunk_items = ceil_div(walked, chunks);
  dispatch_taps(g, [&](auto k) {
    constexpr int K = decltype(k)::value;
    const int64_t passes = taps / depthwise_weight_block_taps(g);  // blocks along y
    LaunchConfig cfg{dim3(static_cast<unsigned>(ceil_div(g.c, kWarp)),
                          static_cast<unsigned>(passes), static_cast<unsigned>(chunks)),
                     dim3(kWarp, kTileRows), 0, stream};
    // The row blocks of an unrolled kernel read a chunk's grad_y and x from memory once (their
    // re-reads, and the taps' overlapping reads of x, hit in cache); a block per tap reads them
    // afresh. Each item a thread visits costs a tap's index work for each of its loads, as in
    // the gathers: a tap's (one of x) per position, or a run's grad_y and window of x.
    const double elements = static_cast<double>(g.n * g.oh * g.ow * g.c);
    const double reads = K > 0 ? 1 : static_cast<double>(passes);
    const int64_t threads = ceil_div(g.c, kWarp) * kWarp * kTileRows * passes * chunks;
    const double index_loads = window ? static_cast<double>(walked) * g.c * passes *
                                            (2 * kWindowOutputs + g.kw - 1)
                                      : elements * taps;
    cfg.cost = looped(reads * elements * (sizeof(X) + 4), chunks * g.c * taps * 4.0, threads,
                      ceil_div(chunk_items, kTileRows),
                      2 * elements * taps + kTapIndexFlops[0] * index_loads);
    const auto run = [&](auto kernel) {
      launch("depthwise_conv_weight_partial", kernel, cfg, g, chunk_items, x, grad_y, workspace);
    };
    if constexpr (K > 0) {
      if (window) {
        if (bf16) run(depthwise_weight_window_kernel<X, K, true>);
        else run(depthwise_weight_window_kernel<X, K, false>);
        return;
      }
    }
    if (bf16) run(depthwise_weight_partial_kernel<X, K, true>);
    else run(depthwise_weight_partial_kernel<X, K, false>);
  });
  column_sums(workspace, chunks, g.c * taps, grad_weight, stream);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
