#pragma once
// Depthwise convolution with stride 1 and dilation 1 (ConvNeXt's 7x7, MiT's 3x3) in float32 on
// AVX-512 (depthwise_simd.cpp). Channels-last: a block of 16 channels is one vector, and a row of
// output pixels (8 at 3x3, 16 at 7x7) keep their sums in registers while each input under the
// kernel row is loaded once and feeds every output it reaches: 22 loads for 112 products at 7x7,
// where the general kernel (conv.cpp) loads an input per product.
#include <cstdint>

namespace sono::cpu {

#ifdef __AVX512F__
inline constexpr bool kHaveDepthwiseSimd = true;
#else
inline constexpr bool kHaveDepthwiseSimd = false;
#endif

// Kernel sizes the fast path is compiled for.
inline bool depthwise_simd_supports(int64_t k) { return kHaveDepthwiseSimd && (k == 3 || k == 7); }

// out[n, oy, ox, :] = sum over ky, kx < k of src[n, oy - pad + ky, ox - pad + kx, :] * taps[ky, kx, :]
// (zero outside src), for src [n, h, w, c], taps [k, k, c], out [n, oh, ow, c]; with
// `round_bf16` each src value is rounded to bfloat16 as it is read (bf16 products: the caller
// rounds the taps). Needs depthwise_simd_supports(k); defined only where kHaveDepthwiseSimd.
void depthwise_stride1(const float* src, int64_t n, int64_t h, int64_t w, int64_t c,
                       const float* taps, int64_t k, int64_t pad, float* out, int64_t oh,
                       int64_t ow, bool round_bf16);

}  // namespace sono::cpu
