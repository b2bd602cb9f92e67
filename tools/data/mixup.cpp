#include "tools/data/mixup.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tensor/ops.h"
#include "tools/data/seeding.h"

namespace sono::data {

namespace {

// Gamma(alpha, 1) by Marsaglia and Tsang's method (alpha < 1 boosted by U^(1 / alpha)), on
// seeding.h's uniform draws: std's distributions differ between standard libraries.
double sample_gamma(double alpha, Generator& gen) {
  if (alpha < 1) return sample_gamma(alpha + 1, gen) * std::pow(uniform(gen, 1e-300, 1), 1 / alpha);
  const double d = alpha - 1.0 / 3, c = 1 / std::sqrt(9 * d);
  for (;;) {
    const double u1 = uniform(gen, 1e-300, 1), u2 = uniform(gen, 0, 1);
    const double x = std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);  // Box-Muller
    const double v = std::pow(1 + c * x, 3);
    if (v <= 0) continue;
    if (std::log(uniform(gen, 1e-300, 1)) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
}

double sample_beta(double alpha, Generator& gen) {
  const double x = sample_gamma(alpha, gen), y = sample_gamma(alpha, gen);
  return x + y > 0 ? x / (x + y) : 0.5;
}

struct Box {
  int64_t top, left, bottom, right;  // rows [top, bottom), columns [left, right)
};

// A box of side sqrt(1 - lambda) times the image's around a uniform centre, clipped to the image
// (timm's rand_bbox): the clipping is why lambda is then taken from the box's real area.
Box cut_box(int64_t side, double lambda, Generator& gen) {
  const auto cut = static_cast<int64_t>(std::lround(side * std::sqrt(1 - lambda)));
  const auto cy = static_cast<int64_t>(uniform(gen, 0, side)), cx = static_cast<int64_t>(uniform(gen, 0, side));
  auto clip = [side](int64_t v) { return std::clamp<int64_t>(v, 0, side); };
  return {clip(cy - cut / 2), clip(cx - cut / 2), clip(cy + cut / 2), clip(cx + cut / 2)};
}

}  // namespace

void mix_batch(Batch& batch, const MixOptions& o, Generator& gen) {
  const int64_t b = batch.images.size(0), side = batch.images.size(1), channels = batch.images.size(3);
  if (!o.enabled() || b < 2) return;
  const bool cutmix = o.cutmix_alpha > 0 && (o.mixup_alpha <= 0 || uniform(gen, 0, 1) < 0.5);
  double lambda = sample_beta(cutmix ? o.cutmix_alpha : o.mixup_alpha, gen);
  float* images = batch.images.data<float>();
  const int64_t image_size = side * side * channels;
  const std::vector<float> original(images, images + b * image_size);
  auto partner = [&](int64_t i) { return original.data() + (b - 1 - i) * image_size; };
  if (cutmix) {
    const Box box = cut_box(side, lambda, gen);
    for (int64_t i = 0; i < b; ++i)
      for (int64_t y = box.top; y < box.bottom; ++y) {
        const int64_t at = (y * side + box.left) * channels, count = (box.right - box.left) * channels;
        std::copy(partner(i) + at, partner(i) + at + count, images + i * image_size + at);
      }
    lambda = 1 - static_cast<double>((box.bottom - box.top) * (box.right - box.left)) / static_cast<double>(side * side);
  } else {
    const auto own = static_cast<float>(lambda), other = static_cast<float>(1 - lambda);
    for (int64_t i = 0; i < b; ++i)
      for (int64_t k = 0; k < image_size; ++k) images[i * image_size + k] = own * original[i * image_size + k] + other * partner(i)[k];
  }
  std::vector<int64_t> labels = batch.labels.to_labels();
  std::reverse(labels.begin(), labels.end());
  batch.mix_labels = Tensor::from_labels(labels);
  batch.mix_weight = lambda;
}

Tensor mixed_cross_entropy(const Tensor& logits, const Batch& batch, const Tensor& class_weights,
                           double label_smoothing) {
  Tensor own = cross_entropy(logits, batch.labels, class_weights, label_smoothing);
  if (!batch.mix_labels.defined()) return own;
  Tensor other = cross_entropy(logits, batch.mix_labels.to(logits.device()), class_weights, label_smoothing);
  return add(mul(own, batch.mix_weight), mul(other, 1 - batch.mix_weight));
}

}  // namespace sono::data
