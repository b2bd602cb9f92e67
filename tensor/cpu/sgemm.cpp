// Packed float32 GEMM for AVX-512, after the BLIS design: the depth is cut in blocks of kc;
// for each, a thread packs its share of B's block into kc x kNr panels and its kMc x kc blocks
// of A into kMr x kc panels; a micro-kernel keeps a kMr x kNr tile of C in zmm registers over
// the whole depth block and writes it once, with alpha, beta and the bias applied on the way
// out (and the post-op after the last depth block). Packed panels are zero-padded to full
// width, so the micro-kernel never branches on edges; only the store is masked. With AMX, the
// micro-kernel's tile of C is 32 x kNr in four AMX tile registers, and A's block is packed as
// rows (what TILELOADD reads) instead of panels.
#ifdef __AVX512F__

#include "tensor/cpu/gemm.h"

#include "tensor/cpu/bf16.h"
#include "tensor/cpu/sgemm_shared.h"
#include "tensor/cpu/thread_buffer.h"

#include <immintrin.h>

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "tensor/error.h"

// GCC 12 flags the masked loads inside its own AVX-512 headers (the merge source of a maskz
// load is an undefined vector by design), once per inlined call site, and the shuffles of the
// in-register transpose likewise.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace sono::cpu {

using namespace sgemm_detail;

namespace {

// Tile of C per micro-kernel call: kMr rows x kNv zmm vectors of 16 columns; 28 of the 32
// zmm registers hold it, the rest carry B's row and A's broadcast value.
constexpr int kMr = 14, kNv = 2, kNr = 16 * kNv;
static_assert(kMr == kSgemmRowTile);
// Block limits: A's kMc x kKc block stays in L2 (2 MB a core), B's kKc x kNr panel in L1.
constexpr int64_t kKc = 256, kMc = 14 * 72, kNc = 4096;

// What a thread packs: each operand's float32 panels, and their bf16 depth-pair panels.
enum class Role { a, b, a16, b16 };

template <Role>
struct PanelsOf {};

template <Role R>
float* pack_buffer(int64_t floats) {
  return thread_buffer<PanelsOf<R>, float>().reserve(floats);
}

// Packing: panels of W rows of src (rows x depth), panel i at dst + i * W * depth holding
// dst[p * W + r] = src(i * W + r, p), zero-padded to W rows: as the micro-kernel reads it (W
// values of one depth step side by side). src is contiguous along one axis, and the loops
// stream along it.

__mmask16 column_mask(int64_t cols) {
  return cols >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << std::max<int64_t>(cols, 0)) - 1);
}

// Transposes the 16 x 16 floats in v (v[i] = row i) in registers: v[c] becomes column c.
// Pairs of rows interleave, then pairs of pairs (as doubles), then 128-bit lanes move twice.
void transpose16(__m512 (&v)[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
  }
  // v[4g + j]: rows 4g..4g+3 of columns j, j + 4, j + 8, j + 12 (one per 128-bit lane).
  for (int g = 0; g < 16; g += 4)
    for (int j = 0; j < 2; ++j) {
      const __m512d lo = _mm512_castps_pd(t[g + j]), hi = _mm512_castps_pd(t[g + j + 2]);
      v[g + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
      v[g + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
    }
  __m512 out[16];
  for (int j = 0; j < 4; ++j) {
    // Lane imm 0x88 picks lanes 0, 2 of each source, 0xdd lanes 1, 3.
    const __m512 a = _mm512_shuffle_f32x4(v[j], v[4 + j], 0x88), b = _mm512_shuffle_f32x4(v[j], v[4 + j], 0xdd);
    const __m512 c = _mm512_shuffle_f32x4(v[8 + j], v[12 + j], 0x88), d = _mm512_shuffle_f32x4(v[8 + j], v[12 + j], 0xdd);
    out[j] = _mm512_shuffle_f32x4(a, c, 0x88);
    out[j + 4] = _mm512_shuffle_f32x4(b, d, 0x88);
    out[j + 8] = _mm512_shuffle_f32x4(a, c, 0xdd);
    out[j + 12] = _mm512_shuffle_f32x4(b, d, 0xdd);
  }
  for (int c = 0; c < 16; ++c) v[c] = out[c];
}

// 16 rows' next `steps` (<= 16) values, row i's at rows[i] (zeros where it is null), loaded and
// transposed in registers: v[c] holds value c of each row.
inline void load_transposed(const float* const (&rows)[16], int64_t steps, __m512 (&v)[16]) {
  const __mmask16 depth_mask = column_mask(steps);
  for (int i = 0; i < 16; ++i) v[i] = rows[i] ? _mm512_maskz_loadu_ps(depth_mask, rows[i]) : _mm512_setzero_ps();
  transpose16(v);
}

// Packers store panels through a sink: float32 panels (depth steps of W rows side by side), or
// for AVX512-BF16 dot products bf16 depth-pair panels, [depth / 2][W][2] bfloat16 (a missing last
// depth step zero): one 32-bit lane per row, as VDPBF16PS reads it. A sink takes the next
// `steps` (<= 16) depth steps s.. of 16 rows, row i's at rows[i] (null: zeros), for rows g.. of
// the panel whose first row is block row r0; the panel sinks transpose them in registers and
// store v, v[c] holding step s + c of the 16 rows.
// The packers that call the bf16 sink carry its target; the float32 sink's code has no bf16
// instruction, so it runs on any AVX-512 CPU.
#define SONO_BF16_TARGET __attribute__((target("avx512bf16,avx512bw")))

template <int W>
struct FloatPanels {
  float* dst;
  int64_t depth;  // of the block
  void take(const float* const (&rows)[16], int64_t r0, int64_t s, int64_t steps, int g) const {
    __m512 v[16];
    load_transposed(rows, steps, v);
    store(v, r0, s, steps, g);
  }
  void store(const __m512 (&v)[16], int64_t r0, int64_t s, int64_t steps, int g) const {
    float* panel = dst + r0 * depth + s * W;
    const __mmask16 row_mask = column_mask(W - g);
    for (int64_t c = 0; c < steps; ++c) _mm512_mask_storeu_ps(panel + c * W + g, row_mask, v[c]);
  }
};

// Rows g.. of one depth pair, at out: x (the even step) and y (the odd one) rounded to bfloat16
// by VCVTNE2PS2BF16 (to nearest even; a NaN stays NaN; a denormal becomes zero, as the dot
// products would read it), then interleaved row by row.
template <int W>
SONO_BF16_TARGET void store_pair(__m512 x, __m512 y, int g, uint16_t* out) {
  alignas(64) static constexpr uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                           21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                           11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(y, x);  // x's 16 values, then y's
  const __mmask32 store_mask = W - g >= 16 ? ~__mmask32(0) : (__mmask32(1) << (2 * (W - g))) - 1;
  _mm512_mask_storeu_epi16(out, store_mask, _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), both));
}

template <int W>
struct PairPanels {
  uint16_t* dst;
  int64_t depth;
  SONO_BF16_TARGET void take(const float* const (&rows)[16], int64_t r0, int64_t s, int64_t steps, int g) const {
    __m512 v[16];
    load_transposed(rows, steps, v);
    store(v, r0, s, steps, g);
  }
  SONO_BF16_TARGET void store(const __m512 (&v)[16], int64_t r0, int64_t s, int64_t steps, int g) const {
    uint16_t* panel = dst + r0 * ((depth + 1) / 2) * 2;
    for (int64_t j = 0; 2 * j < steps; ++j) store_pair<W>(v[2 * j], v[2 * j + 1], g, panel + ((s / 2 + j) * W + g) * 2);
  }
};

// AMX's A operand: each row's bf16 depth steps side by side, [rows][stride] with the stride the
// block's depth rounded up to AMX's 32 steps, as TILELOADD reads 16 rows of 32 steps: the rows
// are stored as they are read, 16 steps at a time (zeros past `steps`).
struct RowTiles {
  uint16_t* dst;
  int64_t stride;
  SONO_BF16_TARGET void take(const float* const (&rows)[16], int64_t r0, int64_t s, int64_t steps, int g) const {
    const __mmask16 depth_mask = column_mask(steps);
    for (int i = 0; i < 16; ++i)
      store_row(r0 + g + i, s, rows[i] ? _mm512_maskz_loadu_ps(depth_mask, rows[i]) : _mm512_setzero_ps());
  }
  // Steps s.. s + 15 of `row`, rounded to bf16.
  SONO_BF16_TARGET void store_row(int64_t row, int64_t s, __m512 steps) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + row * stride + s), (__m256i)_mm512_cvtneps_pbh(steps));
  }
};

// src.rs == 1 (A transposed: the weight gradients' GEMMs) made into RowTiles: 16 steps of 16
// rows read as they lie (each step's rows contiguous), transposed in registers, stored as rows
// (rows past `rows`, up to a multiple of 16, zero).
SONO_BF16_TARGET void row_tiles_from_depth_runs(Strided src, int64_t rows, int64_t depth, const RowTiles& out) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const __mmask16 rows_mask = column_mask(rows - r0);
    for (int64_t s = 0; s < depth; s += 16) {
      __m512 v[16];
      for (int64_t c = 0; c < 16; ++c)
        v[c] = s + c < depth ? _mm512_maskz_loadu_ps(rows_mask, src.at(r0, s + c)) : _mm512_setzero_ps();
      transpose16(v);
      for (int i = 0; i < 16; ++i) out.store_row(r0 + i, s, v[i]);
    }
  }
}

// src.cs == 1: each row's depth is contiguous (A as [m, k], B transposed: Linear's operands).
// 16 rows x 16 depth steps at a time are transposed in registers (a scalar loop spent as long
// packing as the GEMM multiplying at MiT's narrow layers).
template <int W, typename Sink>
SONO_BF16_TARGET void pack_rows_contiguous(Strided src, int64_t rows, int64_t depth, const Sink& sink) {
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    const int64_t valid = std::min<int64_t>(W, rows - r0);
    for (int64_t p0 = 0; p0 < depth; p0 += 16) {
      const int64_t steps = std::min<int64_t>(16, depth - p0);
      for (int g = 0; g < W; g += 16) {
        const float* at[16];
        for (int i = 0; i < 16; ++i) {
          // The next panel's rows, same depth: each row is read only kc floats at a time, too
          // short a stream for the hardware prefetcher to get ahead.
          if (r0 + W + g + i < rows)
            _mm_prefetch(reinterpret_cast<const char*>(src.at(r0 + W + g + i, p0)), _MM_HINT_T0);
          at[i] = g + i < valid ? src.at(r0 + g + i, p0) : nullptr;
        }
        sink.take(at, r0, p0, steps, g);
      }
    }
  }
}

// Rows [r0, r0 + rows) and depth steps [p0, p0 + depth) of implicit columns, packed as
// pack_rows_contiguous packs a matrix; p0 is a multiple of 16, so each 16 steps are one tap's
// run of channels (or its padding).
template <int W, typename Sink>
SONO_BF16_TARGET void pack_implicit_columns(const ImplicitColumns& c, int64_t r0, int64_t rows, int64_t p0,
                                            int64_t depth, const Sink& sink) {
  for (int64_t pr = 0; pr < rows; pr += W) {
    const ImplicitRows<W> panel(c, r0 + pr, std::min<int64_t>(W, rows - pr));
    for (int64_t s = 0; s < depth; s += 16) {
      const auto step = ImplicitRows<W>::step(c, p0 + s);
      const int64_t steps = std::min<int64_t>(16, depth - s);
      for (int g = 0; g < W; g += 16) {
        const float* at[16];
        for (int i = 0; i < 16; ++i) at[i] = panel.at(c, g + i, step);
        sink.take(at, pr, s, steps, g);
      }
    }
  }
}

// float32 panels made into bf16 depth-pair panels (the depth-contiguous packer's route), each
// panel `panel_pairs` pairs apart (at least the depth's).
template <int W>
SONO_BF16_TARGET void pack_bf16_pairs(const float* src, int64_t rows, int64_t depth, uint16_t* dst,
                                      int64_t panel_pairs) {
  const int64_t pairs = (depth + 1) / 2;
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    const float* panel = src + r0 * depth;
    uint16_t* out = dst + r0 * panel_pairs * 2;
    for (int64_t q = 0; q < pairs; ++q) {
      const float* even = panel + 2 * q * W;
      const bool has_odd = 2 * q + 1 < depth;
      for (int g = 0; g < W; g += 16) {
        const __mmask16 rows_mask = column_mask(W - g);
        const __m512 x = _mm512_maskz_loadu_ps(rows_mask, even + g);
        const __m512 y = has_odd ? _mm512_maskz_loadu_ps(rows_mask, even + W + g) : _mm512_setzero_ps();
        store_pair<W>(x, y, g, out + (q * W + g) * 2);
      }
    }
  }
}

// The same straight from src where each depth step's rows are contiguous (src.rs == 1: B as
// [k, n], a weight gradient's columns): two steps' runs of rows interleaved per pair, without
// the float32 panels in between (a second pass over the whole block); rows past `rows` are
// zero.
template <int W>
SONO_BF16_TARGET void pack_bf16_pairs_depth_contiguous(Strided src, int64_t rows, int64_t depth, uint16_t* dst,
                                                       int64_t panel_pairs) {
  const int64_t pairs = (depth + 1) / 2;
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    uint16_t* out = dst + r0 * panel_pairs * 2;
    for (int64_t q = 0; q < pairs; ++q) {
      const float* even = src.at(r0, 2 * q);
      const float* odd = 2 * q + 1 < depth ? src.at(r0, 2 * q + 1) : nullptr;
      for (int g = 0; g < W; g += 16) {
        const __mmask16 rows_mask = column_mask(rows - r0 - g);
        const __m512 x = _mm512_maskz_loadu_ps(rows_mask, even + g);
        const __m512 y = odd ? _mm512_maskz_loadu_ps(rows_mask, odd + g) : _mm512_setzero_ps();
        store_pair<W>(x, y, g, out + (q * W + g) * 2);
      }
    }
  }
}

// acc's first t.rows rows to C (R: the rows acc holds). Inlined, so that acc stays in the
// micro-kernel's registers.
template <int R>
__attribute__((always_inline)) inline void store_tile(const __m512 (&acc)[R][kNv], const TileOut& t) {
  __mmask16 mask[kNv];
  __m512 bias[kNv];
  for (int j = 0; j < kNv; ++j) {
    mask[j] = column_mask(t.cols - 16 * j);
    bias[j] = t.bias ? _mm512_maskz_loadu_ps(mask[j], t.bias + 16 * j) : _mm512_setzero_ps();
  }
  const __m512 alpha = _mm512_set1_ps(t.alpha), beta = _mm512_set1_ps(t.beta);
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {  // unrolled, so that acc[i] names a register
    if (i == t.rows) break;
    float* c = t.c + i * t.ldc;
#pragma GCC unroll 4
    for (int j = 0; j < kNv; ++j) {
      __m512 v = _mm512_fmadd_ps(alpha, acc[i][j], bias[j]);
      if (t.beta != 0.0f) v = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask[j], c + 16 * j), v);
      if (t.relu) v = _mm512_max_ps(v, _mm512_setzero_ps());  // NaN and -0 become +0, as v > 0 ? v : 0
      _mm512_mask_storeu_ps(c + 16 * j, mask[j], v);
    }
  }
  if (t.post_op)
    for (int64_t i = 0; i < t.rows; ++i) t.post_op(t.c + i * t.ldc, t.cols);
}

// acc = A panel (kMr x depth, packed) x B panel (depth x kNr, packed), then stored through t.
void micro_kernel(int64_t depth, const float* a, const float* b, const TileOut& t) {
  __m512 acc[kMr][kNv];
#pragma GCC unroll 16
  for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kNv; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < depth; ++p, a += kMr, b += kNr) {
    __m512 bv[kNv];
#pragma GCC unroll 4
    for (int j = 0; j < kNv; ++j) bv[j] = _mm512_load_ps(b + 16 * j);
#pragma GCC unroll 16
    for (int i = 0; i < kMr; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < kNv; ++j) acc[i][j] = _mm512_fmadd_ps(ai, bv[j], acc[i][j]);
    }
  }
  store_tile(acc, t);
}

// micro_kernel on bf16 depth-pair panels (pack_bf16_pairs): a VDPBF16PS per row and vector of
// 16 columns adds two depth steps' products (exact) to the float32 accumulator.
__attribute__((target("avx512bf16"))) void micro_kernel_bf16(int64_t pairs, const uint16_t* a, const uint16_t* b,
                                                              const TileOut& t) {
  __m512 acc[kMr][kNv];
#pragma GCC unroll 16
  for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kNv; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t q = 0; q < pairs; ++q, a += 2 * kMr, b += 2 * kNr) {
    __m512bh bv[kNv];
#pragma GCC unroll 4
    for (int j = 0; j < kNv; ++j) bv[j] = (__m512bh)_mm512_load_si512(b + 32 * j);
#pragma GCC unroll 16
    for (int i = 0; i < kMr; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + 2 * i, sizeof pair);
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int j = 0; j < kNv; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], ai, bv[j]);
    }
  }
  store_tile(acc, t);
}

// The AMX micro-kernel's tile of C: 32 rows (two 16-row tiles of A) x kNr columns (two of B);
// a tile row holds 32 bf16 depth steps.
constexpr int kAmxRows = 32, kAmxDepth = 32;
// Depth blocks: each ends with C's tiles stored and added to C, so they are 4x the float32
// kernel's; row blocks: A's 256 x 1024 bf16 block (512 KB) stays in L2.
constexpr int64_t kAmxKc = 1024, kAmxMc = 256;
#define SONO_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512bf16,avx512bw")))

// Tile registers 0-3 hold C (16 rows x 16 float32 each), 4-5 A's rows 0-15 and 16-31 (32 bf16
// steps each), 6-7 B's columns 0-15 and 16-31 (16 depth pairs of 16 columns).
SONO_AMX_TARGET void configure_tiles() {
  struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t bytes_per_row[16] = {};
    uint8_t rows[16] = {};
  } config;
  for (int i = 0; i < 8; ++i) config.bytes_per_row[i] = 64, config.rows[i] = 16;
  asm volatile("" ::: "memory");  // the asm below reads the whole struct through a pointer
  _tile_loadconfig(&config);
}

// acc = A rows (kAmxRows x depth, RowTiles, depth a multiple of 32) x B's pair panel (depth x kNr),
// then stored through t.
SONO_AMX_TARGET void micro_kernel_amx(int64_t depth, const uint16_t* a, const uint16_t* b, const TileOut& t) {
  static_assert(kNr == 32 && kAmxRows == 32);
  asm volatile("" ::: "memory");  // the tile loads' asm does not say it reads the packed panels
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t a_bytes_per_row = depth * 2, b_bytes_per_pair = kNr * 4;
  for (int64_t p = 0; p < depth; p += kAmxDepth) {
    const uint16_t* b_pairs = b + p * kNr;  // p / 2 pairs of kNr columns, two values each
    _tile_loadd(4, a + p, a_bytes_per_row);
    _tile_loadd(5, a + 16 * depth + p, a_bytes_per_row);
    _tile_loadd(6, b_pairs, b_bytes_per_pair);
    _tile_loadd(7, b_pairs + 32, b_bytes_per_pair);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float c[kAmxRows][kNr];
  _tile_stored(0, &c[0][0], kNr * 4);
  _tile_stored(1, &c[0][16], kNr * 4);
  _tile_stored(2, &c[16][0], kNr * 4);
  _tile_stored(3, &c[16][16], kNr * 4);
  for (int half = 0; half < 2 && 16 * half < t.rows; ++half) {
    __m512 acc[16][kNv];
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < kNv; ++j) acc[i][j] = _mm512_load_ps(&c[16 * half + i][16 * j]);
    TileOut rows = t;
    rows.c += 16 * half * t.ldc;
    rows.rows = std::min<int64_t>(16, t.rows - 16 * half);
    store_tile(acc, rows);
  }
}

// AMX needs the CPU's AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22) and the kernel's
// leave to use the tile state (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, Linux 5.16 on).
bool amx_permitted() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & (1u << 24)) || !(edx & (1u << 22))) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

std::atomic<Bf16Math> g_fastest_bf16_math{Bf16Math::amx};

// The Bf16Math that bf16 products run on.
Bf16Math bf16_math() {
  const Bf16Math limit = g_fastest_bf16_math.load(std::memory_order_relaxed);
  if (limit == Bf16Math::amx && cpu_runs(Bf16Math::amx)) return Bf16Math::amx;
  if (limit != Bf16Math::rounded && cpu_runs(Bf16Math::dot_products)) return Bf16Math::dot_products;
  return Bf16Math::rounded;
}

// One batch item's operands and the block sizes it runs with.
struct Item : ItemOperands {
  int64_t kc, mc;
  Bf16Math math;  // with bf16 operands
  const PackedB* packed_b;  // B's blocks packed already, or null
  bool bf16_on(Bf16Math m) const { return bf16 && math == m; }
  // B's packed blocks are bf16 pair panels (else float32 panels).
  bool packs_pairs() const { return bf16_on(Bf16Math::amx) || bf16_on(Bf16Math::dot_products); }
  // Where column j of a packed depth block of kc steps starts, in the panels' elements.
  int64_t packed_column_offset(int64_t j, int64_t kc) const {
    if (bf16_on(Bf16Math::amx)) return j * round_up(kc, kAmxDepth);
    return packs_pairs() ? j * ((kc + 1) / 2) * 2 : j * kc;
  }
};

}  // namespace

// Every depth block of B, full width, as run_item would pack it: float32 panels or pair panels.
struct PackedB {
  int64_t n, k, kc;
  bool bf16;
  Bf16Math math;
  std::vector<int64_t> block_start;  // per depth block, in the panels' elements
  AlignedBuffer<float> panels;  // 64-byte aligned, as the micro-kernels load them
  AlignedBuffer<uint16_t> pairs;

  bool fits(int64_t n_, int64_t k_, int64_t kc_, bool bf16_, Bf16Math math_) const {
    return n == n_ && k == k_ && kc == kc_ && bf16 == bf16_ && (!bf16 || math == math_);
  }
};

namespace {

// One depth block's packed operands: float32 panels, or with bf16 dot products the bf16
// depth-pair panels made from them; with AMX, B's pair panels and A's RowTiles, both over the
// block's depth rounded up to 32.
struct Packed {
  const float* a;
  const float* b;
  const uint16_t* a16;  // null: the float32 panels
  const uint16_t* b16;
  bool amx;
};

// C[ic.., jc..] (+)= packed A block (mc x kc) x packed B block (kc x nc). The first depth
// block applies beta and the bias (later ones add), the last one the ReLU and the post-op.
void macro_kernel(const Item& it, const Packed& pack, int64_t ic, int64_t mc, int64_t jc, int64_t nc,
                  int64_t kc, bool first_depth, bool last_depth) {
  const int64_t pairs = (kc + 1) / 2, amx_depth = round_up(kc, kAmxDepth);
  const int64_t mr = pack.amx ? kAmxRows : kMr;
  for (int64_t jr = 0; jr < nc; jr += kNr) {
    for (int64_t ir = 0; ir < mc; ir += mr) {
      const TileOut out = tile_out(it, ic + ir, jc + jr, std::min<int64_t>(mr, mc - ir),
                                   std::min<int64_t>(kNr, nc - jr), first_depth, last_depth);
      if (pack.amx) micro_kernel_amx(amx_depth, pack.a16 + ir * amx_depth, pack.b16 + jr * amx_depth, out);
      else if (pack.a16) micro_kernel_bf16(pairs, pack.a16 + ir * pairs * 2, pack.b16 + jr * pairs * 2, out);
      else micro_kernel(kc, pack.a + ir * kc, pack.b + jr * kc, out);
    }
  }
}

// The operand panels of one depth block, for bf16 operands rounded or made into depth-pair
// panels: pack(sink) packs through a sink when its source is transposed in registers (it then
// returns true), else into dst's float32 panels (and returns false). With dot products a
// transposing packer writes the pair panels directly, never the float32 ones.
template <int W, typename Pack>
void pack_operand(Pack&& pack, int64_t rows, int64_t depth, bool bf16, bool dot_products, float* dst,
                  uint16_t* dst16) {
  if (bf16 && dot_products) {
    if (!pack(PairPanels<W>{dst16, depth})) pack_bf16_pairs<W>(dst, rows, depth, dst16, (depth + 1) / 2);
    return;
  }
  pack(FloatPanels<W>{dst, depth});
  if (bf16) round_panels(dst, round_up(rows, W) * depth);
}

// Packs src's block: transposed in registers through `sink` (returns true), or, depth
// contiguous, copied into the float32 panels at dst (returns false).
template <int W, typename Sink>
bool pack_strided(Strided src, int64_t rows, int64_t depth, const Sink& sink, float* dst) {
  if (src.cs == 1) {
    pack_rows_contiguous<W>(src, rows, depth, sink);
    return true;
  }
  pack_depth_contiguous<W>(src, rows, depth, dst);
  return false;
}

// B's block for AMX: pair panels over the depth rounded up to 32, the pairs past the block's
// depth zero (a tile reads 16 pairs at a time). Rows whose depth is contiguous are transposed in
// registers; rows contiguous at each depth step (B as [k, n]: weight gradients) are paired as
// they are read; other strides go through float32 panels at `panels`.
SONO_BF16_TARGET void pack_b_for_amx(Strided src, int64_t rows, int64_t depth, float* panels, uint16_t* dst) {
  const int64_t amx_depth = round_up(depth, kAmxDepth), packed = (depth + 1) / 2 * 2;
  if (src.rs == 1 && src.cs != 1)
    pack_bf16_pairs_depth_contiguous<kNr>(src, rows, depth, dst, amx_depth / 2);
  else if (!pack_strided<kNr>(src, rows, depth, PairPanels<kNr>{dst, amx_depth}, panels))
    pack_bf16_pairs<kNr>(panels, rows, depth, dst, amx_depth / 2);
  for (int64_t r0 = 0; r0 < rows; r0 += kNr)
    std::fill(dst + r0 * amx_depth + packed * kNr, dst + (r0 + kNr) * amx_depth, uint16_t{0});
}

// A's block (rows [ic, ic + mc), depth [pc, pc + kc)) for AMX: read as rows from implicit
// columns or from rows whose depth is contiguous, else transposed into rows from the depth
// steps' runs of rows; rows up to the next multiple of kAmxRows and steps up to the next of 32
// are zeroed.
void pack_a_for_amx(const Item& it, int64_t ic, int64_t mc, int64_t pc, int64_t kc, uint16_t* dst) {
  const int64_t amx_depth = round_up(kc, kAmxDepth), packed_depth = round_up(kc, 16), packed_rows = round_up(mc, 16);
  const RowTiles sink{dst, amx_depth};
  if (it.a_columns) {
    pack_implicit_columns<16>(*it.a_columns, ic, mc, pc, kc, sink);
  } else if (it.a.cs == 1) {
    pack_rows_contiguous<16>({it.a.at(ic, pc), it.a.rs, it.a.cs}, mc, kc, sink);
  } else {
    row_tiles_from_depth_runs({it.a.at(ic, pc), it.a.rs, it.a.cs}, mc, kc, sink);
  }
  if (packed_depth < amx_depth)
    for (int64_t r = 0; r < packed_rows; ++r)
      std::fill(dst + r * amx_depth + packed_depth, dst + (r + 1) * amx_depth, uint16_t{0});
  std::fill(dst + packed_rows * amx_depth, dst + round_up(mc, kAmxRows) * amx_depth, uint16_t{0});
}

SONO_AMX_TARGET void release_tiles() { _tile_release(); }

// B's block (columns [jc, jc + nc), depth [pc, pc + kc)) into float32 panels at b_pack or, with
// bf16 dot products or AMX, pair panels at b16 (b_pack then holds the float32 ones on the way).
void pack_b_block(const Item& it, int64_t jc, int64_t nc, int64_t pc, int64_t kc, float* b_pack, uint16_t* b16) {
  const Strided b_block{it.b.at(jc, pc), it.b.rs, it.b.cs};
  if (it.bf16_on(Bf16Math::amx)) return pack_b_for_amx(b_block, nc, kc, b_pack, b16);
  pack_operand<kNr>([&](const auto& sink) { return pack_strided<kNr>(b_block, nc, kc, sink, b_pack); }, nc, kc,
                    it.bf16, it.bf16_on(Bf16Math::dot_products), b_pack, b16);
}

// A team member's share of one item: for each block of its columns and of depth, it packs B's
// block (or finds it packed), then packs and multiplies its row blocks of A.
void run_item(const Item& it, Team team) {
  const Share share = share_of(it.m, it.n, kNr, team);
  const int64_t row_blocks = ceil_div(it.m, it.mc);
  if (share.first_block >= row_blocks || share.col_begin >= share.col_end) return;
  const int64_t a_floats = round_up(it.mc, kMr) * it.kc, b_floats = round_up(std::min(it.n, kNc), kNr) * it.kc;
  float* a_pack = pack_buffer<Role::a>(a_floats);
  float* b_pack = pack_buffer<Role::b>(b_floats);
  const bool dot_products = it.bf16_on(Bf16Math::dot_products), amx = it.bf16_on(Bf16Math::amx);
  // it.kc is even: a depth block's pair panels take as many bytes as half its float32 panels
  // (with AMX, it.mc and it.kc are multiples of 32: its rows and pairs fit there too).
  uint16_t* a16 = dot_products || amx ? reinterpret_cast<uint16_t*>(pack_buffer<Role::a16>(a_floats / 2)) : nullptr;
  uint16_t* b16 = dot_products || amx ? reinterpret_cast<uint16_t*>(pack_buffer<Role::b16>(b_floats / 2)) : nullptr;
  if (amx) configure_tiles();
  for (int64_t jc = share.col_begin; jc < share.col_end; jc += kNc) {
    const int64_t nc = std::min(kNc, share.col_end - jc);
    // pc == 0 runs even for k == 0, so that beta and the bias still apply.
    for (int64_t pc = 0; pc == 0 || pc < it.k; pc += it.kc) {
      const int64_t kc = std::min(it.kc, it.k - pc);
      Packed pack{a_pack, b_pack, a16, b16, amx};
      if (const PackedB* packed = it.packed_b) {
        const int64_t start = packed->block_start[pc / it.kc] + it.packed_column_offset(jc, kc);
        if (it.packs_pairs()) pack.b16 = packed->pairs.data() + start;
        else pack.b = packed->panels.data() + start;
      } else {
        pack_b_block(it, jc, nc, pc, kc, b_pack, b16);
      }
      for (int64_t blk = share.first_block; blk < row_blocks; blk += share.block_step) {
        const int64_t ic = blk * it.mc, mc = std::min(it.mc, it.m - ic);
        if (amx)
          pack_a_for_amx(it, ic, mc, pc, kc, a16);
        else
          pack_operand<kMr>(
              [&](const auto& sink) {
                if (!it.a_columns) return pack_strided<kMr>({it.a.at(ic, pc), it.a.rs, it.a.cs}, mc, kc, sink, a_pack);
                pack_implicit_columns<kMr>(*it.a_columns, ic, mc, pc, kc, sink);
                return true;
              },
              mc, kc, it.bf16, dot_products, a_pack, a16);
        macro_kernel(it, pack, ic, mc, jc, nc, kc, pc == 0, pc + kc >= it.k);
      }
    }
  }
  if (amx) release_tiles();
}

// Batch item i of p, with depth blocks of equal size and, when a team of `threads` splits the
// rows, row blocks that split evenly over it (so its members finish together).
Item make_item(const GemmProblem<float>& p, int64_t i, int threads) {
  Item it{item_operands(p, i), 0, 0, p.bf16_operands ? bf16_math() : Bf16Math::rounded, nullptr};
  const bool amx = it.bf16_on(Bf16Math::amx);
  // Implicit columns are read 16 depth steps of one tap at a time: depth blocks start at
  // multiples of 16. AMX tiles read 32 steps.
  const int64_t depth_multiple = amx ? kAmxDepth : p.a_columns ? 16 : 8;
  const int64_t max_kc = amx ? kAmxKc : kKc;
  it.kc = depth_block(p.k, max_kc, depth_multiple);
  const int64_t row_blocks = round_up(ceil_div(p.m, amx ? kAmxMc : kMc), splits_rows(p.m, p.n) ? threads : 1);
  it.mc = round_up(ceil_div(p.m, row_blocks), amx ? kAmxRows : kMr);
  if (p.packed_b && p.packed_b->fits(it.n, it.k, it.kc, it.bf16, it.math)) it.packed_b = p.packed_b;
  return it;
}

}  // namespace

bool cpu_runs(Bf16Math math) {
  static const bool amx = amx_permitted(), dot_products = __builtin_cpu_supports("avx512bf16");
  switch (math) {
    case Bf16Math::amx: return amx;
    case Bf16Math::dot_products: return dot_products;
    case Bf16Math::rounded: return true;
  }
  return false;
}

std::shared_ptr<const PackedB> pack_b(const GemmProblem<float>& p) {
  SONO_CHECK(p.batch == 1 && !p.b_shared, "pack_b: one B, not ", p.batch);
  const Item it = make_item(p, 0, 1);  // the depth blocks depend on k and the math alone
  auto packed = std::make_shared<PackedB>(PackedB{it.n, it.k, it.kc, it.bf16, it.math, {}, {}, {}});
  const int64_t width = round_up(it.n, kNr);
  int64_t elements = 0;
  for (int64_t pc = 0; pc == 0 || pc < it.k; pc += it.kc) {
    packed->block_start.push_back(elements);
    elements += it.packed_column_offset(width, std::min(it.kc, it.k - pc));
  }
  uint16_t* pairs = it.packs_pairs() ? packed->pairs.reserve(elements) : nullptr;
  float* panels = it.packs_pairs() ? pack_buffer<Role::b>(width * it.kc) : packed->panels.reserve(elements);
  for (int64_t pc = 0, block = 0; pc == 0 || pc < it.k; pc += it.kc, ++block) {
    const int64_t start = packed->block_start[block], kc = std::min(it.kc, it.k - pc);
    if (pairs) pack_b_block(it, 0, it.n, pc, kc, panels, pairs + start);
    else pack_b_block(it, 0, it.n, pc, kc, panels + start, nullptr);
  }
  return packed;
}

bool packed_b_fits(const PackedB& packed, const GemmProblem<float>& p) {
  const Item it = make_item(p, 0, 1);
  return packed.fits(it.n, it.k, it.kc, it.bf16, it.math);
}

void limit_bf16_math(Bf16Math fastest) { g_fastest_bf16_math.store(fastest, std::memory_order_relaxed); }

void sgemm(const GemmProblem<float>& p) { run_items(p, make_item, run_item); }

}  // namespace sono::cpu

#endif  // __AVX512F__
