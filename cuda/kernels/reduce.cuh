#pragma once
// Sum and max over any set of dims, accumulated in double (as the CPU backend does).
// Two kernels: a thread per output when neighbouring outputs are neighbours in memory (NHWC
// per-channel statistics: coalesced), else a block per output (reducing the last dims).
#include <vector>

#include "cuda/kernels/elementwise.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

// x seen as kept dims (one output each, in order) times reduced dims.
struct ReduceSpace {
  StridedSpace<1> kept;     // output index -> offset in x
  StridedSpace<1> reduced;  // reduced index -> offset from the output's base
  int64_t outputs = 1, count = 1;
};

// out_shape has x's rank with size 1 on the reduced dims.
inline ReduceSpace make_reduce_space(const std::vector<int64_t>& x_shape,
                                     const std::vector<int64_t>& x_strides,
                                     const std::vector<int64_t>& out_shape) {
  std::vector<int64_t> kept_size, kept_stride, red_size, red_stride;
  ReduceSpace s;
  for (size_t d = 0; d < x_shape.size(); ++d) {
    const bool reduced = out_shape[d] == 1 && x_shape[d] != 1;
    (reduced ? red_size : kept_size).push_back(x_shape[d]);
    (reduced ? red_stride : kept_stride).push_back(x_strides[d]);
    (reduced ? s.count : s.outputs) *= x_shape[d];
  }
  s.kept = make_space<1>(kept_size, {kept_stride});
  s.reduced = make_space<1>(red_size, {red_stride});
  return s;
}

template <typename Op>
__global__ void reduce_per_thread_kernel(ReduceSpace s, const float* x, float* out, double identity,
                                         Op op) {
  for (int64_t o = global_thread(); o < s.outputs; o += grid_threads()) {
    int64_t base[1], off[1];
    s.kept.offsets(o, base);
    double acc = identity;
    for (int64_t r = 0; r < s.count; ++r) {
      s.reduced.offsets(r, off);
      acc = op(acc, static_cast<double>(x[base[0] + off[0]]));
    }
    out[o] = static_cast<float>(acc);
  }
}

template <typename Op>
__global__ void reduce_per_block_kernel(ReduceSpace s, const float* x, float* out, double identity,
                                        Op op) {
  for (int64_t o = blockIdx.x; o < s.outputs; o += gridDim.x) {  // uniform across the block
    int64_t base[1], off[1];
    s.kept.offsets(o, base);
    double acc = identity;
    for (int64_t r = threadIdx.x; r < s.count; r += blockDim.x) {
      s.reduced.offsets(r, off);
      acc = op(acc, static_cast<double>(x[base[0] + off[0]]));
    }
    acc = block_reduce(acc, identity, op);
    if (threadIdx.x == 0) out[o] = static_cast<float>(acc);
  }
}

constexpr int kReduceThreads = 256;

// True where a thread per output is the better kernel: many outputs, and neighbouring outputs
// adjacent in memory (or little to reduce).
inline bool reduce_per_thread(const ReduceSpace& s) {
  const bool coalesced = s.kept.rank > 0 && s.kept.stride[0][s.kept.rank - 1] == 1;
  return (coalesced && s.outputs >= 512) || s.count <= 16;
}

template <typename Op>
void reduce(const ReduceSpace& s, const float* x, float* out, double identity, Op op,
            cudaStream_t stream) {
  const double read = 4.0 * s.outputs * s.count, written = 4.0 * s.outputs;
  if (reduce_per_thread(s)) {
    launch("reduce_per_thread", reduce_per_thread_kernel<Op>,
           {dim3(grid_blocks(s.outputs, kReduceThreads)), dim3(kReduceThreads), 0, stream,
            looped(read, written, s.outputs, s.count)},
           s, x, out, identity, op);
  } else {
    launch("reduce_per_block", reduce_per_block_kernel<Op>,
           {dim3(grid_blocks(s.outputs, 1)), dim3(kReduceThreads), 0, stream,
            looped(read, written, s.outputs * kReduceThreads, ceil_div(s.count, kReduceThreads))},
           s, x, out, identity, op);
  }
}

inline void reduce_sum(const ReduceSpace& s, const float* x, float* out, cudaStream_t stream) {
  reduce(s, x, out, 0.0, SumOp{}, stream);
}
inline void reduce_max(const ReduceSpace& s, const float* x, float* out, cudaStream_t stream) {
  reduce(s, x, out, -INFINITY, MaxOp{}, stream);
}

// out[c] = sum_r x[r, c] for a contiguous [rows, cols] matrix: the second stage of the
// two-stage parameter-gradient sums, and a bias gradient.
inline void column_sums(const float* x, int64_t rows, int64_t cols, float* out,
                        cudaStream_t stream) {
  reduce_sum(make_reduce_space({rows, cols}, {cols, 1}, {1, cols}), x, out, stream);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
