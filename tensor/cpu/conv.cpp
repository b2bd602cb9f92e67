// Convolution on NHWC input with PyTorch-layout weights [Cout, Cin/groups, KH, KW].
// Two kernels cover every case:
// - depthwise (groups == Cin == Cout): a direct kernel with channels innermost, the hot op of
//   ConvNeXt (7x7), MiT's Mix-FFN and ASPP (3x3 with dilation up to 36);
// - everything else: im2col over a few images at a time, then one GEMM per group. A 1x1,
//   stride-1, unpadded conv needs no im2col: the NHWC input already is the column matrix. The
//   forward's GEMM reads tap-major columns with channels in runs of 16 from the input itself
//   (ImplicitColumns), so no column matrix is written there either. Float32 3x3 stride-1 convs
//   take Winograd's F(4x4, 3x3) instead (winograd.h), forward and input gradient: a quarter of
//   the products. Other stride-1 input gradients run as the forward of a turned kernel
//   (turned_conv.h), which reads grad_out in place of a column matrix and col2im.
// Padding is symmetric zero padding. The kernels overwrite their output (out, grad_x, grad_w).
#include <algorithm>
#include <memory>
#include <mutex>
#include <omp.h>
#include <type_traits>
#include <vector>

#include "tensor/cpu/bf16.h"
#include "tensor/cpu/conv_epilogue.h"
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/depthwise_simd.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/thread_buffer.h"
#include "tensor/cpu/turned_conv.h"
#include "tensor/cpu/winograd.h"

namespace sono::cpu {

namespace {

// Below this much work (multiply-adds or copied elements) a loop runs on one thread: waking
// threads would cost more than it saves.
constexpr int64_t kParallelWork = int64_t(1) << 16;

// ---- tap tables -----------------------------------------------------------------------------
// A conv reads input position i = o * stride - padding + k * dilation for output position o and
// kernel tap k. These tables hold that relation per axis, so inner loops never divide.
struct Taps {
  std::vector<int64_t> y, x;  // [positions * kernel taps], -1 where nothing is read
};

// For each output position o and tap k: the input position read, or -1 in the zero padding.
std::vector<int64_t> inputs_read(int64_t out_len, int64_t in_len, int64_t taps,
                                 const Conv2dGeometry& g) {
  std::vector<int64_t> t(out_len * taps);
  for (int64_t o = 0; o < out_len; ++o)
    for (int64_t k = 0; k < taps; ++k) {
      const int64_t i = o * g.stride - g.padding + k * g.dilation;
      t[o * taps + k] = i >= 0 && i < in_len ? i : -1;
    }
  return t;
}

// For each input position i and tap k: the output position that reads i through k, or -1.
std::vector<int64_t> outputs_reading(int64_t in_len, int64_t out_len, int64_t taps,
                                     const Conv2dGeometry& g) {
  std::vector<int64_t> t(in_len * taps, -1);
  for (int64_t o = 0; o < out_len; ++o)
    for (int64_t k = 0; k < taps; ++k) {
      const int64_t i = o * g.stride - g.padding + k * g.dilation;
      if (i >= 0 && i < in_len) t[i * taps + k] = o;
    }
  return t;
}

Taps forward_taps(const Conv2dGeometry& g) {
  return {inputs_read(g.oh, g.h, g.kh, g), inputs_read(g.ow, g.w, g.kw, g)};
}

Taps backward_taps(const Conv2dGeometry& g) {
  return {outputs_reading(g.h, g.oh, g.kh, g), outputs_reading(g.w, g.ow, g.kw, g)};
}

// dst[b][c][r] = src[b][r][c]: moves weights between PyTorch's layout and channels-last ones.
template <typename T>
void batched_transpose(const T* src, int64_t batch, int64_t rows, int64_t cols, T* dst) {
#pragma omp parallel for schedule(static) if (batch > 1 && batch * rows * cols > kParallelWork)
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[(b * cols + c) * rows + r] = src[(b * rows + r) * cols + c];
}

template <typename T>
T* scratch(Tensor& holder, int64_t numel) {
  holder = Tensor::empty({numel}, std::is_same_v<T, float> ? DType::f32 : DType::f64);
  return holder.data<T>();
}

// Per-thread partial sums for weight gradients (a small result summed over a huge number of
// pixels): each thread adds into its own buffer, and the buffers are summed in thread order, so
// the result does not depend on timing and threads never wait on each other.
template <typename T>
class ThreadPartials {
 public:
  explicit ThreadPartials(int64_t size) : size_(size), buffers_(omp_get_max_threads()) {}
  // The calling thread's buffer (a tensor, so from the block cache), zeroed on first use.
  T* mine() {
    Tensor& b = buffers_[omp_get_thread_num()];
    if (!b.defined()) std::fill_n(scratch<T>(b, size_), size_, T(0));
    return b.data<T>();
  }
  void sum_into(T* dst) const {
    std::fill(dst, dst + size_, T(0));
    for (const Tensor& b : buffers_) {
      if (!b.defined()) continue;
      const T* src = b.data<T>();
      for (int64_t i = 0; i < size_; ++i) dst[i] += src[i];
    }
  }

 private:
  int64_t size_;
  std::vector<Tensor> buffers_;
};

// ---- depthwise ------------------------------------------------------------------------------
// Channels are innermost, so every depthwise kernel is a sum of channel-row products; channels
// go in blocks whose accumulators the compiler keeps in vector registers across all taps.

// Calls block(c0, width) over [0, channels) in blocks of kWidth channels; full blocks get a
// compile-time width so that their accumulator arrays become registers.
template <int64_t kWidth, typename Block>
void for_each_channel_block(int64_t channels, Block&& block) {
  int64_t c0 = 0;
  for (; c0 + kWidth <= channels; c0 += kWidth) block(c0, std::integral_constant<int64_t, kWidth>{});
  if (c0 < channels) block(c0, channels - c0);
}

// dst[c] (+)= sum over the (a, b) channel-row pairs that for_each_pair yields of a[c] * b[c].
template <typename T, typename Pairs>
void channel_dot(T* dst, int64_t channels, bool accumulate, Pairs&& for_each_pair) {
  constexpr int64_t kWidth = 256 / sizeof(T);
  for_each_channel_block<kWidth>(channels, [&](int64_t c0, auto len) {
    T acc[kWidth] = {};
    for_each_pair([&](const T* a, const T* b) {
      a += c0;
      b += c0;
#pragma omp simd
      for (int64_t c = 0; c < len; ++c) acc[c] += a[c] * b[c];
    });
    T* d = dst + c0;
    for (int64_t c = 0; c < len; ++c) d[c] = accumulate ? d[c] + acc[c] : acc[c];
  });
}

// kLanes adjacent pixels of a row form a regular group when each tap kx is either in the
// padding for all of them or read by all of them, `step` source pixels apart (the stride).
// A regular group loads each weight once for all its pixels; the others (the borders of a 7x7
// kernel, the row's last pixels) go one pixel at a time.
constexpr int64_t kLanes = 4;

struct LaneGroup {
  int64_t q0, step;
  bool regular;
};

std::vector<LaneGroup> lane_groups(const std::vector<int64_t>& tx, int64_t width, int64_t kw) {
  std::vector<LaneGroup> groups;
  for (int64_t q0 = 0; q0 < width; q0 += kLanes) {
    const int64_t* first = &tx[q0 * kw];
    LaneGroup grp{q0, 0, q0 + kLanes <= width};
    for (int64_t kx = 0; kx < kw && grp.regular; ++kx) {
      if (first[kx] >= 0 && grp.step == 0) grp.step = tx[(q0 + 1) * kw + kx] - first[kx];
      for (int64_t p = 1; p < kLanes && grp.regular; ++p) {
        const int64_t sx = tx[(q0 + p) * kw + kx];
        grp.regular = first[kx] < 0 ? sx < 0 : sx >= 0 && sx == first[kx] + p * grp.step;
      }
    }
    groups.push_back(grp);
  }
  return groups;
}

// dst[q0 + p, c] = sum over taps of src[sy(ky), sx(kx) + p * step, c] * wt[ky, kx, c] for the
// kLanes pixels of a regular group.
template <typename T>
void lane_group_dot(const Conv2dGeometry& g, const LaneGroup& grp, const int64_t* ys, const int64_t* xs,
                    const T* src_image, int64_t src_w, const T* wt, T* dst) {
  constexpr int64_t kWidth = 64 / sizeof(T);
  const int64_t c = g.cin, lane_stride = grp.step * c;
  for_each_channel_block<kWidth>(c, [&](int64_t c0, auto len) {
    T acc[kLanes][kWidth] = {};
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      if (ys[ky] < 0) continue;
      const T* src_row = src_image + ys[ky] * src_w * c + c0;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        if (xs[kx] < 0) continue;
        const T* a = src_row + xs[kx] * c;
        const T* b = wt + (ky * g.kw + kx) * c + c0;
        for (int64_t p = 0; p < kLanes; ++p) {
          const T* ap = a + p * lane_stride;
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) acc[p][j] += ap[j] * b[j];
        }
      }
    }
    for (int64_t p = 0; p < kLanes; ++p) std::copy_n(acc[p], int64_t(len), dst + p * c + c0);
  });
}

// dst[n, p, q, c] = sum over taps (ky, kx) of src[n, taps.y[p, ky], taps.x[q, kx], c] * wt[ky, kx, c],
// skipping taps marked -1. With forward taps this is the depthwise forward (src = x, dst = out);
// with backward taps it is the input gradient (src = grad_out, dst = grad_x).
template <typename T>
void depthwise_gather(const Conv2dGeometry& g, const Taps& taps, const T* src, int64_t src_h,
                      int64_t src_w, const T* wt, T* dst, int64_t dst_h, int64_t dst_w) {
  const int64_t c = g.cin;
  const std::vector<LaneGroup> groups = lane_groups(taps.x, dst_w, g.kw);
#pragma omp parallel for schedule(static) if (g.n * dst_h * dst_w * c * g.kh * g.kw > kParallelWork)
  for (int64_t row = 0; row < g.n * dst_h; ++row) {
    const int64_t n = row / dst_h, p = row % dst_h;
    const int64_t* ys = &taps.y[p * g.kh];
    const T* src_image = src + n * src_h * src_w * c;
    T* dst_row = dst + row * dst_w * c;
    for (const LaneGroup& grp : groups) {
      if (grp.regular) {
        lane_group_dot(g, grp, ys, &taps.x[grp.q0 * g.kw], src_image, src_w, wt, dst_row + grp.q0 * c);
        continue;
      }
      for (int64_t q = grp.q0; q < std::min(grp.q0 + kLanes, dst_w); ++q) {
        const int64_t* xs = &taps.x[q * g.kw];
        channel_dot(dst_row + q * c, c, false, [&](auto visit) {
          for (int64_t ky = 0; ky < g.kh; ++ky) {
            if (ys[ky] < 0) continue;
            const T* src_row = src_image + ys[ky] * src_w * c;
            for (int64_t kx = 0; kx < g.kw; ++kx)
              if (xs[kx] >= 0) visit(src_row + xs[kx] * c, wt + (ky * g.kw + kx) * c);
          }
        });
      }
    }
  }
}

// grad_wt[ky, kx, c] = sum over n, oy, ox of grad_out[n, oy, ox, c] * x[n, iy, ix, c].
template <typename T>
void depthwise_weight_grad(const Conv2dGeometry& g, const T* x, const T* grad_out, T* grad_wt) {
  const int64_t c = g.cin;
  const Taps t = forward_taps(g);
  ThreadPartials<T> partials(g.kh * g.kw * c);
#pragma omp parallel if (g.n * g.oh * g.ow * c * g.kh * g.kw > kParallelWork)
  {
    T* mine = partials.mine();
#pragma omp for schedule(static)
    for (int64_t row = 0; row < g.n * g.oh; ++row) {
      const int64_t n = row / g.oh, oy = row % g.oh;
      const T* grad_row = grad_out + row * g.ow * c;
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t iy = t.y[oy * g.kh + ky];
        if (iy < 0) continue;
        const T* x_row = x + (n * g.h + iy) * g.w * c;
        for (int64_t kx = 0; kx < g.kw; ++kx)
          channel_dot(mine + (ky * g.kw + kx) * c, c, true, [&](auto visit) {
            for (int64_t ox = 0; ox < g.ow; ++ox) {
              const int64_t ix = t.x[ox * g.kw + kx];
              if (ix >= 0) visit(grad_row + ox * c, x_row + ix * c);
            }
          });
      }
    }
  }
  partials.sum_into(grad_wt);
}

// ---- the forward's epilogue ----------------------------------------------------------------
template <typename T>
void relu_in_place(T* values, int64_t n) {
  for (int64_t i = 0; i < n; ++i) values[i] = values[i] > T(0) ? values[i] : T(0);
}

// The GEMM paths apply the epilogue to C's tiles in registers, Winograd to its output blocks;
// the others in a pass.
template <typename T>
void apply_epilogue(const Conv2dGeometry& g, const Epilogue<T>& e, T* out) {
  if (!e.bias && !e.relu) return;
  const int64_t rows = g.n * g.oh * g.ow;
#pragma omp parallel for schedule(static) if (rows * g.cout > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    T* row = out + r * g.cout;
    if (e.bias)
      for (int64_t c = 0; c < g.cout; ++c) row[c] += e.bias[c];
    if (e.relu) relu_in_place(row, g.cout);
  }
}

// ---- im2col + GEMM --------------------------------------------------------------------------
// c (+)= op(a) op(b), [m, k] x [k, n], on row-major matrices with row strides lda/ldb/ldc:
// one group's slice of the column, weight and output matrices; products as g.precision says.
// With a_columns, op(a) is read through it (a and lda unused). The epilogue applies to c;
// packed_b: b packed already (pack_b of this problem).
template <typename T>
GemmProblem<T> slice_problem(const Conv2dGeometry& g, const T* a, int64_t lda, bool ta, const T* b, int64_t ldb,
                             bool tb, T* c, int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate,
                             const ImplicitColumns* a_columns = nullptr, const Epilogue<T>& e = {},
                             const PackedB* packed_b = nullptr) {
  GemmProblem<T> p{a, b, c, e.bias, 1, m, n, k, ta, tb, false, false, T(1), T(accumulate ? 1 : 0), lda, ldb, ldc};
  p.relu = e.relu;
  p.bf16_operands = g.precision == Precision::bf16;
  p.a_columns = a_columns;
  p.packed_b = packed_b;
  return p;
}

template <typename T>
void gemm_slices(const Conv2dGeometry& g, const T* a, int64_t lda, bool ta, const T* b, int64_t ldb, bool tb, T* c,
                 int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate,
                 const ImplicitColumns* a_columns = nullptr, const Epilogue<T>& e = {},
                 const PackedB* packed_b = nullptr) {
  gemm_rows<T>(slice_problem(g, a, lda, ta, b, ldb, tb, c, ldc, m, n, k, accumulate, a_columns, e, packed_b));
}

// The column matrix has one row per output pixel and, per group, the taps (ky, kx) of that
// group's input channels: column gi * group_cols + (ky * KW + kx) * Cin/groups + ci ("tap
// major": each tap's channels are a contiguous copy of the input). Weights become matching rows
// [Cout, KH, KW, Cin/groups] so group gi's GEMM is one contiguous block. Or "weight order":
// column gi * group_cols + ci * KH * KW + (ky * KW + kx), PyTorch's own weight layout, so the
// weights need no transposing (nor the forward's weight gradient), for a column gather with
// strided writes. That wins where the weights outnumber the columns: more output channels than
// output pixels (ConvNeXt's last downsample at batch 1 transposed 2M weights for 100K columns).
struct ColumnLayout {
  int64_t cin_g, cout_g, group_cols, cols, images_per_chunk;
  bool identity;      // 1x1, stride 1, no padding: the input itself is the column matrix
  bool weight_order;  // columns in the weights' (ci, ky, kx) order
};

// The input gradient's col2im reads tap-major columns, and frozen weights are transposed once
// (FrozenWeights): they pass may_use_weight_order = false.
ColumnLayout column_layout(const Conv2dGeometry& g, bool may_use_weight_order) {
  ColumnLayout cl;
  cl.cin_g = g.cin / g.groups;
  cl.cout_g = g.cout / g.groups;
  cl.group_cols = g.kh * g.kw * cl.cin_g;
  cl.cols = cl.group_cols * g.groups;
  cl.identity = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0;
  // Bounds the column buffer to about 2^23 elements (32 MB in float32), at least one image.
  const int64_t per_image = g.oh * g.ow * cl.cols;
  cl.images_per_chunk = cl.identity ? g.n : std::clamp<int64_t>((int64_t(1) << 23) / per_image, 1, g.n);
  // Decided per image, not per chunk: the column order is the order of the sum over the
  // depth, so an image gets the same float rounding in any batch (predict --batch_size).
  cl.weight_order = may_use_weight_order && g.kh * g.kw > 1 && g.cout > g.oh * g.ow;
  return cl;
}

// The column row of output pixel (oy, ox) of image n: every tap's input channels, or zeros in
// the padding, in the layout's order.
template <typename T>
void fill_column_row(const Conv2dGeometry& g, const ColumnLayout& cl, const Taps& t, const T* x,
                     int64_t n, int64_t oy, int64_t ox, T* col) {
  const int64_t taps = g.kh * g.kw;
  // A few input channels (a 4-channel stem), tap-major, one group, undilated, the row's taps all
  // inside the image: each kernel row's taps read neighbouring pixels, so they are one copy of
  // KW * Cin values instead of KW copies too short to stream. Wider inputs' per-tap copies are
  // long enough already.
  const bool row_runs = g.cin < 16 && !cl.weight_order && g.groups == 1 && g.dilation == 1 &&
                        t.x[ox * g.kw] >= 0 && t.x[ox * g.kw + g.kw - 1] >= 0;
  for (int64_t gi = 0; gi < g.groups; ++gi)
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = t.y[oy * g.kh + ky];
      if (row_runs) {
        T* dst = col + ky * g.kw * g.cin;
        if (iy < 0) std::fill(dst, dst + g.kw * g.cin, T(0));
        else std::copy_n(x + ((n * g.h + iy) * g.w + t.x[ox * g.kw]) * g.cin, g.kw * g.cin, dst);
        continue;
      }
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t ix = t.x[ox * g.kw + kx], tap = ky * g.kw + kx;
        const T* src = iy < 0 || ix < 0 ? nullptr : x + ((n * g.h + iy) * g.w + ix) * g.cin + gi * cl.cin_g;
        if (cl.weight_order) {
          T* dst = col + gi * cl.group_cols + tap;  // channel ci at dst[ci * taps]
          if (src) for (int64_t ci = 0; ci < cl.cin_g; ++ci) dst[ci * taps] = src[ci];
          else for (int64_t ci = 0; ci < cl.cin_g; ++ci) dst[ci * taps] = T(0);
        } else {
          T* dst = col + gi * cl.group_cols + tap * cl.cin_g;
          if (src) std::copy_n(src, cl.cin_g, dst);
          else std::fill(dst, dst + cl.cin_g, T(0));
        }
      }
    }
}

// cols[(r - r0) * OW + ox, :] for the output rows r = n * OH + oy in [r0, r1).
template <typename T>
void im2col_rows(const Conv2dGeometry& g, const ColumnLayout& cl, const Taps& t, const T* x, int64_t r0,
                 int64_t r1, T* cols) {
#pragma omp parallel for schedule(static) if ((r1 - r0) * g.ow * cl.cols > kParallelWork)
  for (int64_t row = r0; row < r1; ++row)
    for (int64_t ox = 0; ox < g.ow; ++ox)
      fill_column_row(g, cl, t, x, row / g.oh, row % g.oh, ox, cols + ((row - r0) * g.ow + ox) * cl.cols);
}

// grad_x[n, iy, ix, :] = sum of the column entries that im2col copied from there, for images
// [n0, n1). Gathering per input pixel (instead of scattering columns) needs no atomics.
template <typename T>
void col2im(const Conv2dGeometry& g, const ColumnLayout& cl, const Taps& back, const T* cols,
            int64_t n0, int64_t n1, T* grad_x) {
#pragma omp parallel for schedule(static) if ((n1 - n0) * g.oh * g.ow * cl.cols > kParallelWork)
  for (int64_t row = 0; row < (n1 - n0) * g.h; ++row) {
    const int64_t n = n0 + row / g.h, iy = row % g.h;
    const T* image_cols = cols + (n - n0) * g.oh * g.ow * cl.cols;
    for (int64_t ix = 0; ix < g.w; ++ix) {
      T* dst = grad_x + ((n * g.h + iy) * g.w + ix) * g.cin;
      std::fill(dst, dst + g.cin, T(0));
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t oy = back.y[iy * g.kh + ky];
        if (oy < 0) continue;
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const int64_t ox = back.x[ix * g.kw + kx];
          if (ox < 0) continue;
          const T* src = image_cols + (oy * g.ow + ox) * cl.cols + (ky * g.kw + kx) * cl.cin_g;
          for (int64_t gi = 0; gi < g.groups; ++gi) {
            const T* s = src + gi * cl.group_cols;
            T* d = dst + gi * cl.cin_g;
#pragma omp simd
            for (int64_t ci = 0; ci < cl.cin_g; ++ci) d[ci] += s[ci];
          }
        }
      }
    }
  }
}

struct ColumnMatrix {};

// The calling thread's column matrix, kept from one conv to the next: its size changes from conv
// to conv by tens of MB, which a fresh tensor each time would have the block cache map (and the
// kernel zero) again.
template <typename T>
T* column_buffer(int64_t numel) {
  return thread_buffer<ColumnMatrix, T>().reserve(numel);
}

// Runs step(n0, n1, rows, cols) per chunk of images, cols pointing at their column matrix
// (built by im2col when `fill_columns`, else scratch for the caller to fill).
template <typename T, typename Step>
void for_each_chunk(const Conv2dGeometry& g, const ColumnLayout& cl, const T* x, bool fill_columns,
                    Step&& step) {
  const int64_t pixels = g.oh * g.ow;
  T* buffer = cl.identity ? nullptr : column_buffer<T>(cl.images_per_chunk * pixels * cl.cols);
  const Taps t = forward_taps(g);
  for (int64_t n0 = 0; n0 < g.n; n0 += cl.images_per_chunk) {
    const int64_t n1 = std::min(g.n, n0 + cl.images_per_chunk);
    T* cols = cl.identity ? const_cast<T*>(x) + n0 * pixels * g.cin : buffer;
    if (fill_columns && !cl.identity) im2col_rows(g, cl, t, x, n0 * g.oh, n1 * g.oh, cols);
    step(n0, n1, (n1 - n0) * pixels, cols);
  }
}

// Column floats the forward writes and multiplies at a time: about a core's L2 cache, so that the
// GEMM reads them from there rather than from memory (a ResNet stem's columns are 7 MB an image).
constexpr int64_t kCachedColumns = int64_t(1) << 18;

// Runs step(first_pixel, pixels, cols) per block of output rows (whole rows of one or more
// images, at least one row), cols holding their column matrix.
template <typename T, typename Step>
void for_each_cached_block(const Conv2dGeometry& g, const ColumnLayout& cl, const T* x, Step&& step) {
  const int64_t rows = g.n * g.oh, row_floats = g.ow * cl.cols;
  const int64_t rows_per_block = std::clamp<int64_t>(kCachedColumns / row_floats, 1, rows);
  T* cols = column_buffer<T>(rows_per_block * row_floats);
  const Taps t = forward_taps(g);
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_block) {
    const int64_t r1 = std::min(rows, r0 + rows_per_block);
    im2col_rows(g, cl, t, x, r0, r1, cols);
    step(r0 * g.ow, (r1 - r0) * g.ow, cols);
  }
}

// The weights as rows of the column matrix's order: tap-major ones transposed into a tensor
// (the block cache: a fresh std::vector of a 3x3 conv's 6 MB spent more time faulting its pages
// in than transposing). In weight order, or for a 1x1 kernel, they are used in place.
template <typename T>
class WeightRows {
 public:
  WeightRows(const T* w, const Conv2dGeometry& g, const ColumnLayout& cl) : data_(w) {
    if (!w || g.kh * g.kw == 1 || cl.weight_order) return;
    T* rows = scratch<T>(holder_, g.cout * cl.group_cols);
    batched_transpose(w, g.cout, cl.cin_g, g.kh * g.kw, rows);
    data_ = rows;
  }
  const T* data() const { return data_; }

 private:
  const T* data_;
  Tensor holder_;
};

// Tap-major columns whose taps are whole runs of 16 channels can be read by sgemm straight from
// the input (ImplicitColumns): no column matrix is written, and the packing reads the input once.
bool reads_implicit_columns(const ColumnLayout& cl) {
  return kHaveSgemm && !cl.identity && !cl.weight_order && cl.cin_g % 16 == 0;
}

// ---- frozen weights -------------------------------------------------------------------------
// A conv's weights as each group's GEMM reads them, packed by sgemm (pack_b).
using PackedGroups = std::vector<std::shared_ptr<const PackedB>>;

const PackedB* packed_group(const PackedGroups* packed, int64_t gi) { return packed ? (*packed)[gi].get() : nullptr; }

// A group's GEMM of the forward as far as packing its weights (rows, or null) goes: the shapes,
// the bf16 math, and whether op(A) is read as implicit columns (its depth blocks then start at
// multiples of 16), not the columns themselves.
GemmProblem<float> weight_problem(const Conv2dGeometry& g, const ColumnLayout& cl, const float* rows) {
  static const ImplicitColumns kSomeColumns{};
  return slice_problem<float>(g, nullptr, 0, false, rows, cl.group_cols, true, nullptr, g.cout, 1, cl.cout_g,
                              cl.group_cols, false, reads_implicit_columns(cl) ? &kSomeColumns : nullptr);
}

// The weights of convs whose storage is frozen (Module::freeze_parameters: a model loaded for
// inference), packed once for the GEMM paths instead of on every forward by every thread of the
// team; with bf16 products the copy takes half the weights' bytes. Packed once, they need no
// weight order: their columns are tap-major at every input size, which the GEMM reads from the
// input itself where the channels come in runs of 16 (no column matrix). An entry serves while
// its storage lives (a weak_ptr tells a reused address from the same weights) and the CPU's
// bf16 math is the one it was packed for.
class FrozenWeights {
 public:
  // w's packed groups, made by pack() where no entry serves.
  template <typename Pack>
  std::shared_ptr<const PackedGroups> get(const std::shared_ptr<Storage>& storage, const float* w,
                                          const Conv2dGeometry& g, const ColumnLayout& cl, Pack&& pack) {
    const GemmProblem<float> first_group = weight_problem(g, cl, nullptr);
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase_if(entries_, [&](const Entry& e) {
      return e.storage.expired() ||
             (e.w == w && !(e.storage.lock() == storage && packed_b_fits(*e.packed->front(), first_group)));
    });
    for (const Entry& e : entries_)
      if (e.w == w) return e.packed;
    entries_.push_back({storage, w, std::make_shared<const PackedGroups>(pack())});
    return entries_.back().packed;
  }

 private:
  // The shapes and the bf16 math are the packed B's own (packed_b_fits).
  struct Entry {
    std::weak_ptr<Storage> storage;
    const float* w;
    std::shared_ptr<const PackedGroups> packed;
  };

  std::mutex mutex_;
  std::vector<Entry> entries_;
};

FrozenWeights& frozen_weights() {
  static FrozenWeights* cache = new FrozenWeights;  // never destroyed: tensors may outlive statics
  return *cache;
}

// What the forward keeps of float32 weights whose storage is frozen: the GEMM paths' packed
// groups, and the storage, which lets the Winograd path's transformed weights serve unchecked.
struct FrozenForward {
  std::shared_ptr<const PackedGroups> packed;
  std::shared_ptr<Storage> storage;
};

// The packed groups of w where its storage is frozen and the forward runs a GEMM on it, else null.
std::shared_ptr<const PackedGroups> frozen_packed_weights(const Conv2dGeometry& g, const Tensor& w) {
  if constexpr (!kHaveSgemm) {
    return nullptr;  // no sgemm to pack for
  } else {
    if (g.depthwise() || winograd_applies(g)) return nullptr;
    const ColumnLayout cl = column_layout(g, false);
    const float* wp = w.data<float>();
    return frozen_weights().get(w.impl().storage, wp, g, cl, [&] {
      const WeightRows<float> rows(wp, g, cl);
      PackedGroups packed;
      for (int64_t gi = 0; gi < g.groups; ++gi)
        packed.push_back(pack_b(weight_problem(g, cl, rows.data() + gi * cl.cout_g * cl.group_cols)));
      return packed;
    });
  }
}

FrozenForward frozen_forward(const Conv2dGeometry& g, const Tensor& w) {
  if (!w.impl().storage->frozen || w.dtype() != DType::f32) return {};
  return {frozen_packed_weights(g, w), w.impl().storage};
}

void conv_forward_implicit(const Conv2dGeometry& g, const ColumnLayout& cl, const float* x, const float* wt,
                           float* out, const Epilogue<float>& e, const PackedGroups* packed) {
  for (int64_t gi = 0; gi < g.groups; ++gi) {
    const ImplicitColumns columns{x + gi * cl.cin_g, g.h,       g.w,      g.cin,     g.oh,     g.ow,
                                  g.kw,              cl.cin_g, g.stride, g.padding, g.dilation};
    // out[pixels, cout_g] = columns[pixels, group_cols] x wt[cout_g, group_cols]^T
    gemm_slices<float>(g, nullptr, 0, false, wt + gi * cl.cout_g * cl.group_cols, cl.group_cols, true,
                       out + gi * cl.cout_g, g.cout, g.n * g.oh * g.ow, cl.cout_g, cl.group_cols, false, &columns,
                       e.columns_from(gi * cl.cout_g), packed_group(packed, gi));
  }
}

// frozen: what is kept of frozen weights (with packed groups, their rows are not read).
template <typename T>
void conv_forward(const Conv2dGeometry& g, const T* x, const T* w, T* out, const Epilogue<T>& e = {},
                  const FrozenForward& frozen = {}) {
  if constexpr (std::is_same_v<T, float>) {
    if (winograd_applies(g)) {
      return winograd_conv_forward(g, x, w, out, frozen.storage, e);
    }
  }
  const PackedGroups* packed = frozen.packed.get();
  const ColumnLayout cl = column_layout(g, !packed);
  const WeightRows<T> wt(packed ? nullptr : w, g, cl);
  if constexpr (std::is_same_v<T, float>) {
    if (reads_implicit_columns(cl)) return conv_forward_implicit(g, cl, x, wt.data(), out, e, packed);
  }
  auto multiply = [&](int64_t first_pixel, int64_t rows, const T* cols) {
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      // out[rows, cout_g] = cols[rows, group_cols] x wt[cout_g, group_cols]^T
      gemm_slices(g, cols + gi * cl.group_cols, cl.cols, false,
                  wt.data() + gi * cl.cout_g * cl.group_cols, cl.group_cols, true,
                  out + first_pixel * g.cout + gi * cl.cout_g, g.cout, rows, cl.cout_g,
                  cl.group_cols, false, nullptr, e.columns_from(gi * cl.cout_g), packed_group(packed, gi));
    }
  };
  if (cl.identity) return multiply(0, g.n * g.oh * g.ow, x);
  // Few columns a pixel (a stem's 3 or 4 channels x 49 taps): the GEMM does little with each
  // column float, so their trip through memory would be most of its time. With more, its work
  // hides the trip, and blocks of a few rows would repack the weights (or A) for each.
  if (cl.cols < 256) return for_each_cached_block(g, cl, x, multiply);
  for_each_chunk<T>(g, cl, x, true,
                    [&](int64_t n0, int64_t, int64_t rows, T* cols) { multiply(n0 * g.oh * g.ow, rows, cols); });
}

struct TurnedWeights {};

template <typename T>
void conv_backward_input(const Conv2dGeometry& g, const T* grad_out, const T* w, T* grad_x) {
  if (input_gradient_is_a_conv(g)) {
    T* turned = thread_buffer<TurnedWeights, T>().reserve(g.cout * g.cin * g.kh * g.kw);
    turn_weights(g, w, turned);
    const Conv2dGeometry t = input_gradient_geometry(g);
    if constexpr (std::is_same_v<T, float>) {
      if (winograd_applies(t)) return winograd_conv_forward_once(t, grad_out, turned, grad_x);
    }
    return conv_forward(t, grad_out, static_cast<const T*>(turned), grad_x);
  }
  const ColumnLayout cl = column_layout(g, false);
  const WeightRows<T> wt(w, g, cl);
  const Taps back = backward_taps(g);
  // With the identity layout the column matrix is grad_x itself and col2im is nothing.
  for_each_chunk<T>(g, cl, grad_x, false, [&](int64_t n0, int64_t n1, int64_t rows, T* cols) {
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      // cols[rows, group_cols] = grad_out[rows, cout_g] x wt[cout_g, group_cols]
      gemm_slices(g, grad_out + n0 * g.oh * g.ow * g.cout + gi * cl.cout_g, g.cout, false,
                  wt.data() + gi * cl.cout_g * cl.group_cols, cl.group_cols, false,
                  cols + gi * cl.group_cols, cl.cols, rows, cl.group_cols, cl.cout_g, false);
    }
    if (!cl.identity) col2im(g, cl, back, cols, n0, n1, grad_x);
  });
}

// grad_w = grad_out^T x cols per group. The depth of that product (pixels) is huge and the
// result small: each thread multiplies its own slice of rows with a serial GEMM instead of
// running a parallel GEMM, whose threads would share the work at every depth block.
template <typename T>
void conv_backward_weight(const Conv2dGeometry& g, const T* x, const T* grad_out, T* grad_w) {
  const ColumnLayout cl = column_layout(g, true);
  ThreadPartials<T> partials(g.cout * cl.group_cols);
  for_each_chunk<T>(g, cl, x, true, [&](int64_t n0, int64_t, int64_t rows, T* cols) {
#pragma omp parallel if (rows * g.cout * cl.group_cols > kParallelWork)
    {
      const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
      T* mine = partials.mine();
      const T* go_rows = grad_out + (n0 * g.oh * g.ow + r0) * g.cout;
      for (int64_t gi = 0; gi < g.groups && r1 > r0; ++gi) {
        // mine[cout_g, group_cols] += grad_out[r0:r1, cout_g]^T x cols[r0:r1, group_cols]
        gemm_slices(g, go_rows + gi * cl.cout_g, g.cout, true, cols + r0 * cl.cols + gi * cl.group_cols,
                    cl.cols, false, mine + gi * cl.cout_g * cl.group_cols, cl.group_cols, cl.cout_g,
                    cl.group_cols, r1 - r0, true);
      }
    }
  });
  if (g.kh * g.kw == 1 || cl.weight_order) return partials.sum_into(grad_w);  // PyTorch's layout
  Tensor holder;
  T* grad_wt = scratch<T>(holder, g.cout * cl.group_cols);
  partials.sum_into(grad_wt);
  batched_transpose(grad_wt, g.cout, g.kh * g.kw, cl.cin_g, grad_w);
}

// ---- depthwise entry points (weights [C, 1, KH, KW] <-> channels-last taps [KH, KW, C]) ----
template <typename T>
std::vector<T> depthwise_taps(const T* w, const Conv2dGeometry& g) {
  std::vector<T> wt(g.kh * g.kw * g.cin);
  batched_transpose(w, 1, g.cin, g.kh * g.kw, wt.data());
  return wt;
}

// Float32 with stride 1, dilation 1 and a square kernel of a size depthwise_simd.cpp is built
// for: the register-tiled kernel there.
template <typename T>
bool has_simd_path(const Conv2dGeometry& g) {
  return std::is_same_v<T, float> && g.stride == 1 && g.dilation == 1 && g.kh == g.kw &&
         depthwise_simd_supports(g.kh);
}

template <typename T>
void depthwise_forward(const Conv2dGeometry& g, const T* x, const T* w, T* out) {
  const std::vector<T> taps = depthwise_taps(w, g);
  if constexpr (std::is_same_v<T, float> && kHaveDepthwiseSimd) {
    if (has_simd_path<T>(g))
      return depthwise_stride1(x, g.n, g.h, g.w, g.cin, taps.data(), g.kh, g.padding, out, g.oh, g.ow,
                               g.precision == Precision::bf16);
  }
  depthwise_gather(g, forward_taps(g), x, g.h, g.w, taps.data(), out, g.oh, g.ow);
}

// With stride 1 the input gradient is the same convolution of grad_out with the kernel turned
// by 180 degrees and padding k - 1 - padding.
template <typename T>
void depthwise_backward_input(const Conv2dGeometry& g, const T* grad_out, const T* w, T* grad_x) {
  const std::vector<T> taps = depthwise_taps(w, g);
  if constexpr (std::is_same_v<T, float> && kHaveDepthwiseSimd) {
    if (has_simd_path<T>(g)) {
      std::vector<T> turned(taps.size());
      for (int64_t t = 0; t < g.kh * g.kw; ++t)
        std::copy_n(taps.data() + (g.kh * g.kw - 1 - t) * g.cin, g.cin, turned.data() + t * g.cin);
      return depthwise_stride1(grad_out, g.n, g.oh, g.ow, g.cin, turned.data(), g.kh, g.kh - 1 - g.padding,
                               grad_x, g.h, g.w, g.precision == Precision::bf16);
    }
  }
  depthwise_gather(g, backward_taps(g), grad_out, g.oh, g.ow, taps.data(), grad_x, g.h, g.w);
}

template <typename T>
void depthwise_backward_weight(const Conv2dGeometry& g, const T* x, const T* grad_out, T* grad_w) {
  std::vector<T> grad_wt(g.kh * g.kw * g.cin);
  depthwise_weight_grad(g, x, grad_out, grad_wt.data());
  batched_transpose(grad_wt.data(), 1, g.kh * g.kw, g.cin, grad_w);
}

// x as a depthwise convolution's bf16 products read it: a float32 copy rounded to bfloat16.
// (The other convolutions' GEMMs round their operands as they pack them.)
Tensor depthwise_operand(const Conv2dGeometry& g, const Tensor& x) {
  if (!g.depthwise() || g.precision != Precision::bf16 || x.dtype() != DType::f32) return x;
  Tensor rounded = Tensor::empty(x.shape(), DType::f32, Device::cpu);
  const float* src = x.data<float>();
  float* dst = rounded.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) dst[i] = round_to_bf16(src[i]);
  return rounded;
}

// Whether the depthwise SIMD kernel takes this forward or input gradient: with bf16 products it
// rounds its input as it reads it (no rounded copy to write and read back).
bool simd_rounds_input(const Conv2dGeometry& g, DType dtype) {
  return dtype == DType::f32 && g.depthwise() && has_simd_path<float>(g);
}

// Calls kernel(a, b, out) with the three tensors' element pointers for their float type, the
// two operands as g's products read them (a as it is where `kernel_rounds_a`).
template <typename Kernel>
void with_pointers(const Conv2dGeometry& g, const Tensor& a, const Tensor& b, const Tensor& out, Kernel&& kernel,
                   bool kernel_rounds_a = false) {
  const Tensor a_read = kernel_rounds_a ? a : depthwise_operand(g, a), b_read = depthwise_operand(g, b);
  dispatch_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    kernel(a_read.data<T>(), b_read.data<T>(), out.data<T>());
  });
}

}  // namespace

void CpuBackend::conv2d_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                                const Tensor& out) {
  conv2d_bias_relu_forward(g, x, w, Tensor(), out, false);
}

void CpuBackend::conv2d_bias_relu_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                                          const Tensor& bias, const Tensor& out, bool relu) {
  const FrozenForward frozen = frozen_forward(g, w);
  with_pointers(g, x, w, out, [&](auto* xp, auto* wp, auto* op) {
    using T = std::remove_pointer_t<decltype(op)>;
    const Epilogue<T> e{bias.defined() ? bias.data<T>() : nullptr, relu};
    if (!g.depthwise()) return conv_forward(g, xp, wp, op, e, frozen);
    depthwise_forward(g, xp, wp, op);
    apply_epilogue(g, e, op);
  }, simd_rounds_input(g, x.dtype()));
}

void CpuBackend::conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out,
                                       const Tensor& w, const Tensor& grad_x) {
  with_pointers(g, grad_out, w, grad_x, [&](auto* gp, auto* wp, auto* op) {
    g.depthwise() ? depthwise_backward_input(g, gp, wp, op) : conv_backward_input(g, gp, wp, op);
  }, simd_rounds_input(g, grad_out.dtype()));
}

void CpuBackend::conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& x,
                                        const Tensor& grad_out, const Tensor& grad_w) {
  with_pointers(g, x, grad_out, grad_w, [&](auto* xp, auto* gp, auto* op) {
    g.depthwise() ? depthwise_backward_weight(g, xp, gp, op) : conv_backward_weight(g, xp, gp, op);
  });
}

}  // namespace sono::cpu
