#pragma once
// Dense and grouped 2-D convolution (every conv that is not depthwise). The backend runs
// one-group convs through the im2col matrix and its library GEMM (im2col/col2im, at the end),
// grouped ones as the implicit GEMM that follows: NHWC activations, weight
// [Cout, Cin/groups, KH, KW] (PyTorch's layout), any stride, padding, dilation and groups. Each direction is one GEMM per group whose operands are read straight
// from the tensors as a tile is loaded (no im2col buffer); k runs over the taps (ky, kx) and,
// innermost, the group's channels, so NHWC rows are read contiguously:
// - forward:      y[p, o]      = sum over k = (tap, ci) of cols(x)[p, k] * w[o, ci, tap]
// - input grad:   grad_x[q, c] = sum over k = (tap, o) of grad_y[source(q, tap), o] * w[o, c, tap]
//                 (a gather over the output pixels that read input pixel q: no atomics), one
//                 GEMM per stride phase, so that k runs only over the taps that reach q
// - weight grad:  grad_w[o, k] = sum over p of grad_y[p, o] * cols(x)[p, k]
// Where the output tiles alone cannot fill the GPU (a weight gradient over many pixels, a
// spatial-reduction conv's few output pixels over a long k), the sum is split into chunks over
// grid.z (split-K): each chunk writes float32 partial sums to scratch, and column_sums adds the
// chunks in a fixed order (deterministic, no atomics), storing float32 or, for a bf16 y, the
// float32 total rounded once.
// p runs over output pixels, q over input pixels, cols(x)[p, (tap, ci)] is the input value that
// tap reads for output pixel p (zero in the padding). Accumulation is in float32; the bf16
// flavours (mixed precision) round both operands to bfloat16 as tiles are loaded, and multiply
// them on the tensor cores (WMMA) or, as a fallback, on the SIMT cores.
#include <algorithm>

#include "cuda/kernels/bf16.cuh"
#include "cuda/kernels/depthwise_conv.cuh"
#include "cuda/kernels/reduce.cuh"
#include "cuda/kernels/wmma.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

struct ConvGeometry {
  int64_t n, h, w, cin, cout;  // input [n, h, w, cin], output [n, oh, ow, cout]
  int64_t kh, kw, oh, ow;
  int64_t stride, padding, dilation, groups;

  __host__ __device__ int64_t cin_g() const { return cin / groups; }
  __host__ __device__ int64_t cout_g() const { return cout / groups; }
  __host__ __device__ int64_t taps() const { return kh * kw; }
};

// One GEMM per group (and per chunk of the depth, for the weight gradient):
// out[row, col] = sum over depth of a(row, d) * b(d, col), rows x cols x depth per group.
struct GemmShape {
  int64_t rows, cols, depth, groups, chunks;
  __host__ __device__ int64_t chunk_depth() const { return ceil_div(depth, chunks); }
};

// How a conv multiplies: float32 operands on the SIMT cores; bf16-rounded operands (mixed
// precision) on the SIMT cores, the fallback where bf16 WMMA does not exist; or bf16 operands on
// the tensor cores through WMMA, what autocast runs. All three accumulate in float32.
enum class ConvMath { float32, bf16_simt, bf16_wmma };

// Block tile kConvTile x kConvTile of the output, kConvTileK deep per shared-memory step;
// (kConvThreads, kConvThreads) threads, each accumulating kConvPerThread^2 outputs spaced
// kConvThreads apart (neighbouring threads store neighbouring columns).
constexpr int kConvTile = 64;
constexpr int kConvTileK = 16;
constexpr int kConvThreads = 16;
constexpr int kConvBlockThreads = kConvThreads * kConvThreads;
constexpr int kConvPerThread = kConvTile / kConvThreads;

// The part of a GEMM that block (blockIdx) computes: a tile of rows and columns of one group,
// over the depth range of one chunk.
struct ConvBlockTile {
  int64_t row0, col0, group, chunk, depth0, depth1;
};
template <typename Gemm>
__device__ __forceinline__ ConvBlockTile conv_block_tile(const Gemm& gemm) {
  const GemmShape& s = gemm.shape;
  const int64_t group = blockIdx.z % s.groups, chunk = blockIdx.z / s.groups;
  int64_t depth = s.depth;  // a GEMM whose groups differ in depth says each one's
  if constexpr (requires { gemm.group_depth(group); }) depth = gemm.group_depth(group);
  const int64_t depth0 = chunk * s.chunk_depth();
  const int64_t depth1 = depth0 + s.chunk_depth() < depth ? depth0 + s.chunk_depth() : depth;
  return {static_cast<int64_t>(blockIdx.x) * kConvTile, static_cast<int64_t>(blockIdx.y) * kConvTile,
          group, chunk, depth0, depth1};
}
// The operands at (row, d) and (d, col) of the tile, zero past its edges.
template <typename Gemm>
__device__ __forceinline__ float tile_a(const Gemm& gemm, const ConvBlockTile& t, int64_t row,
                                        int64_t d) {
  return row < gemm.shape.rows && d < t.depth1 ? gemm.a(t.group, row, d) : 0.0f;
}
template <typename Gemm>
__device__ __forceinline__ float tile_b(const Gemm& gemm, const ConvBlockTile& t, int64_t d,
                                        int64_t col) {
  return d < t.depth1 && col < gemm.shape.cols ? gemm.b(t.group, d, col) : 0.0f;
}

// The SIMT tiles: a kernel of its own, and the WMMA kernel's body where WMMA is missing.
template <typename Gemm, bool Bf16>
__device__ __forceinline__ void implicit_gemm_simt_tiles(const Gemm& gemm) {
  __shared__ float a_tile[kConvTileK][kConvTile];  // [depth][row]
  __shared__ float b_tile[kConvTileK][kConvTile];  // [depth][col]
  const GemmShape& s = gemm.shape;
  const ConvBlockTile t = conv_block_tile(gemm);
  const int tx = threadIdx.x, ty = threadIdx.y, thread = ty * kConvThreads + tx;
  float acc[kConvPerThread][kConvPerThread] = {};
  for (int64_t d0 = t.depth0; d0 < t.depth1; d0 += kConvTileK) {
    // a is loaded depth-fastest and b column-fastest: consecutive threads read consecutive
    // channels of an NHWC row wherever that operand is an activation.
    for (int i = thread; i < kConvTile * kConvTileK; i += kConvBlockThreads) {
      const int a_row = i / kConvTileK, a_d = i % kConvTileK;
      const float a = tile_a(gemm, t, t.row0 + a_row, d0 + a_d);
      a_tile[a_d][a_row] = Bf16 ? bf16_round(a) : a;
      const int b_d = i / kConvTile, b_col = i % kConvTile;
      const float b = tile_b(gemm, t, d0 + b_d, t.col0 + b_col);
      b_tile[b_d][b_col] = Bf16 ? bf16_round(b) : b;
    }
    __syncthreads();
    for (int d = 0; d < kConvTileK; ++d)
      for (int i = 0; i < kConvPerThread; ++i)
        for (int j = 0; j < kConvPerThread; ++j)
          acc[i][j] += a_tile[d][ty + i * kConvThreads] * b_tile[d][tx + j * kConvThreads];
    __syncthreads();  // the tiles are overwritten next step
  }
  for (int i = 0; i < kConvPerThread; ++i)
    for (int j = 0; j < kConvPerThread; ++j) {
      const int64_t row = t.row0 + ty + i * kConvThreads, col = t.col0 + tx + j * kConvThreads;
      if (row < s.rows && col < s.cols) gemm.store(t.group, t.chunk, row, col, acc[i][j]);
    }
}

template <typename Gemm, bool Bf16>
__global__ void implicit_gemm_kernel(Gemm gemm) {
  implicit_gemm_simt_tiles<Gemm, Bf16>(gemm);
}

// The tensor-core tiles: the same block tile and threads, kConvWmmaK deep per step. The 8 warps
// each own a 16 x 32 strip of the 64 x 64 output (two 16x16 accumulators side by side); a and b
// are rounded to bfloat16 as they are staged, and the accumulators go through shared memory so
// that gemm.store sees the same (row, col) as in the SIMT kernel.
constexpr int kConvWmmaK = 32;
constexpr int kConvWarpCols = 2;  // accumulators a warp holds, side by side
static_assert(kConvBlockThreads / kWarp * kWmmaTile * kWmmaTile * kConvWarpCols ==
                  kConvTile * kConvTile,
              "the warps' strips cover the block tile");

template <typename Gemm>
__global__ void implicit_gemm_wmma_kernel(Gemm gemm) {
#if SONO_WMMA_BF16
  __shared__ __align__(32) bfloat16 a_tile[kConvTile][kConvWmmaK];  // [row][depth]
  __shared__ __align__(32) bfloat16 b_tile[kConvWmmaK][kConvTile];  // [depth][col]
  __shared__ __align__(32) float c_tile[kConvTile][kConvTile];
  const GemmShape& s = gemm.shape;
  const ConvBlockTile t = conv_block_tile(gemm);
  const int thread = threadIdx.y * kConvThreads + threadIdx.x, warp = thread / kWarp;
  const int warp_row = warp / 2 * kWmmaTile, warp_col = warp % 2 * kConvWarpCols * kWmmaTile;
  wmma::fragment<wmma::accumulator, kWmmaTile, kWmmaTile, kWmmaTile, float> acc[kConvWarpCols];
  for (auto& f : acc) wmma::fill_fragment(f, 0.0f);
  for (int64_t d0 = t.depth0; d0 < t.depth1; d0 += kConvWmmaK) {
    for (int i = thread; i < kConvTile * kConvWmmaK; i += kConvBlockThreads) {
      const int a_row = i / kConvWmmaK, a_d = i % kConvWmmaK;
      a_tile[a_row][a_d] = bf16_from_float(tile_a(gemm, t, t.row0 + a_row, d0 + a_d));
      const int b_d = i / kConvTile, b_col = i % kConvTile;
      b_tile[b_d][b_col] = bf16_from_float(tile_b(gemm, t, d0 + b_d, t.col0 + b_col));
    }
    __syncthreads();
    for (int k = 0; k < kConvWmmaK; k += kWmmaTile) {
      wmma::fragment<wmma::matrix_a, kWmmaTile, kWmmaTile, kWmmaTile, WmmaBf16, wmma::row_major> a;
      wmma::load_matrix_sync(a, as_wmma(&a_tile[warp_row][k]), kConvWmmaK);
      for (int j = 0; j < kConvWarpCols; ++j) {
        wmma::fragment<wmma::matrix_b, kWmmaTile, kWmmaTile, kWmmaTile, WmmaBf16, wmma::row_major> b;
        wmma::load_matrix_sync(b, as_wmma(&b_tile[k][warp_col + j * kWmmaTile]), kConvTile);
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
    }
    __syncthreads();  // the tiles are overwritten next step
  }
  for (int j = 0; j < kConvWarpCols; ++j)
    wmma::store_matrix_sync(&c_tile[warp_row][warp_col + j * kWmmaTile], acc[j], kConvTile,
                            wmma::mem_row_major);
  __syncthreads();
  for (int i = thread; i < kConvTile * kConvTile; i += kConvBlockThreads) {
    const int64_t row = t.row0 + i / kConvTile, col = t.col0 + i % kConvTile;
    if (row < s.rows && col < s.cols) gemm.store(t.group, t.chunk, row, col, c_tile[i / kConvTile][i % kConvTile]);
  }
#else
  implicit_gemm_simt_tiles<Gemm, true>(gemm);
#endif
}

// cols(x)[p, k]: the input that tap (k's tap, channel) of the group reads for output pixel p,
// zero in the padding.
template <typename Src>
__device__ __forceinline__ float tap_value(const ConvGeometry& g, const Src* x, int64_t group,
                                           int64_t p, int64_t k) {
  const int64_t group_c = g.cin_g(), tap = k / group_c, c = k % group_c;
  const Nhwc d = nhwc_index(p, g.oh, g.ow, 1);
  const int64_t sy = tap_source<false>(d.y, tap / g.kw, g.h, g);
  const int64_t sx = tap_source<false>(d.x, tap % g.kw, g.w, g);
  if (sy < 0 || sx < 0) return 0.0f;
  return load_float(x[((d.n * g.h + sy) * g.w + sx) * g.cin + group * group_c + c]);
}

// Index of w[o, ci, tap] with o and ci counted within the group.
__host__ __device__ __forceinline__ int64_t weight_index(const ConvGeometry& g, int64_t group,
                                                         int64_t o, int64_t ci, int64_t tap) {
  return ((group * g.cout_g() + o) * g.cin_g() + ci) * g.taps() + tap;
}

// y[p, o] = sum over k = (tap, ci) of cols(x)[p, k] * w[o, ci, tap]. X and Y: float, or bfloat16
// for autocast's x and y. With several chunks, chunk c writes its partial y to partial[c][...]
// in y's layout instead.
template <typename X = float, typename Y = float>
struct ConvForwardGemm {
  GemmShape shape;
  ConvGeometry g;
  const X* x;
  const float* w;
  Y* dst;
  float* partial;  // shape.chunks x y's size floats, when shape.chunks > 1
  __device__ float a(int64_t group, int64_t p, int64_t k) const {
    return tap_value(g, x, group, p, k);
  }
  __device__ float b(int64_t group, int64_t k, int64_t o) const {
    return w[weight_index(g, group, o, k % g.cin_g(), k / g.cin_g())];
  }
  __device__ void store(int64_t group, int64_t chunk, int64_t p, int64_t o, float v) const {
    const int64_t i = p * g.cout + group * g.cout_g() + o;
    if (shape.chunks > 1) partial[chunk * shape.rows * g.cout + i] = v;
    else store_float(dst[i], v);
  }
};

// Stride phases of an input gradient. Input row qy gathers from output row oy through tap ky
// where qy + padding - ky * dilation = oy * stride; with dilation 1 only the taps
// ky = (qy + padding) mod stride + j * stride can, so the input pixels split into stride^2
// phases (qy mod stride, qx mod stride), each with its own taps: a gather by phase skips the
// (stride^2 - 1) / stride^2 of (tap, pixel) pairs that meet between the strides (63/64 for
// MiT-B2's 8x8 stride-8 spatial reduction). A dilated strided conv keeps one phase and checks
// every tap.
struct StridePhases {
  __host__ __device__ static int64_t stride(const ConvGeometry& g) {
    return g.dilation == 1 ? g.stride : 1;
  }
  __host__ __device__ static int64_t count(const ConvGeometry& g) { return stride(g) * stride(g); }
  // Taps of a kernel side of k taps in phase `phase` of that side: the first, and how many
  // (every stride-th).
  __host__ __device__ static int64_t first_tap(const ConvGeometry& g, int64_t phase) {
    return (phase + g.padding) % stride(g);
  }
  __host__ __device__ static int64_t taps(const ConvGeometry& g, int64_t k, int64_t phase) {
    const int64_t first = first_tap(g, phase);
    return first < k ? ceil_div(k - first, stride(g)) : 0;
  }
};

// The input gradient, one GEMM per stride phase. The GEMM's group index is
// phase * groups + conv group; its rows are a phase's pixels, ceil(h / phase stride) x
// ceil(w / phase stride) an image (the last may fall outside the input: zero, never stored);
// its depth is (phase's tap, o), group_depth(group) deep.
struct ConvInputGradGemm {
  GemmShape shape;
  ConvGeometry g;
  const float* grad_y;
  const float* w;
  float* dst;      // grad_x
  float* partial;  // shape.chunks x grad_x's size floats, when shape.chunks > 1

  struct Pixel {
    int64_t n, y, x;  // y, x past the input's edge for a phase's last rows and columns
    int64_t py, px;   // its phase
  };
  __device__ Pixel pixel(int64_t group, int64_t row) const {
    const int64_t s = StridePhases::stride(g), phase = group / g.groups;
    const Nhwc r = nhwc_index(row, ceil_div(g.h, s), ceil_div(g.w, s), 1);
    const int64_t py = phase / s, px = phase % s;
    return {r.n, py + r.y * s, px + r.x * s, py, px};
  }
  __device__ int64_t group_depth(int64_t group) const {
    const int64_t s = StridePhases::stride(g), phase = group / g.groups;
    return StridePhases::taps(g, g.kh, phase / s) * StridePhases::taps(g, g.kw, phase % s) *
           g.cout_g();
  }
  struct Tap {
    int64_t ky, kx, o;
  };
  __device__ Tap tap(const Pixel& q, int64_t k) const {
    const int64_t s = StridePhases::stride(g), o = k % g.cout_g(), j = k / g.cout_g();
    const int64_t across = StridePhases::taps(g, g.kw, q.px);
    return {StridePhases::first_tap(g, q.py) + j / across * s,
            StridePhases::first_tap(g, q.px) + j % across * s, o};
  }
  __device__ float a(int64_t group, int64_t row, int64_t k) const {
    const Pixel q = pixel(group, row);
    if (q.y >= g.h || q.x >= g.w) return 0.0f;
    const Tap t = tap(q, k);
    const int64_t oy = tap_source<true>(q.y, t.ky, g.oh, g);
    const int64_t ox = tap_source<true>(q.x, t.kx, g.ow, g);
    if (oy < 0 || ox < 0) return 0.0f;
    return grad_y[((q.n * g.oh + oy) * g.ow + ox) * g.cout + group % g.groups * g.cout_g() + t.o];
  }
  __device__ float b(int64_t group, int64_t k, int64_t c) const {
    const int64_t phase = group / g.groups, s = StridePhases::stride(g);
    const Tap t = tap({0, 0, 0, phase / s, phase % s}, k);
    return w[weight_index(g, group % g.groups, t.o, c, t.ky * g.kw + t.kx)];
  }
  __device__ void store(int64_t group, int64_t chunk, int64_t row, int64_t c, float v) const {
    const Pixel q = pixel(group, row);
    if (q.y >= g.h || q.x >= g.w) return;
    const int64_t i = ((q.n * g.h + q.y) * g.w + q.x) * g.cin + group % g.groups * g.cin_g() + c;
    if (shape.chunks > 1) partial[chunk * g.n * g.h * g.w * g.cin + i] = v;
    else dst[i] = v;
  }
};

// Writes chunk `chunk`'s partial weight gradient to partial[chunk][...] in w's layout. X: float,
// or bfloat16 for autocast's saved x.
template <typename X>
struct ConvWeightGradGemm {
  GemmShape shape;
  ConvGeometry g;
  const X* x;
  const float* grad_y;
  float* partial;
  __device__ float a(int64_t group, int64_t o, int64_t p) const {
    return grad_y[p * g.cout + group * g.cout_g() + o];
  }
  __device__ float b(int64_t group, int64_t p, int64_t k) const {
    return tap_value(g, x, group, p, k);
  }
  __device__ void store(int64_t group, int64_t chunk, int64_t o, int64_t k, float v) const {
    const int64_t weights = g.cout * g.cin_g() * g.taps();
    partial[chunk * weights + weight_index(g, group, o, k % g.cin_g(), k / g.cin_g())] = v;
  }
};

// Operand elements are gathered through 64-bit index arithmetic (tap_value's divisions), which
// outweighs the FMAs: counted as kGatherFlops FP32-equivalent operations per element loaded
// (calibrated on the H200's ncu times, tools/audit). Each block loads its row and column tiles
// over the whole depth; a thread loads kConvTile * kConvTileK / threads elements of each per step.
constexpr double kGatherFlops = 500;
// `s` as the blocks run it: for a GEMM whose groups differ in depth, their mean depth.
inline LaunchCost implicit_gemm_cost(const GemmShape& s, int64_t blocks) {
  const double loads = 2.0 * blocks * kConvTile * s.chunk_depth();
  const double flops = 2.0 * s.rows * s.cols * s.depth * s.groups;
  return looped(4.0 * loads, 4.0 * s.rows * s.cols * s.groups * s.chunks,
                blocks * kConvThreads * kConvThreads, ceil_div(s.chunk_depth(), kConvTileK),
                flops + kGatherFlops * loads);
}

// cost_shape: gemm.shape with the groups' mean depth where they differ.
template <typename Gemm>
void launch_implicit_gemm(const char* name, const Gemm& gemm, ConvMath math, cudaStream_t stream,
                          const GemmShape& cost_shape) {
  const GemmShape& s = gemm.shape;
  const dim3 grid(static_cast<unsigned>(ceil_div(s.rows, kConvTile)),
                  static_cast<unsigned>(ceil_div(s.cols, kConvTile)),
                  static_cast<unsigned>(s.groups * s.chunks));
  LaunchConfig cfg{grid, dim3(kConvThreads, kConvThreads), 0, stream,
                   implicit_gemm_cost(cost_shape, grid.x * grid.y * grid.z)};
  cfg.cost.tensor_cores = math == ConvMath::bf16_wmma;
  switch (math) {
    case ConvMath::float32: return launch(name, implicit_gemm_kernel<Gemm, false>, cfg, gemm);
    case ConvMath::bf16_simt: return launch(name, implicit_gemm_kernel<Gemm, true>, cfg, gemm);
    case ConvMath::bf16_wmma: return launch(name, implicit_gemm_wmma_kernel<Gemm>, cfg, gemm);
  }
}

// Chunks of the depth: as many as it takes with the output tiles to fill the GPU (fill_chunks),
// none under kConvMinChunk deep, so that the partials stay small next to the operands the
// chunks gather (a quarter at most). A thread steps through its chunk kConvTileK at a time.
constexpr int64_t kConvMinChunk = 128;
inline int64_t conv_depth_chunks(int64_t rows, int64_t cols, int64_t depth, int64_t groups) {
  const int64_t tiles = groups * ceil_div(rows, kConvTile) * ceil_div(cols, kConvTile);
  return fill_chunks(depth, tiles, kConvTileK, kConvMinChunk);
}
inline GemmShape split_gemm(int64_t rows, int64_t cols, int64_t depth, int64_t groups) {
  return {rows, cols, depth, groups, conv_depth_chunks(rows, cols, depth, groups)};
}
inline GemmShape forward_gemm(const ConvGeometry& g) {
  return split_gemm(g.n * g.oh * g.ow, g.cout_g(), g.taps() * g.cin_g(), g.groups);
}
// Split by the deepest phase; the blocks of the others stop at their own depth.
inline GemmShape backward_input_gemm(const ConvGeometry& g) {
  const int64_t s = StridePhases::stride(g);
  return split_gemm(g.n * ceil_div(g.h, s) * ceil_div(g.w, s), g.cin_g(),
                    ceil_div(g.kh, s) * ceil_div(g.kw, s) * g.cout_g(),
                    g.groups * StridePhases::count(g));
}
// The phases' mean depth in place of the deepest: each kernel tap belongs to one phase.
inline GemmShape backward_input_cost_shape(const ConvGeometry& g) {
  GemmShape s = backward_input_gemm(g);
  s.depth = ceil_div(g.taps() * g.cout_g(), StridePhases::count(g));
  return s;
}
inline GemmShape backward_weight_gemm(const ConvGeometry& g) {
  return split_gemm(g.cout_g(), g.taps() * g.cin_g(), g.n * g.oh * g.ow, g.groups);
}
// Floats of scratch a gather GEMM of `shape` into `dst_size` outputs needs: none unsplit.
inline int64_t gather_workspace(const GemmShape& shape, int64_t dst_size) {
  return shape.chunks > 1 ? shape.chunks * dst_size : 0;
}
inline int64_t conv_forward_workspace(const ConvGeometry& g) {
  return gather_workspace(forward_gemm(g), g.n * g.oh * g.ow * g.cout);
}
inline int64_t conv_backward_input_workspace(const ConvGeometry& g) {
  return gather_workspace(backward_input_gemm(g), g.n * g.h * g.w * g.cin);
}
inline int64_t conv_backward_weight_workspace(const ConvGeometry& g) {
  return backward_weight_gemm(g).chunks * g.cout * g.cin_g() * g.taps();
}

// The gather GEMMs (forward, input gradient) into gemm.dst of dst_size elements, through the
// partials in gemm.partial when split.
template <typename Gemm>
void launch_gather_gemm(const char* name, const Gemm& gemm, int64_t dst_size, ConvMath math,
                        cudaStream_t stream, const GemmShape& cost_shape) {
  launch_implicit_gemm(name, gemm, math, stream, cost_shape);
  if (gemm.shape.chunks > 1)
    column_sums(gemm.partial, gemm.shape.chunks, dst_size, gemm.dst, stream);
}

// x and y (X, Y = float or bfloat16) are the activations; a bfloat16 y is rounded once, from the
// float32 sum. workspace: conv_forward_workspace(g) floats (may be null when that is 0).
template <typename X, typename Y>
void conv_forward(const ConvGeometry& g, const X* x, const float* w, Y* y, float* workspace,
                  cudaStream_t stream, ConvMath math = ConvMath::float32) {
  const GemmShape shape = forward_gemm(g);
  launch_gather_gemm("conv_forward", ConvForwardGemm<X, Y>{shape, g, x, w, y, workspace},
                     g.n * g.oh * g.ow * g.cout, math, stream, shape);
}

// workspace: conv_backward_input_workspace(g) floats (may be null when that is 0).
inline void conv_backward_input(const ConvGeometry& g, const float* grad_y, const float* w,
                                float* grad_x, float* workspace, cudaStream_t stream,
                                ConvMath math = ConvMath::float32) {
  launch_gather_gemm("conv_backward_input",
                     ConvInputGradGemm{backward_input_gemm(g), g, grad_y, w, grad_x, workspace},
                     g.n * g.h * g.w * g.cin, math, stream, backward_input_cost_shape(g));
}

// The sum over every output pixel, always through the chunks' partials in workspace
// (conv_backward_weight_workspace(g) floats), since grad_w is stored in its own layout.
template <typename X>
void conv_backward_weight(const ConvGeometry& g, const X* x, const float* grad_y, float* grad_w,
                          float* workspace, cudaStream_t stream,
                          ConvMath math = ConvMath::float32) {
  const GemmShape shape = backward_weight_gemm(g);
  launch_implicit_gemm("conv_backward_weight",
                       ConvWeightGradGemm<X>{shape, g, x, grad_y, workspace}, math, stream, shape);
  column_sums(workspace, shape.chunks, g.cout * g.cin_g() * g.taps(), grad_w, stream);
}

// A one-group conv as library GEMMs over the im2col matrix cols(x) [pixels, Cin * taps], with
// depth k = (ci, tap) so that w [Cout, Cin, KH, KW] is its [Cout, Cin * taps] operand as
// stored: y = cols(x) w^T, grad_w = grad_y^T cols(x), grad_x = col2im(grad_y w), where col2im
// sums each input pixel's entries of the [pixels, Cin * taps] product by stride phase. Each
// element moved is one gather of tap_value's kind, costed at kGatherFlops as in the implicit
// GEMM, but once, where the implicit GEMM gathers it again for every tile that reads it.
template <typename X, typename C>
__global__ void im2col_kernel(ConvGeometry g, const X* x, C* cols) {
  const int64_t depth = g.cin * g.taps(), n = g.n * g.oh * g.ow * depth;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const QuotientRemainder pixel = divide(i, depth), k = divide(pixel.remainder, g.taps());
    store_float(cols[i], tap_value(g, x, 0, pixel.quotient, k.remainder * g.cin + k.quotient));
  }
}
// cols: bfloat16 for a bf16 pass (x rounded once), else float32.
template <typename X, typename C>
void im2col(const ConvGeometry& g, const X* x, C* cols, cudaStream_t stream) {
  constexpr int threads = 256;
  const int64_t n = g.n * g.oh * g.ow * g.cin * g.taps();
  LaunchCost cost = per_element(n, 0, sizeof(C), kGatherFlops);
  cost.bytes_read = static_cast<double>(g.n * g.h * g.w * g.cin) * sizeof(X);
  launch("im2col", im2col_kernel<X, C>,
         {dim3(grid_blocks(n, threads)), dim3(threads), 0, stream, cost},
         g, x, cols);
}

template <typename T>
__global__ void col2im_kernel(ConvGeometry g, const T* grad_cols, T* grad_x) {
  const int64_t depth = g.cin * g.taps(), n = g.n * g.h * g.w * g.cin, s = StridePhases::stride(g);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const Nhwc q = nhwc_index(i, g.h, g.w, g.cin);
    const T* cols = grad_cols + q.c * g.taps();
    T acc = 0;
    for (int64_t ky = StridePhases::first_tap(g, q.y % s); ky < g.kh; ky += s) {
      const int64_t oy = tap_source<true>(q.y, ky, g.oh, g);
      if (oy < 0) continue;
      for (int64_t kx = StridePhases::first_tap(g, q.x % s); kx < g.kw; kx += s) {
        const int64_t ox = tap_source<true>(q.x, kx, g.ow, g);
        if (ox >= 0) acc += cols[((q.n * g.oh + oy) * g.ow + ox) * depth + ky * g.kw + kx];
      }
    }
    grad_x[i] = acc;
  }
}
// grad_x [n, h, w, Cin] from grad_cols = grad_y w [pixels, Cin * taps], in a fixed order.
inline void col2im(const ConvGeometry& g, const float* grad_cols, float* grad_x,
                   cudaStream_t stream) {
  constexpr int threads = 256;
  const int64_t n = g.n * g.h * g.w * g.cin, s = StridePhases::stride(g);
  const double cols = static_cast<double>(g.n * g.oh * g.ow * g.cin * g.taps());
  const LaunchCost cost = looped(4.0 * cols, 4.0 * n, n, ceil_div(g.kh, s) * ceil_div(g.kw, s),
                                 kGatherFlops * cols);
  launch("col2im", col2im_kernel<float>,
         {dim3(grid_blocks(n, threads)), dim3(threads), 0, stream, cost},
         g, grad_cols, grad_x);
}

// cuDNN's operands (cuda/cudnn/conv.h). Its NHWC filter layout [Cout, taps, Cin/groups] from
// ours [Cout, Cin/groups, taps] and back: element i of the NHWC layout is ours at
// nhwc_to_ours(i). to_cudnn converts float32 to To (bf16 operands), or with `round` keeps
// float32 rounded to bfloat16 (the bf16_exact operands).
__host__ __device__ __forceinline__ int64_t nhwc_filter_to_ours(const ConvGeometry& g, int64_t i) {
  const int64_t per_o = g.taps() * g.cin_g(), o = i / per_o, tap = i % per_o / g.cin_g();
  return (o * g.cin_g() + i % g.cin_g()) * g.taps() + tap;
}
template <typename To>
__global__ void filter_to_cudnn_kernel(ConvGeometry g, const float* w, To* out, bool round) {
  const int64_t n = g.cout * g.cin_g() * g.taps();
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const float v = w[nhwc_filter_to_ours(g, i)];
    store_float(out[i], round ? bf16_round(v) : v);
  }
}
template <typename T>
__global__ void filter_from_cudnn_kernel(ConvGeometry g, const T* nhwc, T* w) {
  const int64_t n = g.cout * g.cin_g() * g.taps();
  for (int64_t i = global_thread(); i < n; i += grid_threads()) w[nhwc_filter_to_ours(g, i)] = nhwc[i];
}
template <typename To>
void filter_to_cudnn(const ConvGeometry& g, const float* w, To* out, bool round,
                     cudaStream_t stream) {
  constexpr int threads = 256;
  launch("filter_to_cudnn", filter_to_cudnn_kernel<To>,
         {dim3(grid_blocks(g.cout * g.cin_g() * g.taps(), threads)), dim3(threads), 0, stream}, g,
         w, out, round);
}
inline void filter_from_cudnn(const ConvGeometry& g, const float* nhwc, float* w,
                              cudaStream_t stream) {
  constexpr int threads = 256;
  launch("filter_from_cudnn", filter_from_cudnn_kernel<float>,
         {dim3(grid_blocks(g.cout * g.cin_g() * g.taps(), threads)), dim3(threads), 0, stream}, g,
         nhwc, w);
}

// y = x rounded to bfloat16, kept in float32 (x float32, or bfloat16 widened exactly).
template <typename From>
__global__ void bf16_rounded_kernel(int64_t n, const From* x, float* y) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) y[i] = bf16_round(load_float(x[i]));
}
template <typename From>
void bf16_rounded(int64_t n, const From* x, float* y, cudaStream_t stream) {
  constexpr int threads = 256;
  launch("bf16_rounded", bf16_rounded_kernel<From>,
         {dim3(grid_blocks(n, threads)), dim3(threads), 0, stream}, n, x, y);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
