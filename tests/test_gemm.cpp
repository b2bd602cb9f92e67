// The CPU float32 GEMM against a float64 reference: every transpose combination, tails of the
// micro-tile and of each cache block, batches (one item per thread and a team on one item),
// shared operands, alpha/beta (C not read when beta is 0) and the bias epilogue.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "tensor/cpu/bf16.h"
#include "tensor/cpu/gemm.h"
#include "tests/helpers.h"

namespace sono::test {
namespace {

struct Case {
  int64_t batch, m, n, k;
  bool ta, tb, a_shared, b_shared;
  float alpha, beta;
  bool bias;
};

std::vector<float> random_floats(size_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

// Worst error over C of the float32 GEMM, in units of the rounding bound k * 2^-24 * sum|a b|.
// `bf16`: the GEMM's products read bf16 operands, the reference rounds a and b (`exact`: not).
double run_case(const Case& c, bool bf16 = false, bool exact = false) {
  std::mt19937 rng(static_cast<unsigned>(c.m * 131 + c.n * 17 + c.k));
  const int64_t a_items = c.a_shared ? 1 : c.batch, b_items = c.b_shared ? 1 : c.batch;
  auto a = random_floats(a_items * c.m * c.k, rng), b = random_floats(b_items * c.k * c.n, rng);
  auto bias = random_floats(c.n, rng), c0 = random_floats(c.batch * c.m * c.n, rng);
  std::vector<float> out = c0;
  if (c.beta == 0.0f) std::fill(out.begin(), out.end(), NAN);  // must not be read
  cpu::GemmProblem<float> problem{a.data(), b.data(), out.data(), c.bias ? bias.data() : nullptr, c.batch, c.m, c.n,
                                  c.k, c.ta, c.tb, c.a_shared, c.b_shared, c.alpha, c.beta};
  problem.bf16_operands = bf16;
  cpu::sgemm(problem);
  auto read = [&](float v) { return double(bf16 && !exact ? cpu::round_to_bf16(v) : v); };
  double worst = 0;
  for (int64_t i = 0; i < c.batch; ++i) {
    const float* ai = a.data() + (c.a_shared ? 0 : i * c.m * c.k);
    const float* bi = b.data() + (c.b_shared ? 0 : i * c.k * c.n);
    for (int64_t r = 0; r < c.m; ++r)
      for (int64_t col = 0; col < c.n; ++col) {
        double sum = 0, magnitude = 0;
        for (int64_t p = 0; p < c.k; ++p) {
          double term = read(c.ta ? ai[p * c.m + r] : ai[r * c.k + p]) *
                        read(c.tb ? bi[col * c.k + p] : bi[p * c.n + col]);
          sum += term;
          magnitude += std::abs(term);
        }
        const int64_t at = (i * c.m + r) * c.n + col;
        double want = c.alpha * sum + (c.bias ? bias[col] : 0.0) + c.beta * double(c0[at]);
        double bound = (c.k + 3) * std::ldexp(1.0, -24) * (magnitude + 2.0);
        worst = std::max(worst, std::abs(out[at] - want) / bound);
      }
  }
  return worst;
}

std::vector<Case> gemm_cases() {
  return {
      {1, 1, 1, 1, false, false, false, false, 1.0f, 0.0f, false},
      {1, 15, 33, 17, false, false, false, false, 1.0f, 0.0f, true},   // one past each tile
      {1, 13, 31, 257, true, false, false, false, 0.5f, 1.0f, false},  // two depth blocks
      {1, 29, 47, 65, false, true, false, false, 1.0f, -0.5f, true},
      {1, 27, 19, 300, true, true, false, false, 2.0f, 0.0f, false},
      {2, 1100, 21, 9, false, true, false, true, 1.0f, 0.0f, true},    // several row blocks
      {1, 3, 4100, 5, false, false, false, false, 1.0f, 1.0f, false},  // two column blocks
      {1, 300, 300, 300, false, true, false, true, 1.0f, 0.0f, true},  // a team splits rows
      {1, 49, 1000, 130, false, true, false, false, 1.0f, 0.5f, true}, // ... or columns
      // columns, sharing A's packing over 4 uneven depth blocks; A transposed
      {1, 50, 700, 1000, false, true, false, false, 1.0f, 0.0f, true},
      {1, 33, 512, 600, true, false, false, false, 1.0f, 1.0f, false},
      {1, 70, 90, 2100, false, true, false, false, 1.0f, 0.5f, true},  // depth blocks of AMX's depth too
      {7, 20, 18, 33, false, true, false, false, 1.0f, 0.0f, false},   // an item per thread
      {5, 12, 40, 24, true, false, true, false, 1.0f, 0.0f, false},
      {3, 8, 8, 0, false, false, false, false, 1.0f, 0.5f, true},      // empty depth
  };
}

}  // namespace

TEST_CASE("float32 GEMM equals a float64 reference within its rounding bound") {
  if constexpr (!cpu::kHaveSgemm) {
    MESSAGE("no AVX-512 on this CPU: float32 GEMM runs on Eigen, tested through the ops");
    return;
  }
  for (const Case& c : gemm_cases()) {
    INFO("batch " << c.batch << " m " << c.m << " n " << c.n << " k " << c.k << " ta " << c.ta
                  << " tb " << c.tb);
    CHECK(run_case(c) < 1.0);
  }
}

// Under bf16 autocast the GEMM's operands are read rounded to bfloat16 (as they are packed), and
// their products, exact in float32, accumulate in float32: on AMX tiles or AVX512-BF16's dot
// products where the CPU has them, and with the rounded values' float32 FMAs where not (each
// path the CPU has is tested here).
// Against the unrounded operands the same results are far off, so the check sees the rounding.
TEST_CASE("bf16 operands: the GEMM equals a float64 reference of the rounded operands") {
  if constexpr (!cpu::kHaveSgemm) {
    MESSAGE("no AVX-512 on this CPU: bf16 products run on Eigen, tested through the ops");
    return;
  }
  test::for_each_bf16_math([] {
    double worst_unrounded = 0;
    for (const Case& c : gemm_cases()) {
      INFO("batch " << c.batch << " m " << c.m << " n " << c.n << " k " << c.k << " ta " << c.ta
                    << " tb " << c.tb);
      CHECK(run_case(c, true) < 1.0);
      worst_unrounded = std::max(worst_unrounded, run_case(c, true, true));
    }
    CHECK(worst_unrounded > 100);
  });
}

// B packed once (pack_b) gives every GEMM the bits of B packed on the call, in float32 and each
// bf16 math: teams splitting rows or columns, several depth and column blocks, tails; a PackedB
// of other shapes is not used.
TEST_CASE("a prepacked B gives the GEMM of B packed on each call, bit for bit") {
  if constexpr (!cpu::kHaveSgemm) {
    MESSAGE("no AVX-512 on this CPU: no sgemm to pack for");
    return;
  }
  auto check = [](bool bf16) {
    for (const Case& c : gemm_cases()) {
      if (c.batch != 1 || c.k == 0) continue;
      INFO("m " << c.m << " n " << c.n << " k " << c.k << " ta " << c.ta << " tb " << c.tb);
      std::mt19937 rng(static_cast<unsigned>(c.m + c.n + c.k));
      auto a = random_floats(c.m * c.k, rng), b = random_floats(c.k * c.n, rng), bias = random_floats(c.n, rng);
      std::vector<float> packed_out(c.m * c.n, 0.0f), plain_out(c.m * c.n, 0.0f);
      cpu::GemmProblem<float> p{a.data(), b.data(), plain_out.data(), c.bias ? bias.data() : nullptr, 1, c.m, c.n,
                                c.k, c.ta, c.tb, false, false, c.alpha, 0.0f};
      p.bf16_operands = bf16;
      cpu::sgemm(p);
      const auto packed = cpu::pack_b(p);
      p.packed_b = packed.get();
      p.c = packed_out.data();
      cpu::sgemm(p);
      CHECK(packed_out == plain_out);
      std::vector<float> other_out(c.m * (c.n - 1), 0.0f);  // one column fewer: packs its own
      cpu::GemmProblem<float> narrower = p;
      narrower.n = c.n - 1, narrower.c = other_out.data(), narrower.ldb = c.tb ? c.k : c.n;
      if (narrower.n > 0) {
        cpu::sgemm(narrower);
        std::vector<float> want(other_out.size(), 0.0f);
        narrower.packed_b = nullptr, narrower.c = want.data();
        cpu::sgemm(narrower);
        CHECK(other_out == want);
      }
    }
  };
  check(false);
  test::for_each_bf16_math([&] { check(true); });
}

namespace {

// A convolution's column matrix (rows: output pixels; depth: tap-major channels) copied out of
// an NHWC input by loops, as the reference for reading it implicitly.
std::vector<float> explicit_columns(const std::vector<float>& x, int64_t images, const cpu::ImplicitColumns& c,
                                    int64_t kh) {
  std::vector<float> cols;
  for (int64_t n = 0; n < images; ++n)
    for (int64_t oy = 0; oy < c.oh; ++oy)
      for (int64_t ox = 0; ox < c.ow; ++ox)
        for (int64_t tap = 0; tap < kh * c.kw; ++tap)
          for (int64_t ch = 0; ch < c.channels; ++ch) {
            const int64_t y = oy * c.stride - c.padding + tap / c.kw * c.dilation;
            const int64_t xx = ox * c.stride - c.padding + tap % c.kw * c.dilation;
            const bool inside = y >= 0 && y < c.h && xx >= 0 && xx < c.w;
            cols.push_back(inside ? x[((n * c.h + y) * c.w + xx) * c.pixel_stride + (c.x - x.data()) + ch] : 0.0f);
          }
  return cols;
}

}  // namespace

// sgemm reading op(A) as implicit columns gives the GEMM of the explicit column matrix: padding
// on every side, strides, dilation, a channel offset inside wider pixels (a group), several
// depth blocks (k = 9 x 48) and row counts that are not a multiple of the micro-tile.
TEST_CASE("implicit convolution columns: the GEMM equals that of the column matrix copied out") {
  if constexpr (!cpu::kHaveSgemm) {
    MESSAGE("no AVX-512 on this CPU: convolutions copy their columns out for Eigen");
    return;
  }
  struct ColumnsCase {
    int64_t images, h, w, pixel_stride, channel_offset, channels, kh, kw, stride, padding, dilation, cout;
  };
  const ColumnsCase cases[] = {
      {2, 7, 9, 16, 0, 16, 3, 3, 1, 1, 1, 24},   // 126 rows, padding 1
      {1, 11, 10, 64, 16, 48, 3, 3, 2, 1, 1, 40},  // stride 2, a group's channels at offset 16
      {1, 9, 9, 32, 0, 32, 3, 3, 1, 2, 2, 17},    // dilation 2
      {3, 8, 8, 16, 0, 16, 2, 2, 2, 0, 1, 33},    // 2x2 stride 2 (a ConvNeXt downsample)
  };
  std::mt19937 rng(7);
  for (bool bf16 : {false, true}) {
    for (const ColumnsCase& t : cases) {
      CAPTURE(bf16);
      CAPTURE(t.channels);
      CAPTURE(t.stride);
      CAPTURE(t.dilation);
      const std::vector<float> x = random_floats(t.images * t.h * t.w * t.pixel_stride, rng);
      const int64_t oh = (t.h + 2 * t.padding - t.dilation * (t.kh - 1) - 1) / t.stride + 1;
      const int64_t ow = (t.w + 2 * t.padding - t.dilation * (t.kw - 1) - 1) / t.stride + 1;
      const cpu::ImplicitColumns columns{x.data() + t.channel_offset, t.h, t.w, t.pixel_stride, oh, ow, t.kw,
                                         t.channels, t.stride, t.padding, t.dilation};
      const int64_t m = t.images * oh * ow, k = t.kh * t.kw * t.channels;
      const std::vector<float> cols = explicit_columns(x, t.images, columns, t.kh), w = random_floats(t.cout * k, rng);
      std::vector<float> implicit(m * t.cout, NAN), copied(m * t.cout, NAN);
      cpu::GemmProblem<float> p{cols.data(), w.data(), copied.data(), nullptr, 1, m, t.cout, k,
                                false, true, false, false, 1.0f, 0.0f};
      p.bf16_operands = bf16;
      cpu::sgemm(p);
      p.a = nullptr;
      p.c = implicit.data();
      p.a_columns = &columns;
      cpu::sgemm(p);
      // Depth blocks may be cut differently (multiples of 16 here), so sums may round apart.
      double worst = 0;
      for (size_t i = 0; i < implicit.size(); ++i) worst = std::max(worst, double(std::abs(implicit[i] - copied[i])));
      CHECK(worst < 1e-4);
      CHECK(std::none_of(implicit.begin(), implicit.end(), [](float v) { return std::isnan(v); }));
    }
  }
}

TEST_CASE("linear in float32 follows float64 forward and backward (the GEMM behind both)") {
  Tensor x64 = rand64({3, 17, 45}, 1), w64 = rand64({29, 45}, 2), b64 = rand64({29}, 3);
  auto run = [](Tensor x, Tensor w, Tensor b) {
    x.requires_grad_();
    w.requires_grad_();
    b.requires_grad_();
    Tensor y = linear(x, w, b);
    sum(mul(y, y)).backward();
    return std::vector<Tensor>{y, x.grad(), w.grad(), b.grad()};
  };
  auto got = run(x64.to(DType::f32), w64.to(DType::f32), b64.to(DType::f32));
  auto want = run(x64, w64, b64);
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("output " << i);
    double scale = max_abs_diff(want[i], Tensor::zeros(want[i].shape(), DType::f64));
    CHECK(max_abs_diff(got[i].to(DType::f64), want[i]) < 2e-6 * scale);
  }
}

TEST_CASE("linear gradients with and without bias") {
  Tensor x = rand64({3, 5, 7}, 4), w = rand64({6, 7}, 5), b = rand64({6}, 6);
  expect_gradcheck([](auto& v) { return linear(v[0], v[1], v[2]); }, {x, w, b});
  expect_gradcheck([](auto& v) { return linear(v[0], v[1], Tensor()); }, {x, w});
  CHECK_THROWS_WITH_AS(linear(x, w, rand64({7}, 7)), doctest::Contains("bias [7]"), Error);
}

TEST_CASE("linear_gelu: the GELU epilogue equals gelu(linear) without grad, and falls back with it") {
  Tensor x = rand64({2, 9, 37}, 8), w = rand64({45, 37}, 9, 0.3), b = rand64({45}, 10);
  for (DType dt : {DType::f64, DType::f32}) {
    INFO(dtype_name(dt));
    Tensor xs = x.to(dt), ws = w.to(dt), bs = b.to(dt);
    Tensor want = gelu(linear(xs, ws, bs));
    Tensor fused;
    {
      autograd::NoGradGuard no_grad;
      fused = linear_gelu(xs, ws, bs);
    }
    CHECK(max_abs_diff(fused.to(DType::f64), want.to(DType::f64)) < (dt == DType::f32 ? 2e-6 : 1e-13));
  }
  expect_gradcheck([](auto& v) { return linear_gelu(v[0], v[1], v[2]); }, {x, w, b});
}

}  // namespace sono::test
