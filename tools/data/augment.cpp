#include "tools/data/augment.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"
#include "tools/data/seeding.h"

namespace sono::data {

AugmentOptions AugmentOptions::none() {
  return {.hflip = 0, .vflip = 0, .rotate90 = false, .rotate_degrees = 0, .scale_min = 1, .scale_max = 1,
          .translate = 0, .brightness = 0, .contrast = 0};
}

AugmentOptions AugmentOptions::ultrasound() {
  AugmentOptions o;
  o.contrast = 0.2;
  o.gamma = 0.3;
  o.speckle = 0.15;
  return o;
}

namespace {

struct Mat2 {
  double m00, m01, m10, m11;
  Mat2 operator*(const Mat2& o) const {
    return {m00 * o.m00 + m01 * o.m10, m00 * o.m01 + m01 * o.m11, m10 * o.m00 + m11 * o.m10,
            m10 * o.m01 + m11 * o.m11};
  }
  Mat2 inverse() const {
    double det = m00 * m11 - m01 * m10;
    return {m11 / det, -m01 / det, -m10 / det, m00 / det};
  }
};

Mat2 rotation(double radians) {
  double c = std::cos(radians), s = std::sin(radians);
  return {c, -s, s, c};
}

// Quarter turns exactly (cos/sin of k * pi/2 are not exact in floating point).
Mat2 quarter_turns(int k) {
  static const Mat2 turns[4] = {{1, 0, 0, 1}, {0, -1, 1, 0}, {-1, 0, 0, -1}, {0, 1, -1, 0}};
  return turns[k & 3];
}

}  // namespace

Affine draw_geometry(const AugmentOptions& o, int height, int width, Generator& gen) {
  bool hflip = uniform(gen, 0, 1) < o.hflip;
  bool vflip = uniform(gen, 0, 1) < o.vflip;
  int turns = static_cast<int>(gen.next() % 4);
  double degrees = uniform(gen, -o.rotate_degrees, o.rotate_degrees);
  double scale = uniform(gen, o.scale_min, o.scale_max);
  double tx = uniform(gen, -o.translate, o.translate) * width;
  double ty = uniform(gen, -o.translate, o.translate) * height;
  if (!o.rotate90 || height != width) turns = 0;

  // Source to output about the centre: flip, quarter turns, rotate and scale, translate.
  Mat2 flip{hflip ? -1.0 : 1.0, 0, 0, vflip ? -1.0 : 1.0};
  Mat2 forward = rotation(degrees * M_PI / 180) * Mat2{scale, 0, 0, scale} * quarter_turns(turns) * flip;
  Mat2 inv = forward.inverse();
  double cx = (width - 1) / 2.0, cy = (height - 1) / 2.0;
  // src = inv * (out - centre - t) + centre
  double ox = -cx - tx, oy = -cy - ty;
  return {inv.m00, inv.m01, inv.m00 * ox + inv.m01 * oy + cx, inv.m10, inv.m11, inv.m10 * ox + inv.m11 * oy + cy};
}

void warp(const Image& image, const Mask& mask, const Affine& map, Image& out_image, Mask& out_mask) {
  SONO_CHECK(image.height == mask.height && image.width == mask.width, "warp: image is ", image.width, "x",
             image.height, " but mask is ", mask.width, "x", mask.height);
  const int h = image.height, w = image.width, ch = image.channels;
  out_image = Image(h, w, ch);
  out_mask = Mask(h, w);
  auto value = [&](int y, int x, int c) {  // zero outside the image
    return y >= 0 && x >= 0 && y < h && x < w ? image.at(y, x, c) : 0.0f;
  };
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      double sx = map.a * x + map.b * y + map.c, sy = map.d * x + map.e * y + map.f;
      int mx = static_cast<int>(std::floor(sx + 0.5)), my = static_cast<int>(std::floor(sy + 0.5));
      if (mx >= 0 && my >= 0 && mx < w && my < h) out_mask.at(y, x) = mask.at(my, mx);
      int x0 = static_cast<int>(std::floor(sx)), y0 = static_cast<int>(std::floor(sy));
      if (x0 < -1 || y0 < -1 || x0 >= w || y0 >= h) continue;  // all four neighbours outside
      float fx = static_cast<float>(sx - x0), fy = static_cast<float>(sy - y0);
      for (int c = 0; c < ch; ++c)
        out_image.at(y, x, c) = (1 - fy) * ((1 - fx) * value(y0, x0, c) + fx * value(y0, x0 + 1, c)) +
                                fy * ((1 - fx) * value(y0 + 1, x0, c) + fx * value(y0 + 1, x0 + 1, c));
    }
}

Photometric draw_photometric(const AugmentOptions& o, Generator& gen) {
  Photometric p;
  p.brightness = uniform(gen, -o.brightness, o.brightness);
  p.contrast = 1 + uniform(gen, -o.contrast, o.contrast);
  p.gamma = std::exp(uniform(gen, -o.gamma, o.gamma));
  p.speckle = o.speckle;
  p.speckle_seed = gen.next();
  return p;
}

void apply_photometric(Image& image, const Photometric& p) {
  for (float& v : image.pixels) {
    double jittered = std::clamp(p.contrast * v + p.brightness, 0.0, 1.0);
    v = static_cast<float>(p.gamma == 1 ? jittered : std::pow(jittered, p.gamma));
  }
  if (p.speckle <= 0) return;
  Generator noise(p.speckle_seed);
  // One factor per pixel, shared by its channels: speckle is in the echo, not in a colour.
  const size_t channels = static_cast<size_t>(image.channels);
  for (size_t i = 0; i < image.pixels.size(); i += channels) {
    double factor = 1 + p.speckle * noise.normal();
    for (size_t c = i; c < i + channels; ++c)
      image.pixels[c] = static_cast<float>(std::clamp(image.pixels[c] * factor, 0.0, 1.0));
  }
}

void augment(Image& image, Mask& mask, const AugmentOptions& o, Generator& gen) {
  Affine map = draw_geometry(o, image.height, image.width, gen);
  Photometric photometric = draw_photometric(o, gen);
  Image warped;
  Mask warped_mask;
  warp(image, mask, map, warped, warped_mask);
  apply_photometric(warped, photometric);
  image = std::move(warped);
  mask = std::move(warped_mask);
}

}  // namespace sono::data
