#include "tools/data/model_input.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "tensor/error.h"

namespace sono::data {

int input_channels(InputKind kind) { return kind == InputKind::rgb ? 3 : 4; }

void write_input(const Image& rgb, const Mask& mask, InputKind kind, const Normalisation& norm, float* dst) {
  SONO_CHECK(rgb.channels == 3, "write_input: expected an RGB image, got ", rgb.channels, " channels");
  const bool with_mask = kind != InputKind::rgb;
  const bool levels = kind == InputKind::rgb_lesion_probability;
  SONO_CHECK(!with_mask || (mask.height == rgb.height && mask.width == rgb.width), "write_input: mask is ",
             mask.width, "x", mask.height, " but image is ", rgb.width, "x", rgb.height);
  const int channels = input_channels(kind);
  const size_t n = static_cast<size_t>(rgb.height) * rgb.width;
  float mean[3], std[3];  // float arithmetic, as the loader always did
  for (int c = 0; c < 3; ++c) mean[c] = static_cast<float>(norm.mean[c]), std[c] = static_cast<float>(norm.std[c]);
  for (size_t p = 0; p < n; ++p, dst += channels) {
    for (int c = 0; c < 3; ++c) dst[c] = (rgb.pixels[p * 3 + c] - mean[c]) / std[c];
    if (with_mask) dst[3] = levels ? mask.values[p] / 255.0f : (mask.values[p] ? 1.0f : 0.0f);
  }
}

Tensor model_input(const Image& rgb, const Mask& mask, int size, InputKind kind, const Normalisation& norm) {
  Image small = resize_bilinear(rgb, size, size);
  Mask small_mask = kind != InputKind::rgb ? resize_nearest(mask, size, size) : Mask();
  Tensor input = Tensor::empty({1, size, size, input_channels(kind)});
  write_input(small, small_mask, kind, norm, input.data<float>());
  return input;
}

std::vector<Image> logit_maps(const Tensor& logits) {
  SONO_CHECK(logits.dim() == 4 && logits.size(3) == 1, "logit_maps: expected logits [B, H, W, 1], got ",
             shape_str(logits.shape()));
  const std::vector<double> values = logits.to_vector();
  std::vector<Image> maps;
  for (int64_t i = 0; i < logits.size(0); ++i) {
    Image& map = maps.emplace_back(static_cast<int>(logits.size(1)), static_cast<int>(logits.size(2)), 1);
    std::copy_n(values.begin() + i * map.pixels.size(), map.pixels.size(), map.pixels.begin());
  }
  return maps;
}

Image logit_map(const Tensor& logits, int height, int width) {
  SONO_CHECK(logits.dim() == 4 && logits.size(0) == 1 && logits.size(3) == 1,
             "mask_from_logits: expected logits [1, H, W, 1], got ", shape_str(logits.shape()));
  return resize_bilinear(logit_maps(logits).front(), height, width);
}

Mask mask_from_logit_map(const Image& logit_map) {
  Mask mask(logit_map.height, logit_map.width);
  for (size_t p = 0; p < mask.values.size(); ++p) mask.values[p] = logit_map.pixels[p] > 0;
  return mask;
}

Image probability_map(const Image& logit_map) {
  Image probability = logit_map;
  for (float& p : probability.pixels) p = 1.0f / (1.0f + std::exp(-p));
  return probability;
}

namespace {

// round(255 * sigmoid(x)) steps up at the logits of (k + 0.5) / 255, k = 0..254, at least 4 / 255 apart. A
// scan's map has ~300k pixels: instead of an exponential each, the logit's cell on a 1/128 grid holds the level
// below the cell and the one step that may lie inside it.
struct LevelCells {
  static constexpr double kFrom = -8, kPerUnit = 128;
  static constexpr int kCells = 16 * 128;
  std::array<uint8_t, kCells> below{};
  std::array<double, kCells> step{};
};

const LevelCells& level_cells() {
  static const LevelCells cells = [] {
    std::array<double, 255> steps{};
    for (int k = 0; k < 255; ++k) steps[k] = std::log((k + 0.5) / (254.5 - k));
    LevelCells c;
    for (int i = 0; i < LevelCells::kCells; ++i) {
      const auto first = std::lower_bound(steps.begin(), steps.end(), LevelCells::kFrom + i / LevelCells::kPerUnit);
      c.below[i] = static_cast<uint8_t>(first - steps.begin());
      c.step[i] = first == steps.end() ? std::numeric_limits<double>::quiet_NaN() : *first;  // no step: never >=
    }
    return c;
  }();
  return cells;
}

uint8_t probability_level(float logit) {
  const LevelCells& c = level_cells();
  const double y = (double{logit} - LevelCells::kFrom) * LevelCells::kPerUnit;  // NaN falls in cell 0: level 0
  const int cell = y > 0 ? (y < LevelCells::kCells ? static_cast<int>(y) : LevelCells::kCells - 1) : 0;
  return static_cast<uint8_t>(c.below[cell] + (logit >= c.step[cell]));
}

}  // namespace

Mask probability_levels(const Image& logit_map) {
  Mask levels(logit_map.height, logit_map.width);
  std::transform(logit_map.pixels.begin(), logit_map.pixels.end(), levels.values.begin(), probability_level);
  return levels;
}

Mask probability_levels(const Mask& mask) {
  Mask levels = mask;
  for (uint8_t& v : levels.values) v = v ? 255 : 0;
  return levels;
}

Mask mask_from_logits(const Tensor& logits, int height, int width) {
  return mask_from_logit_map(logit_map(logits, height, width));
}

}  // namespace sono::data
