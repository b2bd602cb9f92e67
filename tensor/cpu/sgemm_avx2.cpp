// Packed float32 GEMM for CPUs with AVX2 and FMA but no AVX-512 (AMD before Zen 4, Intel from
// Haswell on without it, desktop cores since Alder Lake among them): sgemm.cpp's BLIS design on
// 256-bit registers. A 6 x 16 tile of C stays in
// 12 ymm registers over a depth block (two more carry B's row, one A's broadcast value); A's
// rows are packed by 8 x 8 transposes in registers. Such CPUs have no bf16 instructions: bf16
// products multiply float32 panels rounded as they are packed (Bf16Math::rounded).
// As with AVX-512, an element's sum runs over the same depth blocks in the same order whatever
// m, the batch or the threads: a batch's rows are bit for bit those of one image.
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "tensor/cpu/avx2_lanes.h"
#include "tensor/cpu/bf16.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/sgemm_shared.h"
#include "tensor/cpu/thread_buffer.h"
#include "tensor/error.h"

namespace sono::cpu {

using namespace sgemm_detail;

namespace {

// Tile of C per micro-kernel call: kMr rows x kNr columns (two ymm vectors).
constexpr int kMr = 6, kNr = 16;
static_assert(kMr == kSgemmRowTile);
// A's kMc x kKc block stays in L2 (512 KB a core on Zen 2/3), B's kKc x kNr panel in L1.
constexpr int64_t kKc = 256, kMc = kMr * 48, kNc = 4096;

struct APanels {};
struct BPanels {};

// v[i] = row i of 8 x 8 floats becomes v[c] = column c: pairs of rows interleave, then pairs of
// pairs, then the 128-bit halves swap.
void transpose8(__m256 (&v)[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int g = 0; g < 8; g += 4) {  // s[g + j]: column j (low half) and j + 4 (high) of rows g..g+3
    s[g] = _mm256_shuffle_ps(t[g], t[g + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
    v[j + 4] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
  }
}

// The next `steps` (<= 8) depth steps of `count` (<= 8) panel rows, row i's at rows[i] (zeros
// where null), transposed in registers and stored at dst, one panel depth step W floats apart.
template <int W>
void store_transposed(const float* const (&rows)[8], int count, int64_t steps, float* dst) {
  __m256 v[8];
  for (int i = 0; i < 8; ++i) v[i] = rows[i] ? load_lanes(rows[i], steps) : _mm256_setzero_ps();
  transpose8(v);
  for (int64_t c = 0; c < steps; ++c) store_lanes(dst + c * W, v[c], count);
}

// Panels from rows whose depth is contiguous (src.cs == 1): 8 rows x 8 steps at a time.
template <int W>
void pack_rows_contiguous(Strided src, int64_t rows, int64_t depth, float* dst) {
  for (int64_t r0 = 0; r0 < rows; r0 += W)
    for (int64_t p = 0; p < depth; p += 8)
      for (int g = 0; g < W; g += 8) {
        const float* at[8];
        for (int i = 0; i < 8; ++i) at[i] = g + i < W && r0 + g + i < rows ? src.at(r0 + g + i, p) : nullptr;
        store_transposed<W>(at, std::min(8, W - g), std::min<int64_t>(8, depth - p), dst + r0 * depth + p * W + g);
      }
}

template <int W>
void pack_strided(Strided src, int64_t rows, int64_t depth, float* dst) {
  if (src.cs == 1) pack_rows_contiguous<W>(src, rows, depth, dst);
  else pack_depth_contiguous<W>(src, rows, depth, dst);
}

// Rows [r0, r0 + rows) and depth steps [p0, p0 + depth) of implicit columns; p0 and the
// channels are multiples of 8, so each 8 steps are one tap's run of channels (or its padding).
template <int W>
void pack_implicit_columns(const ImplicitColumns& c, int64_t r0, int64_t rows, int64_t p0, int64_t depth,
                           float* dst) {
  for (int64_t pr = 0; pr < rows; pr += W) {
    const ImplicitRows<W> panel(c, r0 + pr, std::min<int64_t>(W, rows - pr));
    for (int64_t s = 0; s < depth; s += 8) {
      const auto step = ImplicitRows<W>::step(c, p0 + s);
      for (int g = 0; g < W; g += 8) {
        const float* at[8];
        for (int i = 0; i < 8; ++i) at[i] = panel.at(c, g + i, step);
        store_transposed<W>(at, std::min(8, W - g), std::min<int64_t>(8, depth - s), dst + pr * depth + s * W + g);
      }
    }
  }
}

// acc = A panel (kMr x depth) x B panel (depth x kNr), then c = alpha * acc + bias + beta * c.
// Every loop over the tile is unrolled, so that acc names registers: indexed at run time, GCC
// keeps it on the stack and stores all of it on every depth step.
void micro_kernel(int64_t depth, const float* a, const float* b, const TileOut& t) {
  __m256 acc[kMr][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMr; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < depth; ++p, a += kMr, b += kNr) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMr; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  const int64_t lanes[2] = {t.cols, t.cols - 8};
  __m256 bias[2];
  for (int j = 0; j < 2; ++j) bias[j] = t.bias ? load_lanes(t.bias + 8 * j, lanes[j]) : _mm256_setzero_ps();
  const __m256 alpha = _mm256_set1_ps(t.alpha), beta = _mm256_set1_ps(t.beta);
#pragma GCC unroll 6
  for (int i = 0; i < kMr; ++i) {
    if (i >= t.rows) continue;
    float* c = t.c + i * t.ldc;
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) {
      __m256 v = _mm256_fmadd_ps(alpha, acc[i][j], bias[j]);
      if (t.beta != 0.0f) v = _mm256_fmadd_ps(beta, load_lanes(c + 8 * j, lanes[j]), v);
      if (t.relu) v = _mm256_max_ps(v, _mm256_setzero_ps());  // NaN and -0 become +0, as v > 0 ? v : 0
      store_lanes(c + 8 * j, v, lanes[j]);
    }
    if (t.post_op) t.post_op(c, t.cols);
  }
}

// One batch item's operands and the block sizes it runs with.
struct Item : ItemOperands {
  int64_t kc, mc;
  const PackedB* packed_b;  // B's blocks packed already, or null
};

}  // namespace

// Every depth block of B, full width, as run_item would pack it.
struct PackedB {
  int64_t n, k, kc;
  bool bf16;
  std::vector<int64_t> block_start;  // per depth block, in floats
  AlignedBuffer<float> panels;

  bool fits(int64_t n_, int64_t k_, int64_t kc_, bool bf16_) const {
    return n == n_ && k == k_ && kc == kc_ && bf16 == bf16_;
  }
};

namespace {

// C[ic.., jc..] (+)= packed A block (mc x kc) x packed B block (kc x nc): the first depth block
// applies beta and the bias (later ones add), the last one the ReLU and the post-op.
void macro_kernel(const Item& it, const float* a, const float* b, int64_t ic, int64_t mc, int64_t jc, int64_t nc,
                  int64_t kc, bool first_depth, bool last_depth) {
  for (int64_t jr = 0; jr < nc; jr += kNr)
    for (int64_t ir = 0; ir < mc; ir += kMr) {
      const TileOut out = tile_out(it, ic + ir, jc + jr, std::min<int64_t>(kMr, mc - ir),
                                   std::min<int64_t>(kNr, nc - jr), first_depth, last_depth);
      micro_kernel(kc, a + ir * kc, b + jr * kc, out);
    }
}

void pack_b_block(const Item& it, int64_t jc, int64_t nc, int64_t pc, int64_t kc, float* dst) {
  pack_strided<kNr>({it.b.at(jc, pc), it.b.rs, it.b.cs}, nc, kc, dst);
  if (it.bf16) round_panels(dst, round_up(nc, kNr) * kc);
}

void pack_a_block(const Item& it, int64_t ic, int64_t mc, int64_t pc, int64_t kc, float* dst) {
  if (it.a_columns) pack_implicit_columns<kMr>(*it.a_columns, ic, mc, pc, kc, dst);
  else pack_strided<kMr>({it.a.at(ic, pc), it.a.rs, it.a.cs}, mc, kc, dst);
  if (it.bf16) round_panels(dst, round_up(mc, kMr) * kc);
}

// A team member's share of one item: per block of its columns and of depth, B's block packed
// (or found packed), then its row blocks of A packed and multiplied.
void run_item(const Item& it, Team team) {
  const Share share = share_of(it.m, it.n, kNr, team);
  const int64_t row_blocks = ceil_div(it.m, it.mc);
  if (share.first_block >= row_blocks || share.col_begin >= share.col_end) return;
  float* a_pack = thread_buffer<APanels, float>().reserve(round_up(it.mc, kMr) * it.kc);
  float* b_pack = thread_buffer<BPanels, float>().reserve(round_up(std::min(it.n, kNc), kNr) * it.kc);
  for (int64_t jc = share.col_begin; jc < share.col_end; jc += kNc) {
    const int64_t nc = std::min(kNc, share.col_end - jc);
    // pc == 0 runs even for k == 0, so that beta and the bias still apply.
    for (int64_t pc = 0; pc == 0 || pc < it.k; pc += it.kc) {
      const int64_t kc = std::min(it.kc, it.k - pc);
      const float* b = b_pack;
      if (it.packed_b) b = it.packed_b->panels.data() + it.packed_b->block_start[pc / it.kc] + jc * kc;
      else pack_b_block(it, jc, nc, pc, kc, b_pack);
      for (int64_t blk = share.first_block; blk < row_blocks; blk += share.block_step) {
        const int64_t ic = blk * it.mc, mc = std::min(it.mc, it.m - ic);
        pack_a_block(it, ic, mc, pc, kc, a_pack);
        macro_kernel(it, a_pack, b, ic, mc, jc, nc, kc, pc == 0, pc + kc >= it.k);
      }
    }
  }
}

// Batch item i of p, with depth blocks of equal size (a multiple of 8, so that implicit columns'
// runs of 8 never straddle taps) and row blocks that split evenly over a team of `threads`.
Item make_item(const GemmProblem<float>& p, int64_t i, int threads) {
  Item it{item_operands(p, i), 0, 0, nullptr};
  it.kc = depth_block(p.k, kKc, 8);
  const int64_t row_blocks = round_up(ceil_div(p.m, kMc), splits_rows(p.m, p.n) ? threads : 1);
  it.mc = round_up(ceil_div(p.m, row_blocks), kMr);
  if (p.packed_b && p.packed_b->fits(it.n, it.k, it.kc, it.bf16)) it.packed_b = p.packed_b;
  return it;
}

}  // namespace

bool cpu_runs(Bf16Math math) { return math == Bf16Math::rounded; }

// There is one math here; the limit is kept for the tests' sake only.
void limit_bf16_math(Bf16Math) {}

std::shared_ptr<const PackedB> pack_b(const GemmProblem<float>& p) {
  SONO_CHECK(p.batch == 1 && !p.b_shared, "pack_b: one B, not ", p.batch);
  const Item it = make_item(p, 0, 1);  // the depth blocks depend on k alone
  auto packed = std::make_shared<PackedB>(PackedB{it.n, it.k, it.kc, it.bf16, {}, {}});
  const int64_t width = round_up(it.n, kNr);
  int64_t floats = 0;
  for (int64_t pc = 0; pc == 0 || pc < it.k; pc += it.kc) {
    packed->block_start.push_back(floats);
    floats += width * std::min(it.kc, it.k - pc);
  }
  float* panels = packed->panels.reserve(floats);
  for (int64_t pc = 0, block = 0; pc == 0 || pc < it.k; pc += it.kc, ++block)
    pack_b_block(it, 0, it.n, pc, std::min(it.kc, it.k - pc), panels + packed->block_start[block]);
  return packed;
}

bool packed_b_fits(const PackedB& packed, const GemmProblem<float>& p) {
  const Item it = make_item(p, 0, 1);
  return packed.fits(it.n, it.k, it.kc, it.bf16);
}

void sgemm(const GemmProblem<float>& p) { run_items(p, make_item, run_item); }

}  // namespace sono::cpu

#endif  // AVX2 and FMA without AVX-512
