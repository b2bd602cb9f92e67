// Max pooling of NHWC images (F.max_pool2d), forward with the argmax the backward gathers by:
// each output pixel's window, and each input pixel's windows, walked with the channels innermost.
#include <algorithm>
#include <cmath>
#include <limits>

#include "tensor/cpu/cpu_backend.h"

namespace sono::cpu {

namespace {

// Below this many elements a pass runs on one thread.
constexpr int64_t kParallelWork = int64_t(1) << 15;

struct PoolShape {
  int64_t n, h, w, c, oh, ow, kernel, stride, padding;
};

// The window of output row (or column) o: input rows [first, last) inside the image.
struct Span {
  int64_t first, last;
};
Span window(int64_t o, int64_t size, const PoolShape& s) {
  const int64_t start = o * s.stride - s.padding;
  return {std::max<int64_t>(start, 0), std::min(start + s.kernel, size)};
}
// The output rows whose windows hold input row i: [first, last).
Span readers(int64_t i, int64_t out, const PoolShape& s) {
  const int64_t reach = i + s.padding - (s.kernel - 1);  // the first start that still covers i
  const int64_t first = reach <= 0 ? 0 : (reach + s.stride - 1) / s.stride;
  return {first, std::min((i + s.padding) / s.stride + 1, out)};
}

// kArgmax: argmax is written (else it is null).
template <typename T, bool kArgmax>
void max_pool_forward(const T* x, T* y, int64_t* argmax, const PoolShape& s) {
#pragma omp parallel for schedule(static) if (s.n * s.oh * s.ow * s.c > kParallelWork)
  for (int64_t row = 0; row < s.n * s.oh; ++row) {
    const int64_t image = row / s.oh;
    const Span sy = window(row % s.oh, s.h, s);
    for (int64_t ox = 0; ox < s.ow; ++ox) {
      const Span sx = window(ox, s.w, s);
      T* best = y + (row * s.ow + ox) * s.c;
      int64_t* at = kArgmax ? argmax + (row * s.ow + ox) * s.c : nullptr;
      std::fill_n(best, s.c, -std::numeric_limits<T>::infinity());
      if constexpr (kArgmax) std::fill_n(at, s.c, sy.first * s.w + sx.first);
      for (int64_t iy = sy.first; iy < sy.last; ++iy)
        for (int64_t ix = sx.first; ix < sx.last; ++ix) {
          const T* v = x + ((image * s.h + iy) * s.w + ix) * s.c;
          const int64_t pixel = iy * s.w + ix;
#pragma omp simd
          for (int64_t ch = 0; ch < s.c; ++ch) {
            const bool wins = v[ch] > best[ch] || std::isnan(v[ch]);
            best[ch] = wins ? v[ch] : best[ch];
            if constexpr (kArgmax) at[ch] = wins ? pixel : at[ch];
          }
        }
    }
  }
}

template <typename T>
void max_pool_backward(const T* grad_y, const int64_t* argmax, T* grad_x, const PoolShape& s) {
#pragma omp parallel for schedule(static) if (s.n * s.h * s.w * s.c > kParallelWork)
  for (int64_t row = 0; row < s.n * s.h; ++row) {
    const int64_t image = row / s.h, iy = row % s.h;
    const Span oy = readers(iy, s.oh, s);
    for (int64_t ix = 0; ix < s.w; ++ix) {
      const Span ox = readers(ix, s.ow, s);
      const int64_t pixel = iy * s.w + ix;
      T* dst = grad_x + (row * s.w + ix) * s.c;
      std::fill_n(dst, s.c, T(0));
      for (int64_t out_y = oy.first; out_y < oy.last; ++out_y)
        for (int64_t out_x = ox.first; out_x < ox.last; ++out_x) {
          const int64_t out = ((image * s.oh + out_y) * s.ow + out_x) * s.c;
#pragma omp simd
          for (int64_t ch = 0; ch < s.c; ++ch)
            dst[ch] += argmax[out + ch] == pixel ? grad_y[out + ch] : T(0);
        }
    }
  }
}

PoolShape pool_shape(const Tensor& in, const Tensor& out, int64_t kernel, int64_t stride,
                     int64_t padding) {
  return {in.size(0), in.size(1), in.size(2), in.size(3), out.size(1), out.size(2),
          kernel,     stride,     padding};
}

}  // namespace

void CpuBackend::max_pool2d_forward(const Tensor& x, int64_t kernel, int64_t stride,
                                    int64_t padding, const Tensor& y, const Tensor& argmax) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const PoolShape s = pool_shape(x, y, kernel, stride, padding);
    if (argmax.defined()) max_pool_forward<T, true>(x.data<T>(), y.data<T>(), argmax.data<int64_t>(), s);
    else max_pool_forward<T, false>(x.data<T>(), y.data<T>(), nullptr, s);
  });
}

void CpuBackend::max_pool2d_backward(const Tensor& grad_y, const Tensor& argmax, int64_t kernel,
                                     int64_t stride, int64_t padding, const Tensor& grad_x) {
  dispatch_float(grad_y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    max_pool_backward(grad_y.data<T>(), argmax.data<int64_t>(), grad_x.data<T>(),
                      pool_shape(grad_x, grad_y, kernel, stride, padding));
  });
}

}  // namespace sono::cpu
