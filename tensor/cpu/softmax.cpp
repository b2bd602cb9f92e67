// Softmax and log-softmax over the last dim of contiguous rows. The row max is subtracted
// before exp, so large logits never overflow.
#include <algorithm>
#include <cmath>

#include "tensor/cpu/cpu_backend.h"

namespace sono::cpu {

namespace {

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
    const T max = *std::max_element(xr, xr + c);
    double sum = 0;
    for (int64_t i = 0; i < c; ++i) {
      yr[i] = std::exp(xr[i] - max);
      sum += yr[i];
    }
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
    for (int64_t i = 0; i < c; ++i) dot += log ? gr[i] : gr[i] * yr[i];
    const T s = static_cast<T>(dot);
    if (log) {
      for (int64_t i = 0; i < c; ++i) out[i] = gr[i] - std::exp(yr[i]) * s;
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
