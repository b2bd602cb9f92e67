// conv2d, bilinear interpolation and global average pooling: forward parity with PyTorch
// (tests/reference/conv_goldens.py), float32 against float64 on the vectorised paths, values by
// hand, and clear shape errors. Their float64 gradchecks, in every conv regime the models run,
// are rows of the op table (test_cuda_op_parity.cpp).
#include <algorithm>
#include <cmath>
#include <sstream>

#include "helpers.h"
#include "layers/safetensors.h"
#include "tensor/autocast.h"

using namespace sono;
using namespace sono::test;

namespace {

struct ConvCase {
  const char* name;
  Shape x;  // NHWC
  int64_t cout, kernel;
  Conv2dOptions opt;  // stride, padding, dilation, groups
};

Shape weight_shape(const ConvCase& c) { return {c.cout, c.x[3] / c.opt.groups, c.kernel, c.kernel}; }

// One case per CPU conv path (and its tails).
const ConvCase kPathCases[] = {
    {"depthwise 7x7, 130 channels", {2, 9, 14, 130}, 130, 7, {1, 3, 1, 130}},
    // the register-tiled stride-1 kernel: tiles of 8 pixels with a tail, channel tails,
    // padding other than k / 2 (its input gradient pads k - 1 - padding)
    {"depthwise 3x3 pad 1, 37 channels", {3, 5, 11, 37}, 37, 3, {1, 1, 1, 37}},
    {"depthwise 3x3 pad 0", {1, 6, 19, 16}, 16, 3, {1, 0, 1, 16}},
    {"depthwise 7x7 pad 2, 5 channels", {1, 10, 9, 5}, 5, 7, {1, 2, 1, 5}},
    {"depthwise 7x7 pad 3, rows of 19: a full tile of 16 and a tail", {2, 8, 19, 20}, 20, 7, {1, 3, 1, 20}},
    {"atrous depthwise d12, 70 channels", {1, 13, 11, 70}, 70, 3, {1, 12, 12, 70}},
    {"dense 3x3 stride 2", {2, 9, 11, 20}, 24, 3, {2, 1, 1, 1}},
    // a stem's few columns a pixel, written and multiplied in cached blocks of output rows:
    // blocks of 8 of the 14 rows, the first reaching into the second image
    {"7x7 stride 2, 3 channels: blocks of output rows", {2, 14, 400, 3}, 8, 7, {2, 3, 1, 1}},
    {"pointwise", {2, 6, 5, 33}, 17, 1, {1, 0, 1, 1}},
    {"sr 4x4 stride 4, 24 channels out of 9 pixels", {1, 12, 13, 20}, 24, 4, {4, 0, 1, 1}},
    // the GEMM reading the columns from the input (channels in runs of 16)
    {"implicit columns 3x3, 32 channels", {2, 9, 11, 32}, 24, 3, {1, 1, 1, 1}},
    {"implicit columns 3x3 stride 2, dilation 2, 48 channels", {1, 13, 12, 48}, 20, 3, {2, 2, 2, 1}},
    {"implicit columns, 2 groups of 16 channels", {2, 8, 8, 32}, 16, 3, {1, 1, 1, 2}},
    // Winograd F(4x4, 3x3), forward and input gradient: whole tiles; tiles overhanging the
    // output with channel tails; padding 0 and 2 (the input gradient's 2 and 0)
    {"winograd 3x3, 8x8 outputs", {2, 8, 8, 16}, 32, 3, {1, 1, 1, 1}},
    {"winograd 3x3, 11x9 outputs, 21 channels in, 19 out", {2, 11, 9, 21}, 19, 3, {1, 1, 1, 1}},
    {"winograd 3x3 pad 0", {1, 12, 14, 16}, 16, 3, {1, 0, 1, 1}},
    {"winograd 3x3 pad 2", {1, 8, 9, 32}, 17, 3, {1, 2, 1, 1}},
    // frozen weights: chunks of a few row tiles of sgemm, split inside an image and across two
    {"winograd 3x3, 5x5 tiles an image in chunks", {2, 20, 18, 20}, 24, 3, {1, 1, 1, 1}},
    // stride-1 input gradients as the forward of the turned kernel (turned_conv.h): reading
    // grad_out's columns in place (32 channels), gathering them (20); padding 0 turns into 2
    {"turned input gradient: 3x3 dilation 2, 32 channels out", {2, 10, 9, 24}, 32, 3, {1, 2, 2, 1}},
    {"turned input gradient: 5x5 pad 1, 20 channels out", {1, 9, 8, 16}, 20, 5, {1, 1, 1, 1}},
    {"turned input gradient: 3x3 dilation 2 pad 0", {1, 11, 10, 16}, 16, 3, {1, 0, 2, 1}},
    // depth blocks: 3 of AMX's (9 x 256 = 2304 steps), 9 of float32's; 70 outputs: a column tail
    {"implicit columns 3x3, 256 channels, 6x6 outputs", {2, 6, 6, 256}, 70, 3, {1, 1, 1, 1}},
};

Tensor load_golden(const nn::SafetensorsFile& file, const std::string& key) {
  auto it = file.tensors.find(key);
  REQUIRE_MESSAGE(it != file.tensors.end(), "golden tensor ", key, " missing");
  return it->second;
}

}  // namespace

TEST_CASE("conv2d of a non-contiguous input equals that of its contiguous copy") {
  Tensor x = rand64({2, 5, 4, 3}, 1).permute({0, 2, 1, 3});  // [2, 4, 5, 3], strided
  Tensor w = rand64({4, 3, 3, 3}, 2);
  CHECK(max_abs_diff(conv2d(x, w, Tensor(), {1, 1, 1, 1}), conv2d(x.contiguous(), w, Tensor(), {1, 1, 1, 1})) == 0);
}

TEST_CASE("conv2d float32 agrees with float64 on the vectorised and GEMM paths") {
  uint64_t seed = 200;
  for (const ConvCase& c : kPathCases) {
    INFO(std::string(c.name));
    Tensor x = rand64(c.x, ++seed), w = rand64(weight_shape(c), ++seed, 0.2);
    Tensor g = rand64(conv2d(x, w, Tensor(), c.opt).shape(), ++seed);
    auto run = [&](DType dt) {
      Tensor xs = x.detach().to(dt).requires_grad_(), ws = w.detach().to(dt).requires_grad_();
      Tensor y = conv2d(xs, ws, Tensor(), c.opt);
      autograd::run_backward(y, g.to(dt));
      return std::vector<Tensor>{y, xs.grad(), ws.grad()};
    };
    auto r64 = run(DType::f64), r32 = run(DType::f32);
    for (size_t i = 0; i < r64.size(); ++i) {
      INFO("output " << i << " (0 = y, 1 = grad_x, 2 = grad_w)");
      CHECK(max_abs_diff(r32[i].to(DType::f64), r64[i]) < 1e-4);
    }
  }
}

TEST_CASE("conv2d_relu and a biased conv2d without gradients equal the composed kernels on every path") {
  uint64_t seed = 300;
  for (const ConvCase& c : kPathCases) {
    INFO(std::string(c.name));
    const Tensor x = rand64(c.x, ++seed), w = rand64(weight_shape(c), ++seed, 0.2), b = rand64({c.cout}, ++seed);
    for (auto [dtype, precision] : {std::pair{DType::f64, Precision::f32}, std::pair{DType::f32, Precision::f32},
                                    std::pair{DType::f32, Precision::bf16}}) {
      INFO(dtype_name(dtype) << (precision == Precision::bf16 ? " with bf16 products" : ""));
      Autocast autocast(Device::cpu, precision);
      const Tensor xs = x.to(dtype), ws = w.to(dtype), bs = b.to(dtype);
      for (const Tensor& bias : {bs, Tensor()}) {
        INFO((bias.defined() ? "with" : "without") << " a bias");
        // Recording gradients, the conv and its bias add are kernels of their own.
        const Tensor separate = conv2d(xs, ws.detach().requires_grad_(), bias, c.opt).detach();
        const Tensor composed = relu(separate);
        autograd::NoGradGuard no_grad;
        const Tensor fused = conv2d_relu(xs, ws, bias, c.opt);
        CHECK(max_abs_diff(conv2d(xs, ws, bias, c.opt), separate) <= (dtype == DType::f64 ? 1e-12 : 1e-5));
        CHECK(max_abs_diff(fused, composed) <= (dtype == DType::f64 ? 1e-12 : 1e-5));
        const std::vector<double> values = fused.to_vector();
        CHECK(*std::min_element(values.begin(), values.end()) == 0);  // some outputs were negative
      }
    }
  }
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// Weights packed on each call go in their own (ci, ky, kx) order where a conv has more output
// channels than output pixels; frozen ones are packed once, in tap order at every size.
bool packs_in_weight_order(const ConvCase& c, const Tensor& out) {
  return c.kernel > 1 && !(c.opt.groups == c.x[3] && c.cout == c.x[3]) && c.cout > out.shape()[1] * out.shape()[2];
}

// Frozen weights (a model fused for inference) are packed once per conv and kept while their
// storage lives: the same bits as packing them on every call where both sum in one order, the
// same to float rounding where that packs in weight order, in float32 and with bf16 products;
// new weights at a reused address are packed anew.
TEST_CASE("a conv's frozen weights, packed once, give the result of weights packed on each call") {
  uint64_t seed = 400;
  int reordered = 0;
  for (const ConvCase& c : kPathCases) {
    INFO(std::string(c.name));
    const Tensor x = rand64(c.x, ++seed).to(DType::f32), b = rand64({c.cout}, ++seed).to(DType::f32);
    autograd::NoGradGuard no_grad;
    for (Precision precision : {Precision::f32, Precision::bf16}) {
      INFO((precision == Precision::bf16 ? "bf16 products" : "float32"));
      Autocast autocast(Device::cpu, precision);
      for (int round = 0; round < 2; ++round) {
        const Tensor w = rand64(weight_shape(c), ++seed, 0.2).to(DType::f32), frozen = w.clone();
        frozen.impl().storage->frozen = true;
        for (int call = 0; call < 2; ++call) {  // the first packs, the second finds them
          const Tensor per_call = conv2d(x, w, b, c.opt);
          const double tolerance = packs_in_weight_order(c, per_call) ? 1e-5 * max_abs(per_call) : 0;
          reordered += tolerance > 0;
          CHECK(max_abs_diff(conv2d(x, frozen, b, c.opt), per_call) <= tolerance);
          CHECK(max_abs_diff(conv2d_relu(x, frozen, b, c.opt), conv2d_relu(x, w, b, c.opt)) <= tolerance);
        }
      }
    }
  }
  CHECK(reordered > 0);  // a case whose per-call packing is in weight order
}

TEST_CASE("Winograd conv reuses its transformed weights only while the weights are unchanged") {
  const Tensor x = rand64({2, 8, 8, 16}, 11).to(DType::f32);
  Tensor w = rand64({32, 16, 3, 3}, 12, 0.2).to(DType::f32);
  const Conv2dOptions opt{1, 1, 1, 1};
  const Tensor first = conv2d(x, w, Tensor(), opt);
  CHECK(max_abs_diff(conv2d(x, w, Tensor(), opt), first) == 0);
  // In place, as an optimizer step writes, and in the last filter: the whole copy is compared.
  w.data<float>()[w.numel() - 1] += 1.0f;
  const Tensor changed = conv2d(x, w, Tensor(), opt);
  CHECK(max_abs_diff(changed, first) > 1e-3);
  CHECK(max_abs_diff(changed.to(DType::f64), conv2d(x.to(DType::f64), w.to(DType::f64), Tensor(), opt)) < 1e-4);
}

TEST_CASE("conv2d and bilinear forward match PyTorch goldens (float64)") {
  const auto file = nn::load_safetensors(source_path("tests/golden/conv.safetensors"));
  int checked = 0;
  for (const auto& [key, spec] : file.metadata) {
    std::istringstream args(spec);
    if (key.rfind("conv.", 0) == 0) {
      const std::string name = key.substr(5);
      Conv2dOptions opt;
      args >> opt.stride >> opt.padding >> opt.dilation >> opt.groups;
      Tensor y = conv2d(load_golden(file, name + ".x"), load_golden(file, name + ".w"), load_golden(file, name + ".b"), opt);
      INFO(name);
      CHECK(max_abs_diff(y, load_golden(file, name + ".y")) < 1e-10);
    } else if (key.rfind("resize.", 0) == 0) {
      const std::string name = key.substr(7);
      int64_t out_h = 0, out_w = 0, align_corners = 0;
      args >> out_h >> out_w >> align_corners;
      Tensor y = interpolate_bilinear(load_golden(file, name + ".x"), out_h, out_w, align_corners != 0);
      INFO(name);
      CHECK(max_abs_diff(y, load_golden(file, name + ".y")) < 1e-10);
    } else {
      continue;
    }
    ++checked;
  }
  CHECK(checked == 17);
}

TEST_CASE("bilinear interpolation by hand") {
  Tensor x = Tensor::from_vector({0, 1, 2, 3}, {1, 2, 2, 1}, DType::f64);
  // align_corners=True: corners stay, the middle is the mean.
  check_values(interpolate_bilinear(x, 3, 3, true), {0, 0.5, 1, 1, 1.5, 2, 2, 2.5, 3}, 1e-12);
  // align_corners=False, 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (edge).
  check_values(interpolate_bilinear(x.slice(1, 0, 1), 1, 4, false), {0, 0.25, 0.75, 1}, 1e-12);
  // 1x1 -> any size broadcasts the value.
  check_values(interpolate_bilinear(Tensor::from_vector({7}, {1, 1, 1, 1}, DType::f64), 2, 3, false),
               {7, 7, 7, 7, 7, 7}, 1e-12);
}

TEST_CASE("global_avg_pool: per-image channel means") {
  Tensor x = Tensor::from_vector({1, 10, 2, 20, 3, 30, 4, 40}, {1, 2, 2, 2}, DType::f64);
  Tensor y = global_avg_pool(x);
  CHECK(y.shape() == Shape{1, 1, 1, 2});
  check_values(y, {2.5, 25}, 1e-12);
}

TEST_CASE("max_pool2d by hand: windows, padding that never wins, output size as torch") {
  // 4x4, one channel, all negative: zero padding would win every border window.
  std::vector<double> v(16);
  for (int i = 0; i < 16; ++i) v[i] = -1.0 - 0.5 * ((i * 7) % 16);
  const Tensor x = Tensor::from_vector(v, {1, 4, 4, 1}, DType::f64);
  // 3x3, stride 2, padding 1: windows over rows/cols {-1..1} and {1..3}.
  const Tensor y = max_pool2d(x, 3, 2, 1);
  CHECK(y.shape() == Shape{1, 2, 2, 1});
  auto window_max = [&](int r0, int c0) {
    double m = -1e300;
    for (int r = std::max(r0, 0); r <= std::min(r0 + 2, 3); ++r)
      for (int c = std::max(c0, 0); c <= std::min(c0 + 2, 3); ++c) m = std::max(m, v[r * 4 + c]);
    return m;
  };
  check_values(y, {window_max(-1, -1), window_max(-1, 1), window_max(1, -1), window_max(1, 1)}, 0);
  // floor((H + 2p - k) / s) + 1, as torch without ceil_mode: 7 -> 3 (k 3, s 2, p 0), 7 -> 4 (p 1).
  CHECK(max_pool2d(Tensor::ones({2, 7, 9, 3}), 3, 2, 0).shape() == Shape{2, 3, 4, 3});
  CHECK(max_pool2d(Tensor::ones({2, 7, 9, 3}), 3, 2, 1).shape() == Shape{2, 4, 5, 3});
  // The gradient goes to each window's maximum, the first in window order on ties (as torch's
  // argmax), and sums over the windows that share one.
  Tensor t = Tensor::from_vector({1, 5, 2, 5}, {1, 2, 2, 1}, DType::f64);
  t.requires_grad_();
  sum(max_pool2d(t, 2, 2, 0)).backward();
  check_values(t.grad(), {0, 1, 0, 0}, 0);
  Tensor peak = Tensor::from_vector({1, 2, 3, 4, 9, 5, 6, 7, 8}, {1, 3, 3, 1}, DType::f64);
  peak.requires_grad_();
  sum(max_pool2d(peak, 2, 1, 0)).backward();
  check_values(peak.grad(), {0, 0, 0, 0, 4, 0, 0, 0, 0}, 0);
  CHECK_THROWS_WITH_AS(max_pool2d(Tensor::ones({1, 4, 4, 1}), 3, 2, 2), doctest::Contains("at most half the kernel"), Error);
  CHECK_THROWS_WITH_AS(max_pool2d(Tensor::ones({1, 2, 4, 1}), 3, 1, 0), doctest::Contains("smaller than the 3x3 window"), Error);
}

TEST_CASE("conv2d, interpolate and pooling reject bad shapes with clear messages") {
  Tensor x = Tensor::ones({1, 8, 8, 6});
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::ones({4, 5, 3, 3}), Tensor()),
                       "conv2d: weight [4, 5, 3, 3] with groups 1 expects 5 input channels, but input "
                       "[1, 8, 8, 6] has 6",
                       Error);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::ones({4, 3, 3, 3}), Tensor(), {1, 1, 1, 4}),
                       doctest::Contains("not divisible by groups 4"), Error);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::ones({4, 6, 3, 3}), Tensor::ones({5})),
                       doctest::Contains("bias [5] does not match weight [4, 6, 3, 3]"), Error);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::ones({4, 6, 3, 3}), Tensor(), {1, 0, 5, 1}),
                       doctest::Contains("too small for kernel 3x3 with dilation 5"), Error);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::ones({4, 6, 3, 3}), Tensor(), {0, 1, 1, 1}),
                       doctest::Contains("stride >= 1"), Error);
  CHECK_THROWS_WITH_AS(conv2d(Tensor::ones({8, 8, 6}), Tensor::ones({4, 6, 3, 3}), Tensor()),
                       doctest::Contains("NHWC"), Error);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::ones({4, 6, 3, 3}, DType::f64), Tensor()),
                       doctest::Contains("differ in dtype"), Error);
  CHECK_THROWS_WITH_AS(interpolate_bilinear(x, 0, 4, false), doctest::Contains("must be positive"), Error);
  CHECK_THROWS_WITH_AS(global_avg_pool(Tensor::ones({8, 6})), doctest::Contains("NHWC"), Error);
}
