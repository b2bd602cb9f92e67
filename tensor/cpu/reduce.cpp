#include <algorithm>
#include <limits>
#include <vector>

#include <omp.h>

#include "tensor/cpu/cpu_backend.h"

namespace sono::cpu {

namespace {

// Splits x's dims into kept (size in out == size in x) and reduced (size 1 in out).
struct ReducePlan {
  Shape kept_sizes, kept_strides, red_sizes, red_strides;
  int64_t red_count = 1;
};

ReducePlan plan(const Tensor& x, const Tensor& out) {
  ReducePlan p;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (out.shape()[d] == 1 && x.shape()[d] != 1) {
      p.red_sizes.push_back(x.shape()[d]);
      p.red_strides.push_back(x.strides()[d]);
      p.red_count *= x.shape()[d];
    } else {
      p.kept_sizes.push_back(x.shape()[d]);
      p.kept_strides.push_back(x.strides()[d]);
    }
  }
  return p;
}

int64_t offset_of(int64_t flat, const Shape& sizes, const Shape& strides) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    off += (flat % sizes[d]) * strides[d];
    flat /= sizes[d];
  }
  return off;
}

template <typename T, typename Combine>
void reduce_generic(const T* x, T* out, int64_t out_numel, const ReducePlan& p, T init,
                    Combine combine) {
#pragma omp parallel for schedule(static) if (out_numel * p.red_count > 32768)
  for (int64_t o = 0; o < out_numel; ++o) {
    const T* base = x + offset_of(o, p.kept_sizes, p.kept_strides);
    double acc = init;
    for (int64_t r = 0; r < p.red_count; ++r)
      acc = combine(acc, static_cast<double>(base[offset_of(r, p.red_sizes, p.red_strides)]));
    out[o] = static_cast<T>(acc);
  }
}

// Folds reduced rows [r0, r1) of length c, starting at base, into acc.
template <typename T, typename Combine>
void fold_rows(const T* base, const ReducePlan& p, int64_t r0, int64_t r1, int64_t c, double* acc,
               Combine combine) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = base + offset_of(r, p.red_sizes, p.red_strides);
    for (int64_t i = 0; i < c; ++i) acc[i] = combine(acc[i], static_cast<double>(row[i]));
  }
}

// The last dim (contiguous) is kept: accumulate whole rows of length C, as for NHWC statistics.
// With fewer outputs rows than threads (a bias gradient, [M, C] -> [C]) each output's reduced
// rows are split between threads as well, and the partial results folded in a fixed order.
template <typename T, typename Combine>
void reduce_rows(const T* x, T* out, const ReducePlan& p, T init, Combine combine) {
  const int64_t c = p.kept_sizes.back();
  Shape outer_sizes(p.kept_sizes.begin(), p.kept_sizes.end() - 1);
  Shape outer_strides(p.kept_strides.begin(), p.kept_strides.end() - 1);
  const int64_t outer = shape_numel(outer_sizes);
  const bool big = outer * p.red_count * c > 32768;
  const int64_t splits = big ? std::clamp<int64_t>(omp_get_max_threads() / outer, 1, p.red_count) : 1;
  std::vector<double> partial(outer * splits * c, init);
#pragma omp parallel for schedule(static) if (big && outer * splits > 1)
  for (int64_t task = 0; task < outer * splits; ++task) {
    const int64_t o = task / splits, part = task % splits;
    fold_rows(x + offset_of(o, outer_sizes, outer_strides), p, p.red_count * part / splits,
              p.red_count * (part + 1) / splits, c, partial.data() + task * c, combine);
  }
  for (int64_t o = 0; o < outer; ++o) {
    double* acc = partial.data() + o * splits * c;
    for (int64_t part = 1; part < splits; ++part)
      for (int64_t i = 0; i < c; ++i) acc[i] = combine(acc[i], acc[part * c + i]);
    for (int64_t i = 0; i < c; ++i) out[o * c + i] = static_cast<T>(acc[i]);
  }
}

}  // namespace

void CpuBackend::reduce(ReduceOp op, const Tensor& x, const Tensor& out) {
  ReducePlan p = plan(x, out);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const double init = op == ReduceOp::sum ? 0.0 : -std::numeric_limits<double>::infinity();
    auto run = [&](auto combine) {
      bool last_kept = !p.kept_sizes.empty() && x.dim() > 0 && out.shape().back() == x.shape().back() &&
                       p.kept_strides.back() == 1 && !p.red_sizes.empty();
      if (last_kept) reduce_rows<T>(x.data<T>(), out.data<T>(), p, T(init), combine);
      else reduce_generic<T>(x.data<T>(), out.data<T>(), out.numel(), p, T(init), combine);
    };
    if (op == ReduceOp::sum) run([](double a, double v) { return a + v; });
    else run([](double a, double v) { return std::max(a, v); });
  });
}

}  // namespace sono::cpu
