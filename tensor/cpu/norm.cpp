// LayerNorm over the last dim: one row of C values per position; BatchNorm over the rows: one
// column per channel. Sums are accumulated in double (LayerNorm's rows; BatchNorm's columns in
// float blocks flushed into double) so that float32 loses nothing to cancellation.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "tensor/cpu/cpu_backend.h"

namespace sono::cpu {

namespace {

// Weight and bias are optional (elementwise_affine=False): null pointers mean 1 and 0.
template <typename T>
const T* optional_data(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// Below this much work a loop runs on one thread: waking threads would cost more than it saves.
int norm_threads(int64_t rows, int64_t c) { return rows * c > 16384 ? omp_get_max_threads() : 1; }

template <typename T>
void layer_norm_rows(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Tensor& y,
                     const Tensor& mean, const Tensor& rstd) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  const T *xp = x.data<T>(), *wp = optional_data<T>(w), *bp = optional_data<T>(b);
  T *yp = y.data<T>(), *mp = mean.data<T>(), *rp = rstd.data<T>();
#pragma omp parallel for schedule(static) num_threads(norm_threads(rows, c))
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xp + r * c;
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < c; ++i) sum += xr[i];
    const double mu = sum / c;
    double sq = 0;  // two passes: the variance never goes negative
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < c; ++i) sq += (xr[i] - mu) * (xr[i] - mu);
    const double inv = 1.0 / std::sqrt(sq / c + eps);
    mp[r] = static_cast<T>(mu);
    rp[r] = static_cast<T>(inv);
    const T m = static_cast<T>(mu), s = static_cast<T>(inv);
    T* yr = yp + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) yr[i] = (xr[i] - m) * s * (wp ? wp[i] : T(1)) + (bp ? bp[i] : T(0));
  }
}

// One thread's per-column sums of k quantities over its rows. Rows add into a float block,
// which goes into double totals every kFlushRows rows: float adds keep the loop near the speed of
// a plain pass (adding each row into double arrays made LayerNorm's backward 4x slower), and the
// double totals keep sums over many rows exact.
template <typename T>
class ColumnSums {
 public:
  static constexpr int kFlushRows = 32;

  // total: this thread's [k * C] doubles.
  ColumnSums(int64_t c, int k, double* total) : block_(k * c, T(0)), total_(total) {}
  ~ColumnSums() { flush(); }

  T* block() { return block_.data(); }  // k runs of C: add one row's terms, then row_done()
  void row_done() {
    if (++rows_ == kFlushRows) flush();
  }

 private:
  void flush() {
    for (size_t i = 0; i < block_.size(); ++i) total_[i] += block_[i];
    std::fill(block_.begin(), block_.end(), T(0));
    rows_ = 0;
  }

  std::vector<T> block_;
  double* total_;
  int rows_ = 0;
};

// Each thread's [k * C] totals, then their sum in thread order: results do not depend on scheduling.
std::vector<double> combine_threads(const std::vector<double>& totals, int threads, size_t per_thread) {
  std::vector<double> sum(per_thread, 0.0);
  for (int t = 0; t < threads; ++t)
    for (size_t i = 0; i < per_thread; ++i) sum[i] += totals[t * per_thread + i];
  return sum;
}

// Per-column sums over rows of k quantities: add_row(r, block) adds row r's terms to block[0, k C).
template <typename T, typename AddRow>
std::vector<double> column_sums(int64_t rows, int64_t c, int k, AddRow add_row) {
  const int threads = norm_threads(rows, c);
  std::vector<double> totals(threads * k * c, 0.0);
#pragma omp parallel num_threads(threads)
  {
    ColumnSums<T> sums(c, k, totals.data() + omp_get_thread_num() * k * c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      add_row(r, sums.block());
      sums.row_done();
    }
  }
  return combine_threads(totals, threads, k * c);
}

// grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = grad_y * w, per row.
// grad_w = sum_rows grad_y * xhat and grad_b = sum_rows grad_y, summed per thread and then in
// thread order, so results do not depend on scheduling.
template <typename T>
void layer_norm_grads(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                      const Tensor& grad_y, const Tensor& grad_x, const Tensor& grad_w,
                      const Tensor& grad_b) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  const T *xp = x.data<T>(), *wp = optional_data<T>(w), *mp = mean.data<T>(),
          *rp = rstd.data<T>(), *gp = grad_y.data<T>();
  T* gxp = grad_x.defined() ? grad_x.data<T>() : nullptr;
  const bool want_wb = grad_w.defined() || grad_b.defined();
  const int threads = norm_threads(rows, c);
  std::vector<double> totals(want_wb ? threads * 2 * c : 0, 0.0);
#pragma omp parallel num_threads(threads)
  {
    std::optional<ColumnSums<T>> sums;
    if (want_wb) sums.emplace(c, 2, totals.data() + omp_get_thread_num() * 2 * c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T *xr = xp + r * c, *gr = gp + r * c;
      const T mu = mp[r], inv = rp[r];
      if (sums) {
        T *bw = sums->block(), *bb = bw + c;
#pragma omp simd
        for (int64_t i = 0; i < c; ++i) {
          bw[i] += gr[i] * ((xr[i] - mu) * inv);
          bb[i] += gr[i];
        }
        sums->row_done();
      }
      if (!gxp) continue;
      double sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t i = 0; i < c; ++i) {
        const T g = gr[i] * (wp ? wp[i] : T(1));
        sum_g += g;
        sum_gx += g * ((xr[i] - mu) * inv);
      }
      const T mean_g = static_cast<T>(sum_g / c), mean_gx = static_cast<T>(sum_gx / c);
      T* gxr = gxp + r * c;
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) {
        const T g = gr[i] * (wp ? wp[i] : T(1));
        gxr[i] = inv * (g - mean_g - (xr[i] - mu) * inv * mean_gx);
      }
    }
  }
  if (!want_wb) return;
  const std::vector<double> sum = combine_threads(totals, threads, 2 * c);
  for (auto [out, half] : {std::pair{&grad_w, 0}, std::pair{&grad_b, 1}})
    if (out->defined()) std::copy_n(sum.begin() + half * c, c, out->template data<T>());
}

// Writes n doubles into t's elements (float32 or float64, as T).
template <typename T>
void store(const Tensor& t, const double* values, int64_t n) {
  if (t.defined()) std::copy_n(values, n, t.data<T>());
}

// BatchNorm with batch statistics over x [rows, C]: the mean, then the centred squares (two
// passes: the variance never goes negative), then y = x scale + shift per channel.
template <typename T>
void batch_norm_rows(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Tensor& y,
                     const Tensor& mean, const Tensor& var, const Tensor& inv_std) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  const T *xp = x.data<T>(), *wp = optional_data<T>(w), *bp = optional_data<T>(b);
  std::vector<double> mu = column_sums<T>(rows, c, 1, [&](int64_t r, T* s) {
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) s[i] += xp[r * c + i];
  });
  for (double& m : mu) m /= static_cast<double>(rows);
  const std::vector<T> mu_t(mu.begin(), mu.end());
  std::vector<double> sq = column_sums<T>(rows, c, 1, [&](int64_t r, T* s) {
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) s[i] += (xp[r * c + i] - mu_t[i]) * (xp[r * c + i] - mu_t[i]);
  });
  std::vector<double> inv(c);
  std::vector<T> scale(c), shift(c);
  for (int64_t i = 0; i < c; ++i) {
    sq[i] /= static_cast<double>(rows);
    inv[i] = 1.0 / std::sqrt(sq[i] + eps);
    const double sc = inv[i] * (wp ? wp[i] : 1.0);
    scale[i] = static_cast<T>(sc);
    shift[i] = static_cast<T>((bp ? bp[i] : 0.0) - mu[i] * sc);
  }
  store<T>(mean, mu.data(), c);
  store<T>(var, sq.data(), c);
  store<T>(inv_std, inv.data(), c);
  T* yp = y.data<T>();
#pragma omp parallel for schedule(static) num_threads(norm_threads(rows, c))
  for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) yp[r * c + i] = xp[r * c + i] * scale[i] + shift[i];
}

// sum_dy = sum_rows grad_y (grad_b), sum_dy_xhat = sum_rows grad_y xhat (grad_w), then
// grad_x = w inv_std (grad_y - sum_dy / rows - xhat sum_dy_xhat / rows).
template <typename T>
void batch_norm_grads(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& inv_std,
                      const Tensor& grad_y, const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  const T *xp = x.data<T>(), *wp = optional_data<T>(w), *mp = mean.data<T>(), *ip = inv_std.data<T>(),
          *gp = grad_y.data<T>();
  const std::vector<double> sums = column_sums<T>(rows, c, 2, [&](int64_t r, T* s) {
    T* s_xhat = s + c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) {
      s[i] += gp[r * c + i];
      s_xhat[i] += gp[r * c + i] * ((xp[r * c + i] - mp[i]) * ip[i]);
    }
  });
  store<T>(grad_b, sums.data(), c);
  store<T>(grad_w, sums.data() + c, c);
  if (!grad_x.defined()) return;
  std::vector<T> scale(c), mean_dy(c), mean_dy_xhat(c);
  for (int64_t i = 0; i < c; ++i) {
    scale[i] = static_cast<T>((wp ? wp[i] : 1.0) * ip[i]);
    mean_dy[i] = static_cast<T>(sums[i] / static_cast<double>(rows));
    mean_dy_xhat[i] = static_cast<T>(sums[c + i] / static_cast<double>(rows));
  }
  T* gxp = grad_x.data<T>();
#pragma omp parallel for schedule(static) num_threads(norm_threads(rows, c))
  for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) {
      const T xhat = (xp[r * c + i] - mp[i]) * ip[i];
      gxp[r * c + i] = scale[i] * (gp[r * c + i] - mean_dy[i] - xhat * mean_dy_xhat[i]);
    }
}

}  // namespace

void CpuBackend::layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                                    const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  dispatch_float(x.dtype(), [&](auto tag) {
    layer_norm_rows<decltype(tag)>(x, w, b, eps, y, mean, rstd);
  });
}

void CpuBackend::layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                                     const Tensor& rstd, const Tensor& grad_y,
                                     const Tensor& grad_x, const Tensor& grad_w,
                                     const Tensor& grad_b) {
  dispatch_float(x.dtype(), [&](auto tag) {
    layer_norm_grads<decltype(tag)>(x, w, mean, rstd, grad_y, grad_x, grad_w, grad_b);
  });
}

void CpuBackend::channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift,
                                const Tensor& y) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
    const T *xp = x.data<T>(), *sp = scale.data<T>(), *tp = shift.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for schedule(static) num_threads(norm_threads(rows, c))
    for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) yp[r * c + i] = xp[r * c + i] * sp[i] + tp[i];
    }
  });
}

void CpuBackend::batch_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                                    const Tensor& y, const Tensor& mean, const Tensor& var,
                                    const Tensor& inv_std) {
  dispatch_float(x.dtype(), [&](auto tag) {
    batch_norm_rows<decltype(tag)>(x, w, b, eps, y, mean, var, inv_std);
  });
}

void CpuBackend::batch_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                                     const Tensor& inv_std, const Tensor& grad_y,
                                     const Tensor& grad_x, const Tensor& grad_w,
                                     const Tensor& grad_b) {
  dispatch_float(x.dtype(), [&](auto tag) {
    batch_norm_grads<decltype(tag)>(x, w, mean, inv_std, grad_y, grad_x, grad_w, grad_b);
  });
}

}  // namespace sono::cpu
