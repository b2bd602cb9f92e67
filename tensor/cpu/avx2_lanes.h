#pragma once
// The first n of a ymm vector's 8 float lanes, loaded or stored, for the AVX2 kernels
// (sgemm_avx2.cpp, depthwise_simd.cpp). AMD's Zen microcodes VMASKMOVPS (a store takes tens of
// cycles), so full vectors, and 6 lanes (an sgemm A panel's depth step), go without a mask.
#if defined(__AVX2__)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace sono::cpu {

// Lanes 0 .. n - 1 of a maskload / maskstore (n clamped to 0 .. 8).
inline __m256i lane_mask(int64_t n) {
  alignas(32) static constexpr int32_t kRamp[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kRamp + 8 - std::clamp<int64_t>(n, 0, 8)));
}

// The rest zero; no memory past the n lanes is read.
inline __m256 load_lanes(const float* p, int64_t n) {
  return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(n));
}

inline void store_lanes(float* p, __m256 v, int64_t n) {
  if (n >= 8) {
    _mm256_storeu_ps(p, v);
  } else if (n == 6) {
    _mm_storeu_ps(p, _mm256_castps256_ps128(v));
    _mm_storel_pi(reinterpret_cast<__m64*>(p + 4), _mm256_extractf128_ps(v, 1));
  } else {
    _mm256_maskstore_ps(p, lane_mask(n), v);
  }
}

}  // namespace sono::cpu

#endif  // __AVX2__
