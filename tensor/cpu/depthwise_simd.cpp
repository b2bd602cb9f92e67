#ifdef __AVX512F__

#include "tensor/cpu/depthwise_simd.h"

#include <immintrin.h>

#include <algorithm>

// GCC 12 flags the masked loads inside its own AVX-512 headers (see sgemm.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace sono::cpu {

namespace {

constexpr int64_t kPixels = 8;  // output pixels per register tile

struct Plane {
  const float* src;  // one image, [h, w, c]
  int64_t h, w, c;
};

// out[ox0 + p, c0..] for p < min(kPixels, valid) of output row oy.
template <int K>
void tile(const Plane& in, const float* taps, int64_t pad, int64_t oy, int64_t ox0, int64_t c0,
          __mmask16 mask, int64_t valid, float* out_row) {
  __m512 acc[kPixels];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  // Inputs in the zero padding are loaded with an empty mask (no memory is touched, the value is
  // 0): with no branch in the loops the compiler keeps the sums in registers.
  for (int ky = 0; ky < K; ++ky) {
    const int64_t iy = oy - pad + ky;
    const bool row_inside = iy >= 0 && iy < in.h;
    __m512 wk[K];
    for (int kx = 0; kx < K; ++kx) wk[kx] = _mm512_maskz_loadu_ps(mask, taps + (ky * K + kx) * in.c + c0);
    const float* row = in.src + iy * in.w * in.c + c0;
    // Input j of the window feeds outputs p = j - kx.
#pragma GCC unroll 16
    for (int j = 0; j < kPixels + K - 1; ++j) {
      const int64_t ix = ox0 - pad + j;
      const __mmask16 inside = row_inside && ix >= 0 && ix < in.w ? mask : 0;
      const __m512 v = _mm512_maskz_loadu_ps(inside, row + ix * in.c);
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) {
        const int p = j - kx;
        if (p >= 0 && p < kPixels) acc[p] = _mm512_fmadd_ps(v, wk[kx], acc[p]);
      }
    }
  }
  for (int64_t p = 0; p < std::min(kPixels, valid); ++p)
    _mm512_mask_storeu_ps(out_row + (ox0 + p) * in.c + c0, mask, acc[p]);
}

template <int K>
void run(const float* src, int64_t n, int64_t h, int64_t w, int64_t c, const float* taps,
         int64_t pad, float* out, int64_t oh, int64_t ow) {
#pragma omp parallel for schedule(static) if (n * oh * ow * c * K * K > (int64_t{1} << 16))
  for (int64_t row = 0; row < n * oh; ++row) {
    const int64_t image = row / oh, oy = row % oh;
    const Plane in{src + image * h * w * c, h, w, c};
    float* out_row = out + row * ow * c;
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      const int64_t lanes = std::min<int64_t>(16, c - c0);
      const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1);
      for (int64_t ox0 = 0; ox0 < ow; ox0 += kPixels)
        tile<K>(in, taps, pad, oy, ox0, c0, mask, ow - ox0, out_row);
    }
  }
}

}  // namespace

void depthwise_stride1(const float* src, int64_t n, int64_t h, int64_t w, int64_t c,
                       const float* taps, int64_t k, int64_t pad, float* out, int64_t oh,
                       int64_t ow) {
  if (k == 3) return run<3>(src, n, h, w, c, taps, pad, out, oh, ow);
  run<7>(src, n, h, w, c, taps, pad, out, oh, ow);
}

}  // namespace sono::cpu

#endif  // __AVX512F__
