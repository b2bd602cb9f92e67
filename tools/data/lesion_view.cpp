#include "tools/data/lesion_view.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"

namespace sono::data {

namespace {

// [begin, begin + length) of a side of `pixels`, from its fractions; at least one pixel.
std::pair<int, int> span_in_pixels(double begin, double length, int pixels) {
  const int width = std::clamp(static_cast<int>(std::lround(length * pixels)), 1, pixels);
  const int start = std::clamp(static_cast<int>(std::lround(begin * pixels)), 0, pixels - width);
  return {start, width};
}

void check_inside(const Window& w, int width, int height) {
  SONO_CHECK(w.x >= 0 && w.y >= 0 && w.width > 0 && w.height > 0 && w.x + w.width <= width &&
                 w.y + w.height <= height,
             "crop: window ", w.width, "x", w.height, " at (", w.x, ", ", w.y, ") is outside the ", width, "x",
             height, " image");
}

}  // namespace

Window lesion_window(const Mask& mask, double context) {
  int x0 = mask.width, x1 = -1, y0 = mask.height, y1 = -1;
  for (int y = 0; y < mask.height; ++y)
    for (int x = 0; x < mask.width; ++x)
      if (mask.at(y, x)) x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (x1 < 0) return Window::whole(mask.width, mask.height);
  const double left = static_cast<double>(x0) / mask.width, right = static_cast<double>(x1 + 1) / mask.width;
  const double top = static_cast<double>(y0) / mask.height, bottom = static_cast<double>(y1 + 1) / mask.height;
  const double box = std::max(right - left, bottom - top);
  const double side = std::clamp(box * (1 + 2 * context), kMinWindowFraction, 1.0);
  const double centre_x = (left + right) / 2, centre_y = (top + bottom) / 2;
  const double begin_x = std::clamp(centre_x - side / 2, 0.0, 1 - side);
  const double begin_y = std::clamp(centre_y - side / 2, 0.0, 1 - side);
  auto [x, width] = span_in_pixels(begin_x, side, mask.width);
  auto [y, height] = span_in_pixels(begin_y, side, mask.height);
  return {x, y, width, height};
}

Image crop(const Image& image, const Window& w) {
  check_inside(w, image.width, image.height);
  Image out(w.height, w.width, image.channels);
  const size_t row = static_cast<size_t>(w.width) * image.channels;
  for (int y = 0; y < w.height; ++y)
    std::copy_n(&image.pixels[(static_cast<size_t>(w.y + y) * image.width + w.x) * image.channels], row,
                &out.pixels[y * row]);
  return out;
}

Mask crop(const Mask& mask, const Window& w) {
  check_inside(w, mask.width, mask.height);
  Mask out(w.height, w.width);
  for (int y = 0; y < w.height; ++y)
    std::copy_n(&mask.values[static_cast<size_t>(w.y + y) * mask.width + w.x], w.width, &out.values[y * w.width]);
  return out;
}

void apply_lesion_view(Image& image, Mask& mask, double context) {
  if (context <= 0) return;
  SONO_CHECK(mask.height == image.height && mask.width == image.width, "lesion view: mask is ", mask.width, "x",
             mask.height, " but image is ", image.width, "x", image.height);
  const Window window = lesion_window(mask, context);
  image = crop(image, window);
  mask = crop(mask, window);
}

}  // namespace sono::data
