// Softmax and log-softmax over the last dim of contiguous rows. The row max is subtracted
// before exp, so large logits never overflow.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "tensor/cpu/cpu_backend.h"

namespace sono::cpu {

namespace {

// e^x for x <= 0 (softmax only ever exponentiates x - max, log_softmax's backward log-probs).
// float32 uses Cody-Waite range reduction and Cephes' degree-6 polynomial: unlike std::exp it
// vectorises, and exp dominates softmax's time. Checked over every float in [-87.3, 0]: under
// 1 ulp from exp in double. float64 (gradient checks, goldens) keeps std::exp.
template <typename T>
T exp_nonpositive(T x) {
  if constexpr (std::is_same_v<T, double>) {
    return std::exp(x);
  } else {
    // n = round(x / ln2) by the 1.5 * 2^23 trick (std::floor would block vectorisation);
    // then x = n ln2 + r with |r| <= ln2 / 2.
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    for (float coeff : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
      p = p * r + coeff;
    const float er = p * r * r + r + 1.0f;
    const float two_n = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
    return x < -87.33654f ? 0.0f : er * two_n;  // below that, 2^n leaves the normal range
  }
}

int64_t row_count(const Tensor& t) {
  const int64_t c = t.size(-1);
  return c == 0 ? 0 : t.numel() / c;
}

template <typename T>
void softmax_rows(const Tensor& x, const Tensor& y, bool log) {
  const int64_t c = x.size(-1), rows = row_count(x);
  const T* xp = x.data<T>();
  T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (rows * c > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xp + r * c;
    T* yr = yp + r * c;
    T max = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : max)
    for (int64_t i = 0; i < c; ++i) max = xr[i] > max ? xr[i] : max;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) yr[i] = exp_nonpositive(xr[i] - max);
    double sum = 0;  // separate loop so that the sum vectorises
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < c; ++i) sum += yr[i];
    if (log) {
      const T shift = max + static_cast<T>(std::log(sum));
      for (int64_t i = 0; i < c; ++i) yr[i] = xr[i] - shift;
    } else {
      const T inv = static_cast<T>(1.0 / sum);
      for (int64_t i = 0; i < c; ++i) yr[i] *= inv;
    }
  }
}

// softmax:     dx = y * (dy - sum(dy * y))
// log_softmax: dx = dy - exp(y) * sum(dy)
template <typename T>
void softmax_grad_rows(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) {
  const int64_t c = y.size(-1), rows = row_count(y);
  const T *yp = y.data<T>(), *gyp = gy.data<T>();
  T* gxp = gx.data<T>();
#pragma omp parallel for schedule(static) if (rows * c > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = yp + r * c, *gr = gyp + r * c;
    T* out = gxp + r * c;
    double dot = 0;
    if (log) {
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < c; ++i) dot += gr[i];
    } else {
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < c; ++i) dot += gr[i] * yr[i];
    }
    const T s = static_cast<T>(dot);
    if (log) {
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) out[i] = gr[i] - exp_nonpositive(yr[i]) * s;
    } else {
      for (int64_t i = 0; i < c; ++i) out[i] = yr[i] * (gr[i] - s);
    }
  }
}

}  // namespace

void CpuBackend::softmax_forward(const Tensor& x, const Tensor& y, bool log) {
  dispatch_float(x.dtype(), [&](auto tag) { softmax_rows<decltype(tag)>(x, y, log); });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& grad_y, const Tensor& grad_x,
                                  bool log) {
  dispatch_float(y.dtype(), [&](auto tag) { softmax_grad_rows<decltype(tag)>(y, grad_y, grad_x, log); });
}

}  // namespace sono::cpu
