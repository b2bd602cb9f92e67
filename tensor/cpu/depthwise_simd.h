#pragma once
// Depthwise convolution with stride 1 and dilation 1 (ConvNeXt's 7x7, MiT's 3x3) in float32 on
// AVX-512, and the 7x7 on AVX2 with FMA (depthwise_simd.cpp). Channels-last: a block of 16
// (AVX2: 8) channels is one vector, and a row of output pixels (8 at 3x3, 16 at 7x7; AVX2: 6 at
// 7x7) keep their sums in registers while each input under the kernel row is loaded once and
// feeds every output it reaches: 22 loads for 112 products at 7x7, where the general kernel
// (conv.cpp) loads an input per product. AVX2 has no free masked loads for the 3x3's padding:
// there, both its direct loads and a ring of padded rows measured slower than the general kernel.
#include <cstdint>

namespace sono::cpu {

#if defined(__AVX512F__)
#define SONO_DEPTHWISE_SIMD 1
inline constexpr bool kHaveDepthwiseSimd = true;
inline constexpr bool kDepthwiseSimd3 = true;
#elif defined(__AVX2__) && defined(__FMA__)
#define SONO_DEPTHWISE_SIMD 1
inline constexpr bool kHaveDepthwiseSimd = true;
inline constexpr bool kDepthwiseSimd3 = false;
#else
#define SONO_DEPTHWISE_SIMD 0
inline constexpr bool kHaveDepthwiseSimd = false;
inline constexpr bool kDepthwiseSimd3 = false;
#endif

// Kernel sizes the fast path is built for.
inline bool depthwise_simd_supports(int64_t k) { return kHaveDepthwiseSimd && (k == 7 || (k == 3 && kDepthwiseSimd3)); }

// out[n, oy, ox, :] = sum over ky, kx < k of src[n, oy - pad + ky, ox - pad + kx, :] * taps[ky, kx, :]
// (zero outside src), for src [n, h, w, c], taps [k, k, c], out [n, oh, ow, c]; with
// `round_bf16` each src value is rounded to bfloat16 as it is read (bf16 products: the caller
// rounds the taps). Needs depthwise_simd_supports(k); defined only where kHaveDepthwiseSimd.
void depthwise_stride1(const float* src, int64_t n, int64_t h, int64_t w, int64_t c,
                       const float* taps, int64_t k, int64_t pad, float* out, int64_t oh,
                       int64_t ow, bool round_bf16);

}  // namespace sono::cpu
