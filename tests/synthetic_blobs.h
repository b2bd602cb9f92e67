#pragma once
// A small lesion data set the tests make themselves: speckled grey "scans" where a bright disc
// is the lesion. benign: small bright disc, malignant: large dimmer disc, normal: none (empty
// mask).
// Written in the class-folder layout: ROOT/images/CLASS/X.png, ROOT/masks/CLASS/X_mask.png.
#include <algorithm>
#include <filesystem>
#include <random>
#include <string>

#include "tools/data/image.h"

namespace sono::test {

struct Blob {
  double cy = 0, cx = 0, radius = 0;  // radius 0: no lesion
  double brightness = 0;
};

inline const char* kBlobClasses[] = {"benign", "malignant", "normal"};

inline Blob draw_blob(int label, int size, std::mt19937& rng) {
  if (label == 2) return {};
  std::uniform_real_distribution<double> small(0.09, 0.13), large(0.2, 0.26);
  double r = (label == 0 ? small(rng) : large(rng)) * size;
  std::uniform_real_distribution<double> centre(r + 2, size - r - 2);
  return {centre(rng), centre(rng), r, label == 0 ? 0.85 : 0.65};
}

inline void render_blob(const Blob& blob, int size, std::mt19937& rng, data::Image& image, data::Mask& mask) {
  image = data::Image(size, size, 1);
  mask = data::Mask(size, size);
  std::normal_distribution<double> speckle(0.0, 0.06);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      double dy = y + 0.5 - blob.cy, dx = x + 0.5 - blob.cx;
      bool inside = blob.radius > 0 && dy * dy + dx * dx <= blob.radius * blob.radius;
      double v = (inside ? blob.brightness : 0.3 + 0.1 * y / size) + speckle(rng);
      image.at(y, x, 0) = static_cast<float>(std::clamp(v, 0.0, 1.0));
      mask.at(y, x) = inside;
    }
}

// `per_class` images per class of `size` x `size` pixels.
inline void write_blob_dataset(const std::filesystem::path& root, int per_class, int size, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int label = 0; label < 3; ++label) {
    auto images = root / "images" / kBlobClasses[label], masks = root / "masks" / kBlobClasses[label];
    std::filesystem::create_directories(images);
    std::filesystem::create_directories(masks);
    for (int i = 0; i < per_class; ++i) {
      data::Image image;
      data::Mask mask;
      render_blob(draw_blob(label, size, rng), size, rng, image, mask);
      std::string name = std::string(kBlobClasses[label]) + "_" + std::to_string(i);
      data::save_image_png(images / (name + ".png"), image);
      data::save_mask_png(masks / (name + "_mask.png"), mask);
    }
  }
}

}  // namespace sono::test
