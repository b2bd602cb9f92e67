// LayerNorm over the last dim: one row of C values per position. Row sums are accumulated in
// double so float32 rows of a few thousand values lose nothing to cancellation.
#include <omp.h>

#include <cmath>
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
  std::vector<double> partial_w(want_wb ? threads * c : 0), partial_b(want_wb ? threads * c : 0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    double* pw = want_wb ? partial_w.data() + t * c : nullptr;
    double* pb = want_wb ? partial_b.data() + t * c : nullptr;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T *xr = xp + r * c, *gr = gp + r * c;
      const T mu = mp[r], inv = rp[r];
      if (pw) {
#pragma omp simd
        for (int64_t i = 0; i < c; ++i) {
          pw[i] += gr[i] * ((xr[i] - mu) * inv);
          pb[i] += gr[i];
        }
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
  auto reduce_partials = [&](const std::vector<double>& partial, const Tensor& out) {
    if (!out.defined()) return;
    T* op = out.data<T>();
    for (int64_t i = 0; i < c; ++i) {
      double s = 0;
      for (int t = 0; t < threads; ++t) s += partial[t * c + i];
      op[i] = static_cast<T>(s);
    }
  };
  reduce_partials(partial_w, grad_w);
  reduce_partials(partial_b, grad_b);
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
