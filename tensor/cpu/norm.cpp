// LayerNorm over the last dim: one row of C values per position. Row sums are accumulated in
// double so float32 rows of a few thousand values lose nothing to cancellation.
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

template <typename T>
void layer_norm_rows(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Tensor& y,
                     const Tensor& mean, const Tensor& rstd) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  const T *xp = x.data<T>(), *wp = optional_data<T>(w), *bp = optional_data<T>(b);
  T *yp = y.data<T>(), *mp = mean.data<T>(), *rp = rstd.data<T>();
#pragma omp parallel for schedule(static) if (rows * c > 16384)
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

// One thread's grad_w and grad_b sums over its rows. Rows add into float sums, which go into
// double totals every kFlushRows rows: float adds keep the loop near the speed of grad_x alone
// (adding each row into double arrays made the backward 4x slower), and the double totals keep
// sums over many rows exact.
template <typename T>
class ParamGradSums {
 public:
  static constexpr int kFlushRows = 32;

  // total: this thread's [2 * C] doubles (grad_w sums, then grad_b sums).
  ParamGradSums(int64_t c, double* total) : c_(c), block_(2 * c, T(0)), total_(total) {}
  ~ParamGradSums() { flush(); }

  void add_row(const T* gy, const T* x, T mu, T inv) {
    T *bw = block_.data(), *bb = bw + c_;
#pragma omp simd
    for (int64_t i = 0; i < c_; ++i) {
      bw[i] += gy[i] * ((x[i] - mu) * inv);
      bb[i] += gy[i];
    }
    if (++rows_ == kFlushRows) flush();
  }

 private:
  void flush() {
    for (int64_t i = 0; i < 2 * c_; ++i) total_[i] += block_[i];
    std::fill(block_.begin(), block_.end(), T(0));
    rows_ = 0;
  }

  int64_t c_;
  std::vector<T> block_;
  double* total_;
  int rows_ = 0;
};

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
  const int threads = rows * c > 16384 ? omp_get_max_threads() : 1;
  std::vector<double> totals(want_wb ? threads * 2 * c : 0, 0.0);
#pragma omp parallel num_threads(threads)
  {
    std::optional<ParamGradSums<T>> sums;
    if (want_wb) sums.emplace(c, totals.data() + omp_get_thread_num() * 2 * c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T *xr = xp + r * c, *gr = gp + r * c;
      const T mu = mp[r], inv = rp[r];
      if (sums) sums->add_row(gr, xr, mu, inv);
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
  for (auto [out, half] : {std::pair{&grad_w, 0}, std::pair{&grad_b, 1}}) {
    if (!out->defined()) continue;
    T* op = out->template data<T>();
    for (int64_t i = 0; i < c; ++i) {
      double s = 0;
      for (int t = 0; t < threads; ++t) s += totals[(t * 2 + half) * c + i];
      op[i] = static_cast<T>(s);
    }
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

}  // namespace sono::cpu
