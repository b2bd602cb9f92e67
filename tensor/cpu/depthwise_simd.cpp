#include "tensor/cpu/depthwise_simd.h"

#if SONO_DEPTHWISE_SIMD

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include <omp.h>

#include "tensor/cpu/avx2_lanes.h"
#include "tensor/error.h"

// GCC 12 flags the masked loads inside its own AVX-512 headers (see sgemm.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace sono::cpu {

namespace {

// The vector operations the kernels below are written in: a block of kLanes channels is one
// vector, `Lanes` says which of a block's channels exist (the last block may be partial).
#ifdef __AVX512F__
struct Simd {
  using V = __m512;
  using Lanes = __mmask16;
  static constexpr int kLanes = 16;
  // Output pixels per register tile: 3x3 and 7x7 (32 zmm registers: 16 sums, 7 taps, an input).
  static constexpr int kTile3 = 8, kTile7 = 16;
  static Lanes lanes(int64_t c, int64_t c0) { return static_cast<Lanes>((1u << std::min<int64_t>(16, c - c0)) - 1); }
  static Lanes none() { return 0; }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(Lanes m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static V load_aligned(const float* p) { return _mm512_load_ps(p); }
  static void store(float* p, Lanes m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static void store_aligned(float* p, V v) { _mm512_store_ps(p, v); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  // v rounded to the nearest bfloat16 (ties to even), as bf16.h's round_to_bf16 per lane: a NaN
  // stays a quiet NaN with its sign and top payload.
  static V round_to_bf16(V v) {
    const __m512i u = _mm512_castps_si512(v), top = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded =
        _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), top);
    const __m512i quiet = _mm512_and_si512(_mm512_or_si512(u, _mm512_set1_epi32(0x400000)), top);
    return _mm512_castsi512_ps(_mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), rounded, quiet));
  }
};
#else
// AVX2: Lanes counts the block's channels (avx2_lanes.h: full blocks without a mask).
struct Simd {
  using V = __m256;
  using Lanes = int;
  static constexpr int kLanes = 8;
  // 16 ymm registers: 6 sums, 7 taps and an input at 7x7 (the 3x3 compiles, but AVX2 CPUs take
  // the general kernel there: see kDepthwiseSimd3).
  static constexpr int kTile3 = 8, kTile7 = 6;
  static Lanes lanes(int64_t c, int64_t c0) { return static_cast<int>(std::min<int64_t>(8, c - c0)); }
  static Lanes none() { return 0; }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(Lanes m, const float* p) { return load_lanes(p, m); }
  static V load_aligned(const float* p) { return _mm256_load_ps(p); }
  static void store(float* p, Lanes m, V v) { store_lanes(p, v, m); }
  static void store_aligned(float* p, V v) { _mm256_store_ps(p, v); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  // As the AVX-512 version: to nearest even, a NaN a quiet NaN with its sign and top payload.
  static V round_to_bf16(V v) {
    const __m256i u = _mm256_castps_si256(v), top = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), top);
    const __m256i quiet = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x400000)), top);
    return _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(quiet), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
};
#endif
using V = Simd::V;
using Lanes = Simd::Lanes;
constexpr int64_t kLanes = Simd::kLanes;

// One register tile: P output pixels of a row, kLanes channels, summed over the K x K taps. The
// input vector at window position j (input column ox0 - pad + j) of kernel row ky comes from
// load(ky, j); kernel rows outside the image (load.row_inside(ky) false) are skipped. Input j
// feeds outputs p = j - kx.
template <int K, int P, typename Load>
void accumulate_tile(const float* taps, int64_t c, int64_t c0, Lanes lanes, Load&& load, V (&acc)[P]) {
  for (V& a : acc) a = Simd::zero();
  for (int ky = 0; ky < K; ++ky) {
    if (!load.row_inside(ky)) continue;
    V wk[K];
    for (int kx = 0; kx < K; ++kx) wk[kx] = Simd::load(lanes, taps + (ky * K + kx) * c + c0);
#pragma GCC unroll 32
    for (int j = 0; j < P + K - 1; ++j) {
      const V v = load(ky, j);
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) {
        const int p = j - kx;
        if (p >= 0 && p < P) acc[p] = Simd::fmadd(v, wk[kx], acc[p]);
      }
    }
  }
}

template <int P>
void store_tile(const V (&acc)[P], Lanes lanes, int64_t valid, int64_t c, float* out) {
  for (int64_t p = 0; p < std::min<int64_t>(P, valid); ++p) Simd::store(out + p * c, lanes, acc[p]);
}

// The output row a tile is on, and which of its kernel rows fall inside the image.
struct OutputRow {
  int64_t h, pad, oy;
  bool row_inside(int ky) const { return oy - pad + ky >= 0 && oy - pad + ky < h; }
};

// ---- 3x3 (MiT's Mix-FFN): loads straight from the input, row by row -------------------------
// Inputs in the zero padding are loaded with an empty mask (no memory is touched, the value is 0).
// With bf16 products (kRound) each load is rounded: nine roundings an element cost less than a
// rounded copy of the input written and read back (MiT's 4x-wide Mix-FFN maps are tens of MB).
template <bool kRound>
struct DirectLoad : OutputRow {
  const float* image;  // [h, w, c]
  int64_t w, c, c0, ox0;
  Lanes lanes;

  V operator()(int ky, int j) const {
    const int64_t iy = oy - pad + ky, ix = ox0 - pad + j;
    const V v = Simd::load(ix >= 0 && ix < w ? lanes : Simd::none(), image + (iy * w + ix) * c + c0);
    return kRound ? Simd::round_to_bf16(v) : v;
  }
};

template <bool kRound>
void run_direct3(const float* src, int64_t n, int64_t h, int64_t w, int64_t c, const float* taps,
                 int64_t pad, float* out, int64_t oh, int64_t ow) {
  constexpr int P = Simd::kTile3;
#pragma omp parallel for schedule(static) if (n * oh * ow * c * 9 > (int64_t{1} << 16))
  for (int64_t row = 0; row < n * oh; ++row) {
    const int64_t image = row / oh, oy = row % oh;
    for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
      const Lanes lanes = Simd::lanes(c, c0);
      for (int64_t ox0 = 0; ox0 < ow; ox0 += P) {
        V acc[P];
        const DirectLoad<kRound> load{{h, pad, oy}, src + image * h * w * c, w, c, c0, ox0, lanes};
        accumulate_tile<3, P>(taps, c, c0, lanes, load, acc);
        store_tile(acc, lanes, ow - ox0, c, out + (row * ow + ox0) * c + c0);
      }
    }
  }
}

// ---- 7x7 (ConvNeXt): a ring of padded input rows per channel block --------------------------
// One block of kLanes channels of one image, as a ring of the K input rows under the current
// output row, each copied once, zero-padded and packed [width][kLanes]: the tiles then load aligned
// vectors with no masks (masked loads of the wide padding, one per load, made the compiler
// branch on every mask: 54 GFLOP/s on ConvNeXt's 14 x 14 x 512 maps, 77 with the ring). The
// copy is where bf16 products round their input, once per element.
template <int K>
struct RowRing : OutputRow {  // OutputRow::oy and ox0: the tile being computed
  const float* image;  // [h, w, c]
  int64_t w, c, c0, width;
  Lanes lanes;
  float* rows;  // K slots of width x kLanes floats, slot iy % K holding input row iy
  bool round_bf16;
  int64_t ox0 = 0;

  // Copies input row iy into its slot, before the first output row that reads it.
  void load_row(int64_t iy) {
    if (iy < 0 || iy >= h) return;
    float* dst = rows + iy % K * width * kLanes;
    const float* src = image + iy * w * c + c0;
    for (int64_t q = 0; q < width; ++q) {
      const int64_t ix = q - pad;
      const V v = ix >= 0 && ix < w ? Simd::load(lanes, src + ix * c) : Simd::zero();
      Simd::store_aligned(dst + q * kLanes, round_bf16 ? Simd::round_to_bf16(v) : v);
    }
  }
  V operator()(int ky, int j) const {
    return Simd::load_aligned(rows + ((oy - pad + ky) % K * width + ox0 + j) * kLanes);
  }
};

template <int K>
void run_ring(const float* src, int64_t n, int64_t h, int64_t w, int64_t c, const float* taps,
              int64_t pad, float* out, int64_t oh, int64_t ow, bool round_bf16) {
  constexpr int P = Simd::kTile7;
  const int64_t blocks = (c + kLanes - 1) / kLanes;
  const int64_t width = (ow + P - 1) / P * P + K - 1;  // ring row, in vectors
  const int64_t ring_floats = K * width * kLanes;
  // Each thread allocates its own ring: the rings side by side in one block ran 10% slower
  // (bench_conv 7x7 bs8: 2.11-2.15 against 1.88-1.99 ms; likely cache-set conflicts between
  // the two threads' rows). A failed allocation is reported after the parallel region, where
  // an error can be thrown.
  bool out_of_memory = false;
#pragma omp parallel if (n * oh * ow * c * K * K > (int64_t{1} << 16))
  {
    std::unique_ptr<float, decltype(&std::free)> storage(
        static_cast<float*>(std::aligned_alloc(64, ring_floats * sizeof(float))), &std::free);
    if (!storage) {
#pragma omp atomic write
      out_of_memory = true;
    }
    float* rows = storage.get();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < n * blocks; ++item) {
      if (!rows) continue;
      const int64_t image = item / blocks, c0 = item % blocks * kLanes;
      RowRing<K> ring{{h, pad, 0}, src + image * h * w * c, w, c, c0, width, Simd::lanes(c, c0), rows, round_bf16};
      for (int64_t iy = -pad; iy < K - 1 - pad; ++iy) ring.load_row(iy);
      for (ring.oy = 0; ring.oy < oh; ++ring.oy) {
        ring.load_row(ring.oy - pad + K - 1);
        for (ring.ox0 = 0; ring.ox0 < ow; ring.ox0 += P) {
          V acc[P];
          accumulate_tile<K, P>(taps, c, c0, ring.lanes, ring, acc);
          store_tile(acc, ring.lanes, ow - ring.ox0, c, out + ((image * oh + ring.oy) * ow + ring.ox0) * c + c0);
        }
      }
    }
  }
  if (out_of_memory) fail("depthwise conv: out of memory for a row ring of ", ring_floats, " floats");
}

}  // namespace

void depthwise_stride1(const float* src, int64_t n, int64_t h, int64_t w, int64_t c,
                       const float* taps, int64_t k, int64_t pad, float* out, int64_t oh,
                       int64_t ow, bool round_bf16) {
  if (k == 3 && round_bf16) return run_direct3<true>(src, n, h, w, c, taps, pad, out, oh, ow);
  if (k == 3) return run_direct3<false>(src, n, h, w, c, taps, pad, out, oh, ow);
  run_ring<7>(src, n, h, w, c, taps, pad, out, oh, ow, round_bf16);
}

}  // namespace sono::cpu

#endif  // SONO_DEPTHWISE_SIMD
