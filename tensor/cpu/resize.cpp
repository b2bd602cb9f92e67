// Bilinear resize of NHWC images with PyTorch's F.interpolate(mode="bilinear") semantics, the
// output size given (no scale_factor): per axis, align_corners=True maps output o to input
// o * (in - 1) / (out - 1); align_corners=False maps it to (o + 0.5) * in / out - 0.5, clamped
// at 0 (upsample_bilinear2d's area_pixel_compute_source_index).
#include <algorithm>
#include <vector>

#include "tensor/cpu/cpu_backend.h"

namespace sono::cpu {

namespace {

// Below this many output elements a pass runs on one thread: waking threads would cost more
// than it saves.
constexpr int64_t kParallelWork = int64_t(1) << 15;

// Output position o along one axis blends inputs i0 and i1 (i1 == i0 at the last input).
struct AxisTap {
  int64_t i0, i1;
  double w0, w1;
};

std::vector<AxisTap> axis_taps(int64_t in, int64_t out, bool align_corners) {
  const double scale = align_corners ? (out > 1 ? double(in - 1) / double(out - 1) : 0.0)
                                     : double(in) / double(out);
  std::vector<AxisTap> taps(out);
  for (int64_t o = 0; o < out; ++o) {
    const double src = align_corners ? scale * double(o) : std::max(scale * (double(o) + 0.5) - 0.5, 0.0);
    const int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);
    const double lambda = std::clamp(src - double(i0), 0.0, 1.0);
    taps[o] = {i0, i0 + (i0 < in - 1 ? 1 : 0), 1.0 - lambda, lambda};
  }
  return taps;
}

// The transpose of axis_taps: for each input position, the (output position, weight) pairs
// that read it, so the backward pass gathers per input row instead of scattering.
struct AxisReaders {
  std::vector<int64_t> begin;  // [in + 1] offsets into entries
  std::vector<std::pair<int64_t, double>> entries;
};

AxisReaders axis_readers(const std::vector<AxisTap>& taps, int64_t in) {
  std::vector<std::vector<std::pair<int64_t, double>>> per_input(in);
  for (int64_t o = 0; o < static_cast<int64_t>(taps.size()); ++o) {
    per_input[taps[o].i0].push_back({o, taps[o].w0});
    per_input[taps[o].i1].push_back({o, taps[o].w1});
  }
  AxisReaders r;
  r.begin.push_back(0);
  for (const auto& list : per_input) {
    r.entries.insert(r.entries.end(), list.begin(), list.end());
    r.begin.push_back(static_cast<int64_t>(r.entries.size()));
  }
  return r;
}

template <typename T>
void resize_forward(const T* x, T* y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh,
                    int64_t ow, bool align_corners) {
  const std::vector<AxisTap> ty = axis_taps(h, oh, align_corners), tx = axis_taps(w, ow, align_corners);
#pragma omp parallel for schedule(static) if (n * oh * ow * c > kParallelWork)
  for (int64_t row = 0; row < n * oh; ++row) {
    const AxisTap& ay = ty[row % oh];
    const T* image = x + row / oh * h * w * c;
    const T* top = image + ay.i0 * w * c;
    const T* bottom = image + ay.i1 * w * c;
    const T wy0 = T(ay.w0), wy1 = T(ay.w1);
    for (int64_t ox = 0; ox < ow; ++ox) {
      const AxisTap& ax = tx[ox];
      const T wx0 = T(ax.w0), wx1 = T(ax.w1);
      const T *a = top + ax.i0 * c, *b = top + ax.i1 * c, *p = bottom + ax.i0 * c, *q = bottom + ax.i1 * c;
      T* dst = y + (row * ow + ox) * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) dst[ch] = wy0 * (wx0 * a[ch] + wx1 * b[ch]) + wy1 * (wx0 * p[ch] + wx1 * q[ch]);
    }
  }
}

template <typename T>
void resize_backward(const T* grad_y, T* grad_x, int64_t n, int64_t h, int64_t w, int64_t c,
                     int64_t oh, int64_t ow, bool align_corners) {
  const AxisReaders ry = axis_readers(axis_taps(h, oh, align_corners), h);
  const AxisReaders rx = axis_readers(axis_taps(w, ow, align_corners), w);
#pragma omp parallel for schedule(static) if (n * oh * ow * c > kParallelWork)
  for (int64_t row = 0; row < n * h; ++row) {
    const int64_t image = row / h, iy = row % h;
    for (int64_t ix = 0; ix < w; ++ix) {
      T* dst = grad_x + (row * w + ix) * c;
      for (int64_t e = ry.begin[iy]; e < ry.begin[iy + 1]; ++e) {
        const auto [oy, wy] = ry.entries[e];
        const T* src_row = grad_y + (image * oh + oy) * ow * c;
        for (int64_t f = rx.begin[ix]; f < rx.begin[ix + 1]; ++f) {
          const auto [ox, wx] = rx.entries[f];
          const T weight = T(wy * wx);
          const T* src = src_row + ox * c;
#pragma omp simd
          for (int64_t ch = 0; ch < c; ++ch) dst[ch] += weight * src[ch];
        }
      }
    }
  }
}

}  // namespace

void CpuBackend::resize_bilinear_forward(const Tensor& x, const Tensor& y, bool align_corners) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    resize_forward(x.data<T>(), y.data<T>(), x.size(0), x.size(1), x.size(2), x.size(3), y.size(1),
                   y.size(2), align_corners);
  });
}

void CpuBackend::resize_bilinear_backward(const Tensor& grad_y, const Tensor& grad_x,
                                          bool align_corners) {
  dispatch_float(grad_y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    resize_backward(grad_y.data<T>(), grad_x.data<T>(), grad_x.size(0), grad_x.size(1),
                    grad_x.size(2), grad_x.size(3), grad_y.size(1), grad_y.size(2), align_corners);
  });
}

}  // namespace sono::cpu
