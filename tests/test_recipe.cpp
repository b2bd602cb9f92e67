// The training-recipe pieces one by one: ultrasound augmentation (gamma, speckle),
// class-balanced sampling, mixup and CutMix, the weight average, test-time flips, and what a
// checkpoint card's fitted values (temperature, empty-image threshold) do to a model's outputs.
#include <map>
#include <numeric>

#include "helpers.h"
#include "synthetic_blobs.h"
#include "layers/linear.h"
#include "tools/app/inference.h"
#include "tools/app/recipe.h"
#include "tools/app/weight_average.h"
#include "tools/data/augment.h"
#include "tools/data/dataset.h"
#include "tools/data/loader.h"
#include "tools/data/mixup.h"
#include "tools/data/seeding.h"

using namespace sono;
using namespace sono::data;

TEST_CASE("gamma and speckle: v^gamma exactly, speckle keeps the mean and scales the spread, mask untouched") {
  Image image(64, 64, 3, 0.5f);
  apply_photometric(image, {.brightness = 0, .contrast = 1, .gamma = 2});
  for (float v : image.pixels) CHECK(v == doctest::Approx(0.25));

  Image flat(128, 128, 3, 0.4f);
  apply_photometric(flat, {.speckle = 0.15, .speckle_seed = 3});
  double sum = 0, squares = 0;
  const size_t n = flat.pixels.size() / 3;
  for (size_t i = 0; i < flat.pixels.size(); i += 3) {
    CHECK(flat.pixels[i] == flat.pixels[i + 1]);  // one factor per pixel, all channels
    sum += flat.pixels[i];
    squares += flat.pixels[i] * flat.pixels[i];
  }
  double mean = sum / n, std = std::sqrt(squares / n - mean * mean);
  CHECK(mean == doctest::Approx(0.4).epsilon(0.01));
  CHECK(std == doctest::Approx(0.4 * 0.15).epsilon(0.05));

  AugmentOptions us = AugmentOptions::ultrasound();
  CHECK(us.speckle == 0.15);
  CHECK(us.gamma == 0.3);
  Generator gen(5);
  Image scan(32, 32, 3, 0.5f);
  Mask mask(32, 32);
  for (int y = 8; y < 24; ++y)
    for (int x = 8; x < 24; ++x) mask.at(y, x) = 1;
  augment(scan, mask, {.hflip = 0, .vflip = 0, .rotate90 = false, .rotate_degrees = 0, .scale_min = 1,
                       .scale_max = 1, .translate = 0, .brightness = 0, .contrast = 0, .gamma = 0.3, .speckle = 0.15},
          gen);
  CHECK(mask.lesion_pixels() == 16 * 16);
  CHECK(scan.pixels[0] != scan.pixels[3]);  // speckle differs from pixel to pixel
}

// Ultrasound scans have the probe at the top; --keep-upright (the default) keeps them so, and
// keeps every other part of the chain.
TEST_CASE("--keep-upright: the lesion stays in the top half under every draw, other augmentation kept") {
  CHECK(app::RecipeOptions{}.keep_upright);
  for (const char* chain : {"standard", "ultrasound"}) {
    CAPTURE(chain);
    app::RecipeOptions recipe;
    recipe.augment = chain;
    recipe.keep_upright = false;
    const AugmentOptions any = recipe.augment_options();
    recipe.keep_upright = true;
    const AugmentOptions upright = recipe.augment_options();
    CHECK(any.vflip == 0.5);
    CHECK(any.rotate90);
    CHECK(upright.vflip == 0);
    CHECK_FALSE(upright.rotate90);
    CHECK(upright.hflip == any.hflip);
    CHECK(upright.rotate_degrees == any.rotate_degrees);
    CHECK(upright.lesion_crop == any.lesion_crop);
    // A lesion in the top quarter: upright draws keep it in the top half; the others move it
    // down in about half of them.
    int moved_down[2] = {0, 0};
    for (uint64_t seed = 0; seed < 40; ++seed)
      for (int keep = 0; keep < 2; ++keep) {
        Generator gen(seed);
        Image image(64, 64, 3, 0.5f);
        Mask mask(64, 64);
        for (int y = 6; y < 14; ++y) std::fill_n(&mask.at(y, 28), 8, uint8_t{1});
        augment(image, mask, keep ? upright : any, gen);
        size_t bottom = 0;
        for (int y = 32; y < 64; ++y)
          for (int x = 0; x < 64; ++x) bottom += mask.at(y, x);
        moved_down[keep] += bottom > 0;
      }
    CHECK(moved_down[1] == 0);
    CHECK(moved_down[0] >= 10);
  }
}

TEST_CASE("balanced sampling: every class drawn about equally often, epochs keep their length") {
  // 30 benign, 10 malignant, 5 normal blobs
  const std::filesystem::path root = std::filesystem::path(SONO_BINARY_DIR) / "test_recipe_blobs";
  std::filesystem::remove_all(root);
  test::write_blob_dataset(root, 30, 32, 1);
  for (auto [cls, keep] : {std::pair{"malignant", 10}, std::pair{"normal", 5}})
    for (int i = keep; i < 30; ++i) {
      std::string name = std::string(cls) + "_" + std::to_string(i);
      std::filesystem::remove(root / "images" / cls / (name + ".png"));
      std::filesystem::remove(root / "masks" / cls / (name + "_mask.png"));
    }
  auto cache = std::make_shared<SampleCache>(scan_dataset(root / "images", root / "masks"), 32, 2);
  REQUIRE(cache->count() == 45);
  std::vector<size_t> indices(45);
  std::iota(indices.begin(), indices.end(), 0);
  LoaderOptions options;
  options.batch_size = 10;
  options.balanced = true;
  options.augment = false;
  Loader loader(cache, indices, options);
  std::map<int, int> drawn;
  int total = 0;
  for (int epoch = 0; epoch < 20; ++epoch) {
    loader.start_epoch(epoch);
    int in_epoch = 0;
    while (auto batch = loader.next())
      for (int64_t y : batch->labels.to_labels()) ++drawn[static_cast<int>(y)], ++in_epoch;
    CHECK(in_epoch == 45);
    total += in_epoch;
  }
  for (int c = 0; c < 3; ++c) CHECK(drawn[c] == doctest::Approx(total / 3.0).epsilon(0.1));
}

namespace {

// A batch of `b` NHWC images of side `side`, 4 channels, every value distinct.
Batch numbered_batch(int64_t b, int64_t side, std::vector<int64_t> labels) {
  Batch batch;
  std::vector<double> values(static_cast<size_t>(b * side * side * 4));
  std::iota(values.begin(), values.end(), 1.0);
  batch.images = Tensor::from_vector(values, {b, side, side, 4});
  batch.labels = Tensor::from_labels(labels);
  return batch;
}

}  // namespace

TEST_CASE("mixup: every row is lambda * itself + (1 - lambda) * its mirror row, lambda ~ Beta(alpha, alpha)") {
  Batch batch = numbered_batch(4, 3, {0, 1, 2, 0});
  const std::vector<double> before = batch.images.to_vector();
  Generator gen(5);
  mix_batch(batch, {.mixup_alpha = 0.4}, gen);
  const double lambda = batch.mix_weight;
  CHECK(lambda > 0);
  CHECK(lambda < 1);
  CHECK(batch.mix_labels.to_labels() == std::vector<int64_t>{0, 2, 1, 0});
  const std::vector<double> after = batch.images.to_vector();
  const size_t image = before.size() / 4;
  for (size_t i = 0; i < 4; ++i)
    for (size_t k = 0; k < image; ++k)
      REQUIRE(after[i * image + k] ==
              doctest::Approx(lambda * before[i * image + k] + (1 - lambda) * before[(3 - i) * image + k]).epsilon(1e-6));
  // Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.139.
  double sum = 0, squares = 0;
  const int draws = 4000;
  for (int d = 0; d < draws; ++d) {
    Batch pair = numbered_batch(2, 1, {0, 1});
    mix_batch(pair, {.mixup_alpha = 0.4}, gen);
    sum += pair.mix_weight, squares += pair.mix_weight * pair.mix_weight;
  }
  const double mean = sum / draws, variance = squares / draws - mean * mean;
  CHECK(std::abs(mean - 0.5) < 0.02);                  // 3 standard errors
  CHECK(std::abs(variance - 1 / (4 * 1.8)) < 0.01);    // 5; Beta(1, 1) would give 0.083
}

TEST_CASE("CutMix: the same box of the mirror row in every row, lambda the share left unpasted") {
  Batch batch = numbered_batch(3, 16, {0, 1, 2});
  const std::vector<double> before = batch.images.to_vector();
  Generator gen(11);
  mix_batch(batch, {.cutmix_alpha = 1}, gen);
  const std::vector<double> after = batch.images.to_vector();
  const size_t pixels = 16 * 16, image = pixels * 4;
  std::vector<bool> pasted(pixels);
  for (size_t p = 0; p < pixels; ++p) {
    pasted[p] = after[p * 4] != before[p * 4];
    for (size_t c = 0; c < 4; ++c) {  // a pixel comes whole from one image, in rows 0 and 2 alike
      CHECK(after[p * 4 + c] == before[(pasted[p] ? 2 * image : 0) + p * 4 + c]);
      CHECK(after[2 * image + p * 4 + c] == before[(pasted[p] ? 0 : 2 * image) + p * 4 + c]);
      CHECK(after[image + p * 4 + c] == before[image + p * 4 + c]);  // the middle row is its own mirror
    }
  }
  const auto count = static_cast<double>(std::count(pasted.begin(), pasted.end(), true));
  CHECK(count > 0);
  CHECK(batch.mix_weight == doctest::Approx(1 - count / pixels).epsilon(1e-12));
  CHECK(batch.mix_labels.to_labels() == std::vector<int64_t>{2, 1, 0});
}

TEST_CASE("mixed cross-entropy: lambda * CE(own labels) + (1 - lambda) * CE(mirror's), its gradient in float64") {
  Batch batch = numbered_batch(3, 1, {0, 2, 1});
  batch.mix_labels = Tensor::from_labels({1, 2, 0});
  batch.mix_weight = 0.3;
  const Tensor logits = test::rand64({3, 3}, 4);
  const std::vector<double> z = logits.to_vector();
  auto ce = [&](size_t row, size_t label) {
    double sum = 0;
    for (size_t c = 0; c < 3; ++c) sum += std::exp(z[row * 3 + c]);
    return std::log(sum) - z[row * 3 + label];
  };
  const size_t own[3] = {0, 2, 1}, mirror[3] = {1, 2, 0};
  double expected = 0;
  for (size_t r = 0; r < 3; ++r) expected += (0.3 * ce(r, own[r]) + 0.7 * ce(r, mirror[r])) / 3;
  CHECK(mixed_cross_entropy(logits, batch, {}, 0).item() == doctest::Approx(expected).epsilon(1e-12));
  test::expect_gradcheck([&](const std::vector<Tensor>& in) { return mixed_cross_entropy(in[0], batch, {}, 0.1); },
                         {logits});
  Batch plain = batch;  // never mixed: plain cross-entropy
  plain.mix_labels = {};
  CHECK(mixed_cross_entropy(logits, plain, {}, 0).item() ==
        doctest::Approx(cross_entropy(logits, plain.labels, {}, 0).item()).epsilon(1e-15));
}

TEST_CASE("weight average: shadow = decay * shadow + (1 - decay) * weights; swap exchanges them") {
  nn::Linear layer(2, 1);
  layer.load_state_dict({{"weight", Tensor::from_vector({1, 2}, {1, 2})}, {"bias", Tensor::from_vector({0}, {1})}});
  app::WeightAverage average(layer, 0.75);
  layer.load_state_dict({{"weight", Tensor::from_vector({5, 6}, {1, 2})}, {"bias", Tensor::from_vector({4}, {1})}});
  average.update(layer);  // 0.75 * (1, 2, 0) + 0.25 * (5, 6, 4)
  average.swap(layer);
  test::check_values(layer.weight, {2, 3}, 1e-6);
  test::check_values(layer.bias, {1}, 1e-6);
  average.swap(layer);
  test::check_values(layer.weight, {5, 6}, 1e-6);
}

namespace {

// Returns its input's first channel: mirror-equivariant, as a segmentation map should be.
struct FirstChannel : nn::UnaryModule {
  Tensor forward(const Tensor& x) override { return x.slice(3, 0, 1).contiguous(); }
};

// A "classifier" whose two logits are the left and the right column's sum: a mirror swaps them.
struct LeftRight : nn::UnaryModule {
  Tensor forward(const Tensor& x) override {
    std::vector<double> v = x.to_vector();
    const int64_t w = x.size(2);
    return Tensor::from_vector({v[0] + v[static_cast<size_t>(w)], v[static_cast<size_t>(w - 1)] + v[static_cast<size_t>(2 * w - 1)]},
                               {1, 2});
  }
};

}  // namespace

TEST_CASE("flip TTA: a map comes back unmirrored, logits average the two views") {
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {1, 2, 3, 1});
  FirstChannel seg;
  test::check_values(app::forward(seg, x, true), {1, 2, 3, 4, 5, 6}, 1e-6);
  LeftRight cls;
  test::check_values(app::forward(cls, x, false), {5, 9}, 1e-6);
  test::check_values(app::forward(cls, x, true), {7, 7}, 1e-6);
}

TEST_CASE("card calibration: temperature divides the logits, empty_below clears a faint map") {
  app::ModelCard cls;
  cls.task = models::Task::classification;
  Tensor logits = Tensor::from_vector({2, -1, 0.5}, {1, 3});
  test::check_values(app::calibrate(cls, logits), {2, -1, 0.5}, 1e-6);  // no temperature: T = 1
  cls.extra["temperature"] = "2";
  test::check_values(app::calibrate(cls, logits), {1, -0.5, 0.25}, 1e-6);

  app::ModelCard seg;
  seg.task = models::Task::segmentation;
  // image 0: highest probability sigmoid(1) = 0.73; image 1: sigmoid(2) = 0.88
  Tensor maps = Tensor::from_vector({1, -3, -2, -1, 2, -3, 0.5, -1}, {2, 2, 2, 1});
  test::check_values(app::calibrate(seg, maps), maps.to_vector(), 1e-6);
  seg.extra["empty_below"] = "0.8";
  std::vector<double> out = app::calibrate(seg, maps).to_vector();
  for (int i = 0; i < 4; ++i) CHECK(out[i] < 0);               // image 0 cleared
  CHECK(out[4] == 2);                                           // image 1 kept as it was
  CHECK(out[6] == 0.5);
}

TEST_CASE("a segmenter with a malignancy channel: empty_below clears its lesion channel alone") {
  app::ModelCard seg;
  seg.task = models::Task::segmentation;
  seg.extra["empty_below"] = "0.8";
  // [1, 2, 2, 2]: per pixel (lesion, malignancy); the highest lesion probability sigmoid(1) = 0.73
  Tensor maps = Tensor::from_vector({1, 3, -2, 2, -1, -4, -3, 0.5}, {1, 2, 2, 2});
  const std::vector<double> out = app::calibrate(seg, maps).to_vector();
  for (int i = 0; i < 8; i += 2) CHECK(out[i] < -10);     // lesion channel cleared
  for (int i = 1; i < 8; i += 2) CHECK(out[i] == maps.to_vector()[i]);  // malignancy as it was
  test::check_values(app::lesion_channel(maps), {1, -2, -1, -3}, 0);
  CHECK(app::lesion_channel(maps).shape() == Shape{1, 2, 2, 1});
}

TEST_CASE("lesion crop: zooms in up to lesion_zoom and keeps the whole lesion in view") {
  AugmentOptions crop = AugmentOptions::none();
  crop.lesion_crop = 1;
  crop.lesion_zoom = 2;
  auto lesion = [](int y0, int x0, int side) {
    Mask m(64, 64);
    for (int y = y0; y < y0 + side; ++y)
      for (int x = x0; x < x0 + side; ++x) m.at(y, x) = 1;
    return m;
  };
  auto touches_border = [](const Mask& m) {
    for (int i = 0; i < 64; ++i)
      if (m.at(0, i) || m.at(63, i) || m.at(i, 0) || m.at(i, 63)) return true;
    return false;
  };
  bool zoomed = false;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Generator gen(seed);
    Image image(64, 64, 3, 0.5f);
    Mask mask = lesion(40, 6, 10);  // 100 pixels near the bottom-left corner
    augment(image, mask, crop, gen);
    CHECK(mask.lesion_pixels() >= 100);
    CHECK(mask.lesion_pixels() <= 100 * 2 * 2 + 60);  // zoom 2 at the most (plus border pixels)
    CHECK_FALSE(touches_border(mask));                // the whole lesion stays in view
    zoomed |= mask.lesion_pixels() > 200;
  }
  CHECK(zoomed);
  // A lesion probability channel: its faint background (level 3) is not lesion; the crop frames
  // the levels from kLesionLevel.
  AugmentOptions levels = crop;
  levels.lesion_level = kLesionLevel;
  bool zoomed_levels = false;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Generator gen(seed);
    Image image(64, 64, 3, 0.5f);
    Mask mask = lesion(40, 6, 10);
    for (uint8_t& v : mask.values) v = v ? 200 : 3;
    augment(image, mask, levels, gen);
    const Mask framed = [&] {
      Mask m = mask;
      for (uint8_t& v : m.values) v = v >= kLesionLevel;
      return m;
    }();
    CHECK(framed.lesion_pixels() >= 100);
    CHECK_FALSE(touches_border(framed));
    zoomed_levels |= framed.lesion_pixels() > 200;
  }
  CHECK(zoomed_levels);
  // A lesion over 60 of the 64 pixels cannot be zoomed more than 64 / (1.1 * 60) < 1: unchanged.
  Generator gen(1);
  Image image(64, 64, 3, 0.5f);
  Mask big = lesion(2, 2, 60);
  Mask before = big;
  augment(image, big, crop, gen);
  CHECK(big.values == before.values);
}
