#include <algorithm>
#include <cmath>

#include "tensor/error.h"
#include "tools/data/image.h"

namespace sono::data {

namespace {

// "Jet" colours: blue (0) through cyan, yellow to red (1).
Rgb jet(float t) {
  auto channel = [t](float centre) { return to_byte(std::clamp(1.5f - std::abs(4 * t - centre), 0.0f, 1.0f)); };
  return {channel(3), channel(2), channel(1)};
}

}  // namespace

Image heatmap_overlay(const Image& image, const Image& heat) {
  SONO_CHECK(heat.channels == 1 && heat.height == image.height && heat.width == image.width,
             "heatmap_overlay: the map is ", heat.width, "x", heat.height, "x", heat.channels, ", the image ",
             image.width, "x", image.height);
  SONO_CHECK(image.channels == 3, "heatmap_overlay: expected an RGB image, got ", image.channels, " channels");
  Image out = image;
  for (size_t p = 0; p < heat.pixels.size(); ++p) {
    const float t = std::clamp(heat.pixels[p], 0.0f, 1.0f), alpha = 0.6f * t;  // cold: the scan shows through
    const Rgb c = jet(t);
    const float colour[3] = {c.r / 255.0f, c.g / 255.0f, c.b / 255.0f};
    for (int k = 0; k < 3; ++k) out.pixels[p * 3 + k] = (1 - alpha) * image.pixels[p * 3 + k] + alpha * colour[k];
  }
  return out;
}

}  // namespace sono::data
