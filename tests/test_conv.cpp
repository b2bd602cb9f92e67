// conv2d, bilinear interpolation and global average pooling: float64 gradchecks in every conv
// regime the models run (regular, strided, 1x1, depthwise 7x7, dilated, atrous, grouped, patch
// stems), forward parity with PyTorch (tests/reference/conv_goldens.py), float32 against float64
// on the vectorised paths, and clear shape errors.
#include <sstream>

#include "helpers.h"
#include "layers/safetensors.h"

using namespace sono;
using namespace sono::test;

namespace {

struct ConvCase {
  const char* name;
  Shape x;  // NHWC
  int64_t cout, kernel;
  Conv2dOptions opt;  // stride, padding, dilation, groups
};

// Odd spatial sizes, channel counts that are not multiples of 8, batches of 1 and 3.
const ConvCase kConvCases[] = {
    {"regular 3x3 stride 1", {1, 7, 6, 5}, 6, 3, {1, 1, 1, 1}},
    {"regular 3x3 stride 2", {3, 9, 7, 3}, 4, 3, {2, 1, 1, 1}},
    {"pointwise 1x1 (GEMM path)", {3, 5, 7, 6}, 5, 1, {1, 0, 1, 1}},
    {"depthwise 7x7 pad 3 (ConvNeXt)", {1, 9, 13, 6}, 6, 7, {1, 3, 1, 6}},
    {"depthwise 3x3 dilation 2 pad 2 (Mix-FFN at OS16)", {3, 7, 10, 5}, 5, 3, {1, 2, 2, 5}},
    {"depthwise 3x3 stride 2", {1, 8, 17, 4}, 4, 3, {2, 1, 1, 4}},
    {"depthwise 3x3, 70 channels (full vector blocks + tail)", {1, 5, 11, 70}, 70, 3, {1, 1, 1, 70}},
    {"atrous depthwise 3x3 dilation 12 pad 12 (ASPP)", {1, 13, 11, 3}, 3, 3, {1, 12, 12, 3}},
    {"atrous dense 3x3 dilation 12 pad 12", {1, 13, 11, 2}, 3, 3, {1, 12, 12, 1}},
    {"dense 3x3 dilation 2 pad 2 (patch_embed4 at OS16)", {1, 6, 7, 4}, 5, 3, {1, 2, 2, 1}},
    {"grouped 3x3 groups 2", {1, 7, 5, 6}, 4, 3, {1, 1, 1, 2}},
    {"stem 4x4 stride 4 (ConvNeXt)", {1, 9, 13, 3}, 5, 4, {4, 0, 1, 1}},
    {"patch embed 7x7 stride 4 pad 3 (MiT)", {1, 9, 10, 3}, 4, 7, {4, 3, 1, 1}},
    {"downsample 2x2 stride 2", {3, 7, 9, 5}, 6, 2, {2, 0, 1, 1}},
    // more output channels than output pixels: columns in the weights' order
    {"downsample 2x2 stride 2, 8 channels out of 6 pixels", {1, 4, 6, 3}, 8, 2, {2, 0, 1, 1}},
    {"grouped 3x3 stride 2 pad 1, 12 channels out of 9 pixels", {1, 5, 5, 4}, 12, 3, {2, 1, 1, 2}},
};

Shape weight_shape(const ConvCase& c) { return {c.cout, c.x[3] / c.opt.groups, c.kernel, c.kernel}; }

Tensor load_golden(const nn::SafetensorsFile& file, const std::string& key) {
  auto it = file.tensors.find(key);
  REQUIRE_MESSAGE(it != file.tensors.end(), "golden tensor ", key, " missing");
  return it->second;
}

}  // namespace

TEST_CASE("conv2d gradients in every regime (float64 central differences)") {
  uint64_t seed = 100;
  for (const ConvCase& c : kConvCases) {
    INFO(std::string(c.name));
    Tensor x = rand64(c.x, ++seed), w = rand64(weight_shape(c), ++seed, 0.5), b = rand64({c.cout}, ++seed);
    expect_gradcheck([&](auto& v) { return conv2d(v[0], v[1], v[2], c.opt); }, {x, w, b});
  }
}

TEST_CASE("conv2d takes non-contiguous input and a frozen weight") {
  Tensor x = rand64({2, 5, 4, 3}, 1).permute({0, 2, 1, 3});  // [2, 4, 5, 3], strided
  Tensor w = rand64({4, 3, 3, 3}, 2);
  expect_gradcheck([&](auto& v) { return conv2d(v[0], w, Tensor(), {1, 1, 1, 1}); }, {x});
  CHECK(max_abs_diff(conv2d(x, w, Tensor(), {1, 1, 1, 1}), conv2d(x.contiguous(), w, Tensor(), {1, 1, 1, 1})) == 0);
}

TEST_CASE("conv2d float32 agrees with float64 on the vectorised and GEMM paths") {
  const ConvCase cases[] = {
      {"depthwise 7x7, 130 channels", {2, 9, 14, 130}, 130, 7, {1, 3, 1, 130}},
      // the register-tiled stride-1 kernel: tiles of 8 pixels with a tail, channel tails,
      // padding other than k / 2 (its input gradient pads k - 1 - padding)
      {"depthwise 3x3 pad 1, 37 channels", {3, 5, 11, 37}, 37, 3, {1, 1, 1, 37}},
      {"depthwise 3x3 pad 0", {1, 6, 19, 16}, 16, 3, {1, 0, 1, 16}},
      {"depthwise 7x7 pad 2, 5 channels", {1, 10, 9, 5}, 5, 7, {1, 2, 1, 5}},
      {"depthwise 7x7 pad 3, rows of 19: a full tile of 16 and a tail", {2, 8, 19, 20}, 20, 7, {1, 3, 1, 20}},
      {"atrous depthwise d12, 70 channels", {1, 13, 11, 70}, 70, 3, {1, 12, 12, 70}},
      {"dense 3x3 stride 2", {2, 9, 11, 20}, 24, 3, {2, 1, 1, 1}},
      {"pointwise", {2, 6, 5, 33}, 17, 1, {1, 0, 1, 1}},
      {"sr 4x4 stride 4, 24 channels out of 9 pixels", {1, 12, 13, 20}, 24, 4, {4, 0, 1, 1}},
  };
  uint64_t seed = 200;
  for (const ConvCase& c : cases) {
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

TEST_CASE("bilinear gradients: both align_corners modes, up x4, down, non-integer ratios") {
  struct ResizeCase {
    Shape x;
    int64_t out_h, out_w;
  };
  const ResizeCase cases[] = {{{1, 3, 4, 5}, 12, 16}, {{3, 9, 11, 2}, 4, 5}, {{1, 5, 7, 3}, 8, 11},
                              {{2, 7, 5, 3}, 3, 9}, {{2, 1, 1, 3}, 5, 7}};
  uint64_t seed = 300;
  for (const ResizeCase& c : cases)
    for (bool align_corners : {true, false}) {
      INFO(shape_str(c.x) << " -> " << c.out_h << "x" << c.out_w << " align_corners " << align_corners);
      expect_gradcheck([&](auto& v) { return interpolate_bilinear(v[0], c.out_h, c.out_w, align_corners); },
                       {rand64(c.x, ++seed)});
    }
}

TEST_CASE("global_avg_pool: per-image channel means and gradient") {
  Tensor x = Tensor::from_vector({1, 10, 2, 20, 3, 30, 4, 40}, {1, 2, 2, 2}, DType::f64);
  Tensor y = global_avg_pool(x);
  CHECK(y.shape() == Shape{1, 1, 1, 2});
  check_values(y, {2.5, 25}, 1e-12);
  expect_gradcheck([](auto& v) { return global_avg_pool(v[0]); }, {rand64({3, 5, 7, 6}, 9)});
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
