#include "tools/data/augment.h"

#include <algorithm>
#include <cmath>
#include <optional>

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
  o.lesion_crop = 0.5;
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

namespace {

struct Box {
  int y0, x0, y1, x1;  // inclusive
};

std::optional<Box> lesion_box(const Mask& m, uint8_t level) {
  Box b{m.height, m.width, -1, -1};
  for (int y = 0; y < m.height; ++y)
    for (int x = 0; x < m.width; ++x)
      if (m.at(y, x) >= level) b = {std::min(b.y0, y), std::min(b.x0, x), std::max(b.y1, y), std::max(b.x1, x)};
  if (b.y1 < 0) return std::nullopt;
  return b;
}

// The centre (continuous coordinates) of a window of half-width `half` on an axis of `side`
// pixels: inside the image and, when the lesion spans pixels lo..hi, around it; `t` in [0, 1)
// places it in the range that allows.
double window_centre(double lo, double hi, double half, int side, double t) {
  double from = std::max(half, hi + 1 - half), to = std::min(side - half, lo + half);
  return from <= to ? from + t * (to - from) : (lo + hi + 1) / 2;
}

}  // namespace

Affine draw_lesion_crop(const AugmentOptions& o, const Mask& mask, Generator& gen) {
  bool drawn = uniform(gen, 0, 1) < o.lesion_crop;
  double zoom = uniform(gen, 1, std::max(o.lesion_zoom, 1.0));
  double ty = uniform(gen, 0, 1), tx = uniform(gen, 0, 1);
  if (!drawn) return {};
  const int h = mask.height, w = mask.width;
  Box box = lesion_box(mask, o.lesion_level).value_or(Box{h, w, -1, -1});  // no lesion: a window anywhere
  if (box.y1 >= 0) {  // the zoom that still holds the box and a 10% margin
    double span = 1.1 * std::max((box.y1 - box.y0 + 1) / double(h), (box.x1 - box.x0 + 1) / double(w));
    zoom = std::min(zoom, 1 / span);
  }
  if (zoom <= 1) return {};
  double cy = window_centre(box.y0, box.y1, h / (2 * zoom), h, ty);
  double cx = window_centre(box.x0, box.x1, w / (2 * zoom), w, tx);
  // Output pixel p samples source index c - 0.5 + (p - (side - 1) / 2) / zoom.
  return {1 / zoom, 0, cx - 0.5 - (w - 1) / (2 * zoom), 0, 1 / zoom, cy - 0.5 - (h - 1) / (2 * zoom)};
}

Affine compose(const Affine& a, const Affine& b) {
  return {a.a * b.a + a.b * b.d, a.a * b.b + a.b * b.e, a.a * b.c + a.b * b.f + a.c,
          a.d * b.a + a.e * b.d, a.d * b.b + a.e * b.e, a.d * b.c + a.e * b.f + a.f};
}

Deformation draw_deformation(const AugmentOptions& o, int height, int width, Generator& gen) {
  Deformation d;
  if (o.elastic <= 0) return d;
  const int points = (Deformation::kDeformationCells + 1) * (Deformation::kDeformationCells + 1);
  for (int i = 0; i < points; ++i) {
    d.dx.push_back(static_cast<float>(o.elastic * width * gen.normal()));
    d.dy.push_back(static_cast<float>(o.elastic * height * gen.normal()));
  }
  return d;
}

std::pair<double, double> Deformation::at(double x, double y, int height, int width) const {
  if (dx.empty()) return {0, 0};
  constexpr int n = kDeformationCells;
  // The lattice's points sit at the first and last pixel centres and evenly between.
  const double gx = std::clamp(x * n / std::max(1, width - 1), 0.0, double(n)),
               gy = std::clamp(y * n / std::max(1, height - 1), 0.0, double(n));
  const int x0 = std::min(static_cast<int>(gx), n - 1), y0 = std::min(static_cast<int>(gy), n - 1);
  const double fx = gx - x0, fy = gy - y0;
  auto lerp2 = [&](const std::vector<float>& v) {
    auto p = [&](int yy, int xx) { return double(v[size_t(yy) * (n + 1) + size_t(xx)]); };
    return (1 - fy) * ((1 - fx) * p(y0, x0) + fx * p(y0, x0 + 1)) + fy * ((1 - fx) * p(y0 + 1, x0) + fx * p(y0 + 1, x0 + 1));
  };
  return {lerp2(dx), lerp2(dy)};
}

void warp(const Image& image, const Mask& mask, const Affine& map, const Deformation& deformation, Image& out_image,
          Mask& out_mask) {
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
      const auto [ox, oy] = deformation.at(x, y, h, w);
      const double px = x + ox, py = y + oy;
      const double sx = map.a * px + map.b * py + map.c, sy = map.d * px + map.e * py + map.f;
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
  map = compose(draw_lesion_crop(o, mask, gen), map);
  const Deformation deformation = draw_deformation(o, image.height, image.width, gen);
  Image warped;
  Mask warped_mask;
  warp(image, mask, map, deformation, warped, warped_mask);
  apply_photometric(warped, photometric);
  image = std::move(warped);
  mask = std::move(warped_mask);
}

}  // namespace sono::data
