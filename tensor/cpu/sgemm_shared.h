#pragma once
// What sgemm's instruction-set versions (sgemm.cpp for AVX-512, sgemm_avx2.cpp) share: operands
// seen through strides, where a micro-kernel's tile of C goes, and how a GEMM's batch items and
// rows or columns are shared out over the OpenMP threads without barriers.
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "tensor/cpu/bf16.h"
#include "tensor/cpu/gemm.h"
#include "tensor/error.h"

namespace sono::cpu::sgemm_detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Below this many multiply-adds a GEMM runs on one thread: waking the team costs more.
inline constexpr int64_t kMinParallelWork = int64_t{1} << 18;

// A matrix seen through strides: element (r, p) is data[r * rs + p * cs].
struct Strided {
  const float* data;
  int64_t rs, cs;
  const float* at(int64_t r, int64_t p) const { return data + r * rs + p * cs; }
};

// Batch item i's operands and epilogue: op(A) as [m, k] and op(B)^T as [n, k] (both packed
// along their rows), its C, and what is applied to C. Each instruction set's Item adds its
// blocking to it.
struct ItemOperands {
  Strided a, b;
  float* c;
  int64_t ldc, m, n, k;
  float alpha, beta;
  const float* bias;
  void (*post_op)(float*, int64_t);
  bool relu;
  bool bf16;  // bf16 operands
  const ImplicitColumns* a_columns;  // read instead of a where set
};

inline ItemOperands item_operands(const GemmProblem<float>& p, int64_t i) {
  const int64_t lda = p.lda ? p.lda : (p.trans_a ? p.m : p.k);
  const int64_t ldb = p.ldb ? p.ldb : (p.trans_b ? p.k : p.n);
  const int64_t ldc = p.ldc ? p.ldc : p.n;
  const float* a = p.a + (p.a_shared ? 0 : i * (p.trans_a ? p.k : p.m) * lda);
  const float* b = p.b + (p.b_shared ? 0 : i * (p.trans_b ? p.n : p.k) * ldb);
  return {p.trans_a ? Strided{a, 1, lda} : Strided{a, lda, 1},
          p.trans_b ? Strided{b, ldb, 1} : Strided{b, 1, ldb},
          p.c + i * p.m * ldc,
          ldc, p.m, p.n, p.k, p.alpha, p.beta, p.bias, p.post_op, p.relu, p.bf16_operands, p.a_columns};
}

// The depth of k's blocks: all of one size (a multiple of `multiple`, at most about max_kc),
// which depends on k alone, so that a row's sums never depend on m or the threads.
inline int64_t depth_block(int64_t k, int64_t max_kc, int64_t multiple) {
  return std::max(multiple, round_up(ceil_div(k, std::max<int64_t>(1, ceil_div(k, max_kc))), multiple));
}

// Packing: panels of W rows of src (rows x depth), panel i at dst + i * W * depth holding
// dst[p * W + r] = src(i * W + r, p), zero-padded to W rows: as the micro-kernels read it.
// src.rs == 1: each depth step's rows are contiguous (A transposed, B as [k, n]); copies runs
// of W floats, which the compiler vectorises. A whole run is a loop of constant length, inlined
// as vector moves: std::copy of a length known only at run time calls memmove for each run.
template <int W>
inline void pack_depth_contiguous(Strided src, int64_t rows, int64_t depth, float* dst) {
  for (int64_t p = 0; p < depth; ++p) {
    const float* s = src.at(0, p);
    for (int64_t r0 = 0; r0 < rows; r0 += W) {
      const int64_t valid = std::min<int64_t>(W, rows - r0);
      float* d = dst + r0 * depth + p * W;
      if (valid == W) {
        for (int l = 0; l < W; ++l) d[l] = s[r0 + l];
        continue;
      }
      std::copy(s + r0, s + r0 + valid, d);
      std::fill(d + valid, d + W, 0.0f);
    }
  }
}

// A panel's rows [first, first + count) of implicit columns (count <= W), each placed once: its
// image and the input position its tap (0, 0) reads. Divisions per row and run of channels
// would cost more than the run's loads.
template <int W>
struct ImplicitRows {
  const float* image[W];
  int64_t y0[W], x0[W], valid;

  ImplicitRows(const ImplicitColumns& c, int64_t first, int64_t count) : valid(count) {
    const int64_t pixels = c.oh * c.ow;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r = first + i, q = r % pixels;
      image[i] = c.x + r / pixels * c.h * c.w * c.pixel_stride;
      y0[i] = q / c.ow * c.stride - c.padding;
      x0[i] = q % c.ow * c.stride - c.padding;
    }
  }
  // Depth step p's tap offset and channel, for at().
  struct Step {
    int64_t dy, dx, channel;
  };
  static Step step(const ImplicitColumns& c, int64_t p) {
    const int64_t tap = p / c.channels;
    return {tap / c.kw * c.dilation, tap % c.kw * c.dilation, p % c.channels};
  }
  // Panel row `row`'s values from depth step s on (contiguous within the tap), or null where
  // the tap reads padding or the row is past the rows.
  const float* at(const ImplicitColumns& c, int64_t row, Step s) const {
    if (row >= valid) return nullptr;
    const int64_t y = y0[row] + s.dy, x = x0[row] + s.dx;
    if (y < 0 || y >= c.h || x < 0 || x >= c.w) return nullptr;
    return image[row] + (y * c.w + x) * c.pixel_stride + s.channel;
  }
};

// Where a micro-kernel's tile goes and what is added to it.
struct TileOut {
  float* c;
  int64_t ldc, rows, cols;  // rows <= the micro-tile's, cols <= its columns are valid
  float alpha, beta;        // c = alpha * acc + beta * c; c is not read when beta is 0
  const float* bias;        // [cols] added to every row, or nullptr
  void (*post_op)(float*, int64_t);  // applied to each stored row, or nullptr
  bool relu;                // c clamped at 0 after the bias, before post_op
};

// The micro-tile of C at (row, col), rows x cols of it valid, in the depth block that is the
// item's first (beta and the bias apply) and/or last (the ReLU and the post-op apply).
inline TileOut tile_out(const ItemOperands& it, int64_t row, int64_t col, int64_t rows, int64_t cols,
                        bool first_depth, bool last_depth) {
  return {it.c + row * it.ldc + col, it.ldc, rows, cols, it.alpha, first_depth ? it.beta : 1.0f,
          first_depth && it.bias ? it.bias + col : nullptr, last_depth ? it.post_op : nullptr,
          last_depth && it.relu};
}

// bf16 products without bf16 instructions: the packed float32 panels' values rounded in place.
inline void round_panels(float* panels, int64_t count) {
  for (int64_t i = 0; i < count; ++i) panels[i] = round_to_bf16(panels[i]);
}

// The team of threads running one GEMM together (or a team of one).
struct Team {
  int id, size;
};

// The rows (as row blocks first, first + step, ...) and columns of C one member computes.
struct Share {
  int64_t first_block, block_step, col_begin, col_end;
};

// Every member packs the operand it does not split for itself: that repeats packing work but
// needs no barrier, and a barrier costs a futex round trip per depth block when idle threads
// sleep (OMP_WAIT_POLICY=passive), which made weight gradients (k = pixels, 100+ depth blocks)
// 1.5x slower than Eigen's. Splitting the larger side repeats the least: rows when op(A) has
// more rows than op(B) has columns (activations x weight), columns otherwise (a batch-1 stage
// of ConvNeXt, m = 49 x n = 4096, where each thread would pack the whole weight).
inline bool splits_rows(int64_t m, int64_t n) { return m >= n; }

// A member's share of an m x n product, columns split in multiples of the micro-tile's nr.
inline Share share_of(int64_t m, int64_t n, int64_t nr, Team team) {
  if (team.size == 1 || splits_rows(m, n)) return {team.id, team.size, 0, n};
  const int64_t width = round_up(ceil_div(n, team.size), nr);
  const int64_t begin = std::min(n, team.id * width);
  return {0, 1, begin, std::min(n, begin + width)};
}

// Runs p's batch items: on one thread when small, an item per thread when there are as many
// items as threads (attention's small products), else the whole team on each item in turn.
// make_item(p, i, team_size) gives item i's blocking, run_item(item, team) a member's share.
template <typename MakeItem, typename RunItem>
void run_items(const GemmProblem<float>& p, MakeItem&& make_item, RunItem&& run_item) {
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  SONO_CHECK(!p.a_columns || p.batch == 1, "sgemm: implicit columns for a batch of ", p.batch, " products");
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads == 1 || p.batch * p.m * p.n * p.k < kMinParallelWork) {
    for (int64_t i = 0; i < p.batch; ++i) run_item(make_item(p, i, 1), Team{0, 1});
  } else if (p.batch >= threads) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < p.batch; ++i) run_item(make_item(p, i, 1), Team{0, 1});
  } else {
#pragma omp parallel num_threads(threads)
    {
      const Team team{omp_get_thread_num(), omp_get_num_threads()};
      for (int64_t i = 0; i < p.batch; ++i) run_item(make_item(p, i, team.size), team);
    }
  }
}

}  // namespace sono::cpu::sgemm_detail
