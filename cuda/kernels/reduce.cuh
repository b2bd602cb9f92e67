#pragma once
// Sum and max over any set of dims, accumulated in double (as the CPU backend does), with a
// launch chosen from the shape alone (plan_reduce) so that every shape the models produce fills
// the GPU:
// - columns: neighbouring outputs are neighbours in memory (NHWC per-channel sums over N*H*W:
//   bias and layer-scale gradients). Blocks of (32 outputs, kTileRows), coalesced.
// - blocks: a block per output, its threads striding over the reduced elements (sums over the
//   last dims, sums to a scalar).
// - threads: a thread per output, for outputs of at most kThreadCount elements.
// Where the outputs alone would not fill the GPU, the reduced elements are split into chunks
// over grid.y: each block writes its chunk's partial (double) to its own slot, then a second
// pass folds each output's partials in a fixed order. No atomics and no order that depends on
// the schedule: results are bitwise identical run to run.
//
// Expected H200 times at the memory roofline (bytes read / 4.3e12 B/s), against the ncu times
// of the previous kernels (one thread per output summing a whole column; shared/measurements/
// h200-2026-12-04): ConvNeXt-Base 224 bs16's bias and layer-scale gradients read about 28 B
// per activation element of each block (the 4C and C Linear biases, the depthwise conv's bias,
// gamma): a 56^2x128-stage block reads 180 MB, 42 us (its 4C = 512 bias alone, 50176 x 512
// floats: 24 us, measured 27.5 ms on 512 threads), the whole step 2.1 GB, 0.49 ms (measured
// 348 ms). MiT-B2 256 bs8's Linear and conv bias gradients, about 11 C-wide sums per token,
// 0.67 GB: 0.16 ms (measured 89 ms for reduce_per_thread, 4.8 ms for reduce_per_block).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cuda/kernels/elementwise.cuh"
#include "tensor/strided_layout.h"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

// x seen as kept dims (one output each, in order) times reduced dims; each side's contiguous
// dims merged, so that the usual cases index with one multiply.
struct ReduceSpace {
  StridedSpace<1> kept;     // output index -> offset in x
  StridedSpace<1> reduced;  // reduced index -> offset from the output's base
  int64_t outputs = 1, count = 1;

  __host__ __device__ int64_t output_base(int64_t o) const { return offset(kept, o); }
  __host__ __device__ int64_t reduced_offset(int64_t r) const { return offset(reduced, r); }

 private:
  __host__ __device__ static int64_t offset(const StridedSpace<1>& space, int64_t i) {
    int64_t off[1];
    space.offsets(i, off);
    return off[0];
  }
};

// out_shape has x's rank with size 1 on the reduced dims.
inline ReduceSpace make_reduce_space(const std::vector<int64_t>& x_shape,
                                     const std::vector<int64_t>& x_strides,
                                     const std::vector<int64_t>& out_shape) {
  Shape kept_size, kept_stride, red_size, red_stride;
  ReduceSpace s;
  for (size_t d = 0; d < x_shape.size(); ++d) {
    const bool reduced = out_shape[d] == 1 && x_shape[d] != 1;
    (reduced ? red_size : kept_size).push_back(x_shape[d]);
    (reduced ? red_stride : kept_stride).push_back(x_strides[d]);
    (reduced ? s.count : s.outputs) *= x_shape[d];
  }
  const auto kept = merge_dims<1>(kept_size, {&kept_stride});
  const auto red = merge_dims<1>(red_size, {&red_stride});
  s.kept = make_space<1>(kept.shape, {kept.strides[0]});
  s.reduced = make_space<1>(red.shape, {red.strides[0]});
  return s;
}

// ---- launch choice ------------------------------------------------------------------------------

// Blocks of 256 threads that fill an H200: 132 SMs x 8 resident blocks (2048 threads an SM).
constexpr int64_t kFillBlocks = 132 * 8;
// The most elements one thread folds serially in the first stage (fewer once the GPU is full).
constexpr int64_t kMaxThreadLoop = 1024;
// The fewest elements a first-stage chunk gives each of its lanes: each is a serial step that
// waits on memory, and shorter chunks make more partials for the second stage to fold.
constexpr int64_t kMinLaneSteps = 8;
// Outputs of at most this many elements get a thread each.
constexpr int64_t kThreadCount = 16;
constexpr int kReduceThreads = 256;

// Chunks to split `count` reduced elements into, given `blocks` blocks across the outputs and
// `lanes` threads walking each chunk: enough blocks in all to fill the GPU, yet no chunk under
// min_chunk elements (the partials stay small next to the input) and no thread walking more
// than kMaxThreadLoop elements. The parameter-gradient partials of LayerNorm, BatchNorm and the
// depthwise conv split their rows by the same rule.
inline int64_t fill_chunks(int64_t count, int64_t blocks, int64_t lanes, int64_t min_chunk) {
  const int64_t to_fill = ceil_div(kFillBlocks, blocks);
  const int64_t at_most = std::max<int64_t>(1, count / min_chunk);
  const int64_t at_least = ceil_div(count, lanes * kMaxThreadLoop);
  const int64_t chunks = std::max(std::min(to_fill, at_most), at_least);
  return std::clamp<int64_t>(chunks, 1, 65535);  // grid.y's limit
}

enum class ReduceKernel { threads, columns, blocks };

struct ReducePlan {
  ReduceKernel kernel = ReduceKernel::threads;
  int64_t outputs = 1;
  int64_t chunks = 1, chunk = 1;  // the reduced elements as chunks x chunk (the last shorter)
  dim3 grid, block;
  int64_t thread_loop = 0;  // the most elements one thread folds serially, either stage

  int64_t threads() const {
    return static_cast<int64_t>(grid.x) * grid.y * grid.z * block.x * block.y * block.z;
  }
  // Doubles of scratch for the partials: none when one chunk writes the outputs directly.
  int64_t workspace() const { return chunks > 1 ? chunks * outputs : 0; }
};

// Lanes per output of the block kernel: about 8 elements a lane, 32 to kReduceThreads.
inline int reduce_block_lanes(int64_t count) {
  int lanes = kWarp;
  while (lanes < kReduceThreads && lanes * 8 < count) lanes *= 2;
  return lanes;
}

// A pure function of the shape, so that the tests can check every choice without a kernel.
inline ReducePlan plan_reduce(const ReduceSpace& s) {
  ReducePlan p;
  p.outputs = s.outputs;
  const bool coalesced = s.kept.stride[0][s.kept.rank - 1] == 1 && s.outputs >= kWarp;
  if (s.count <= kThreadCount) {
    p.grid = dim3(grid_blocks(s.outputs, kReduceThreads));
    p.block = dim3(kReduceThreads);
    p.chunk = s.count;
    p.thread_loop = s.count * ceil_div(s.outputs, p.threads());
    return p;
  }
  if (coalesced) {
    p.kernel = ReduceKernel::columns;
    const int64_t tiles = ceil_div(s.outputs, kWarp);
    p.chunks = fill_chunks(s.count, tiles, kTileRows, kTileRows * kMinLaneSteps);
    p.block = dim3(kWarp, kTileRows);
  } else {
    p.kernel = ReduceKernel::blocks;
    SONO_CHECK(s.outputs < (int64_t{1} << 31), "CUDA reduce: ", s.outputs, " outputs");
    const int lanes = reduce_block_lanes(s.count);
    p.chunks = fill_chunks(s.count, s.outputs, lanes, lanes * kMinLaneSteps);
    p.block = dim3(lanes);
  }
  p.chunk = ceil_div(s.count, p.chunks);
  p.chunks = ceil_div(s.count, p.chunk);  // no empty chunk
  const bool columns = p.kernel == ReduceKernel::columns;
  p.grid = dim3(static_cast<unsigned>(columns ? ceil_div(s.outputs, kWarp) : s.outputs),
                static_cast<unsigned>(p.chunks));
  const int64_t lanes = columns ? kTileRows : p.block.x;
  const int64_t fold_loop = p.chunks > 1 ? ceil_div(p.chunks, kTileRows) : 0;
  p.thread_loop = std::max(ceil_div(p.chunk, lanes), fold_loop);
  return p;
}

// ---- kernels ------------------------------------------------------------------------------------

// The first stage's result for output o: the output itself when there is one chunk, else the
// chunk's partial.
__device__ __forceinline__ void store_reduced(int64_t o, int64_t outputs, double acc,
                                              double* partial, float* out) {
  if (gridDim.y == 1) out[o] = static_cast<float>(acc);
  else partial[blockIdx.y * outputs + o] = acc;
}

template <typename Op>
__global__ void reduce_threads_kernel(ReduceSpace s, const float* x, float* out, double identity,
                                      Op op) {
  for (int64_t o = global_thread(); o < s.outputs; o += grid_threads()) {
    const int64_t base = s.output_base(o);
    double acc = identity;
    for (int64_t r = 0; r < s.count; ++r)
      acc = op(acc, static_cast<double>(x[base + s.reduced_offset(r)]));
    out[o] = static_cast<float>(acc);
  }
}

// Block (32, kTileRows) at (output tile, chunk): 32 neighbouring outputs over the chunk.
template <typename Op>
__global__ void reduce_columns_kernel(ReduceSpace s, int64_t chunk, const float* x,
                                      double identity, Op op, double* partial, float* out) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t first = blockIdx.y * chunk;
  const int64_t last = first + chunk < s.count ? first + chunk : s.count;
  double acc = identity;
  if (o < s.outputs) {
    const int64_t base = s.output_base(o);
    for (int64_t r = first + threadIdx.y; r < last; r += kTileRows)
      acc = op(acc, static_cast<double>(x[base + s.reduced_offset(r)]));
  }
  acc = reduce_over_tile_rows(acc, identity, op);
  if (threadIdx.y == 0 && o < s.outputs) store_reduced(o, s.outputs, acc, partial, out);
}

// A block at (output, chunk).
template <typename Op>
__global__ void reduce_blocks_kernel(ReduceSpace s, int64_t chunk, const float* x,
                                     double identity, Op op, double* partial, float* out) {
  const int64_t o = blockIdx.x;
  const int64_t first = blockIdx.y * chunk;
  const int64_t last = first + chunk < s.count ? first + chunk : s.count;
  const int64_t base = s.output_base(o);
  double acc = identity;
  for (int64_t r = first + threadIdx.x; r < last; r += blockDim.x)
    acc = op(acc, static_cast<double>(x[base + s.reduced_offset(r)]));
  acc = block_reduce(acc, identity, op);
  if (threadIdx.x == 0) store_reduced(o, s.outputs, acc, partial, out);
}

// out[o] = op over k of partial[k][o]: the second stage. Block (32, Rows) at an output tile:
// row y of the block folds chunks y, y + Rows, ... in order, then the rows meet in order, so
// that a few hundred chunks take a few dozen steps of one thread, each a wait on memory.
template <typename T, typename Op, typename Out, int Rows>
__global__ void fold_chunks_kernel(int64_t chunks, int64_t outputs, const T* partial, Out* out,
                                   double identity, Op op) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  double acc = identity;
  if (o < outputs)
    for (int64_t k = threadIdx.y; k < chunks; k += Rows)
      acc = op(acc, static_cast<double>(partial[k * outputs + o]));
  acc = reduce_over_tile_rows<Rows>(acc, identity, op);
  if (threadIdx.y == 0 && o < outputs) store_float(out[o], static_cast<float>(acc));
}

// What the first stage of plan p moves: each element read once, the outputs or the chunks'
// partials written; its busiest thread folds p.chunk elements over its block's lanes.
inline LaunchCost reduce_first_stage_cost(const ReduceSpace& s, const ReducePlan& p) {
  const double read = 4.0 * s.outputs * s.count;
  if (p.kernel == ReduceKernel::threads) return looped(read, 4.0 * s.outputs, s.outputs, s.count);
  const double written = p.chunks > 1 ? 8.0 * p.chunks * s.outputs : 4.0 * s.outputs;
  const int64_t lanes = p.kernel == ReduceKernel::columns ? kTileRows : p.block.x;
  return looped(read, written, p.threads(), ceil_div(p.chunk, lanes),
                static_cast<double>(s.outputs) * s.count);
}

// The second stage over `chunks` partials of `outputs` outputs, each partial a T, into Out:
// blocks of kTileRows rows, or kWideFoldRows where the chunks are many (the parameter
// gradients' few outputs over hundreds of chunks), a quarter of the serial steps.
constexpr int kWideFoldRows = 32;
template <typename T, typename Op, typename Out>
void fold_chunks(const char* name, int64_t chunks, int64_t outputs, const T* partial, Out* out,
                 double identity, Op op, cudaStream_t stream) {
  const auto fold = [&](auto rows_tag) {
    constexpr int rows = decltype(rows_tag)::value;
    const dim3 grid(static_cast<unsigned>(ceil_div(outputs, kWarp))), block(kWarp, rows);
    const LaunchConfig cfg{grid, block, 0, stream,
                           looped(double(sizeof(T)) * chunks * outputs, 4.0 * outputs,
                                  int64_t{grid.x} * kWarp * rows, ceil_div(chunks, rows),
                                  static_cast<double>(chunks) * outputs)};
    launch(name, fold_chunks_kernel<T, Op, Out, rows>, cfg, chunks, outputs, partial, out,
           identity, op);
  };
  if (chunks >= 2 * kWideFoldRows) fold(std::integral_constant<int, kWideFoldRows>{});
  else fold(std::integral_constant<int, kTileRows>{});
}

// workspace: plan_reduce(s).workspace() doubles (may be null when that is 0).
template <typename Op>
void reduce(const ReduceSpace& s, const float* x, float* out, double* workspace, double identity,
            Op op, cudaStream_t stream) {
  const ReducePlan p = plan_reduce(s);
  const LaunchConfig cfg{p.grid, p.block, 0, stream, reduce_first_stage_cost(s, p)};
  switch (p.kernel) {
    case ReduceKernel::threads:
      return launch("reduce_threads", reduce_threads_kernel<Op>, cfg, s, x, out, identity, op);
    case ReduceKernel::columns:
      launch("reduce_columns", reduce_columns_kernel<Op>, cfg, s, p.chunk, x, identity, op,
             workspace, out);
      break;
    case ReduceKernel::blocks:
      launch("reduce_blocks", reduce_blocks_kernel<Op>, cfg, s, p.chunk, x, identity, op,
             workspace, out);
      break;
  }
  if (p.chunks > 1)
    fold_chunks("reduce_fold_chunks", p.chunks, s.outputs, static_cast<const double*>(workspace),
                out, identity, op, stream);
}

inline void reduce_sum(const ReduceSpace& s, const float* x, float* out, double* workspace,
                       cudaStream_t stream) {
  reduce(s, x, out, workspace, 0.0, SumOp{}, stream);
}
inline void reduce_max(const ReduceSpace& s, const float* x, float* out, double* workspace,
                       cudaStream_t stream) {
  reduce(s, x, out, workspace, -INFINITY, MaxOp{}, stream);
}

// out[c] = sum_r x[r, c] (in double, in fold_chunks_kernel's fixed order) for a contiguous
// [rows, cols] matrix of partial sums: the second stage of the parameter-gradient sums and of
// the split-K convs, whose first stages keep `rows` (their chunk count) to a few thousand at
// most. Their partials are float32, as the CPU's LayerNorm sums 32 rows in float before adding
// them into double: a thread adds at most kMaxThreadLoop terms in float (a few hundred on the
// models' shapes), an error of the order of sqrt(terms) ulp, and the chunks meet in double
// here. Out: float, or bfloat16 (a split-K conv's bf16 y) rounded once from the float32 total.
template <typename Out = float>
void column_sums(const float* x, int64_t rows, int64_t cols, Out* out, cudaStream_t stream) {
  fold_chunks("column_sums", rows, cols, x, out, 0.0, SumOp{}, stream);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
