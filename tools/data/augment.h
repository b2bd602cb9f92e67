#pragma once
// Training augmentation applied identically to an image and its mask: flips, 90-degree
// rotations, a small affine and optionally a smooth deformation (one resampling pass: bilinear
// for the image, nearest for the mask, zero outside), then brightness/contrast jitter on the
// image only.
#include <utility>
#include <vector>

#include "tensor/random.h"
#include "tools/data/image.h"

namespace sono::data {

struct AugmentOptions {
  double hflip = 0.5;          // probability of a horizontal flip
  double vflip = 0.5;          // probability of a vertical flip
  bool rotate90 = true;        // a random multiple of 90 degrees; square images only
  double rotate_degrees = 10;  // uniform in [-r, r]
  double scale_min = 0.9, scale_max = 1.1;
  double translate = 0.05;  // per axis, uniform in [-t, t] times the side
  double brightness = 0.1;  // added, uniform in [-b, b] (images are 0..1)
  double contrast = 0.1;    // factor 1 + uniform in [-c, c]
  // Ultrasound's own variation (off here, on in ultrasound()): the gain curve, v -> v^gamma
  // with log(gamma) uniform in [-g, g], and speckle, multiplicative noise v * (1 + s N(0, 1))
  // per pixel, applied after brightness and contrast.
  double gamma = 0;
  double speckle = 0;
  // With this probability, zoom in by up to lesion_zoom on a window that still holds the whole
  // lesion (its bounding box plus 10%): the lesion and its margin fill more of the input, as a
  // sonographer's zoom would. A scan without lesion gets a window of the same zoom anywhere.
  double lesion_crop = 0;
  double lesion_zoom = 1.5;
  // The mask value (1 or more) from which a pixel is the lesion the crop frames: a mask's 1, or
  // for a lesion probability channel kLesionLevel (model_input.h), whose faint background is not
  // lesion.
  uint8_t lesion_level = 1;
  // A smooth random deformation on top of the affine, as tissue under a probe deforms (0: off):
  // displacements drawn N(0, elastic x side) along each axis at a lattice of 5 x 5 points
  // spanning the image, bilinear between them (albumentations' GridDistortion, not its
  // Gaussian-filtered ElasticTransform). Drawn after everything else, so turning it on or off
  // leaves the other draws as they were.
  double elastic = 0;

  static AugmentOptions none();
  // The default chain plus gamma 0.3, speckle 0.15, stronger contrast (0.2) and a lesion
  // crop half the time.
  static AugmentOptions ultrasound();
};

// Output pixel (x, y) samples the source at (a x + b y + c, d x + e y + f).
struct Affine {
  double a = 1, b = 0, c = 0, d = 0, e = 1, f = 0;
};

// One random draw of the geometric part, as the output-to-source map of a size (h, w) image;
// the transform acts about the image centre. The draw consumes the same random numbers
// whatever the options, so turning one option off does not change the others' draws.
Affine draw_geometry(const AugmentOptions& options, int height, int width, Generator& gen);

// One random draw of the lesion crop for `mask` (identity when not drawn): the output-to-source
// map of the zoomed window.
Affine draw_lesion_crop(const AugmentOptions& options, const Mask& mask, Generator& gen);
// a after b: the map x -> a(b(x)).
Affine compose(const Affine& a, const Affine& b);

// Per output pixel, an offset added to its position before the affine map: bilinear between
// the displacements at the points of a (kDeformationCells + 1)^2 lattice spanning the image.
struct Deformation {
  static constexpr int kDeformationCells = 4;
  std::vector<float> dx, dy;  // in pixels, at the lattice points, row-major; empty: none

  // The offset at output pixel (x, y) of an image of size (height, width).
  std::pair<double, double> at(double x, double y, int height, int width) const;
};
// Empty unless options.elastic > 0.
Deformation draw_deformation(const AugmentOptions& options, int height, int width, Generator& gen);

// Resamples image and mask through `deformation`, then `map`, into images of the same size.
void warp(const Image& image, const Mask& mask, const Affine& map, const Deformation& deformation, Image& out_image,
          Mask& out_mask);

struct Photometric {
  double brightness = 0, contrast = 1, gamma = 1, speckle = 0;
  uint64_t speckle_seed = 0;  // the noise field's seed
};
Photometric draw_photometric(const AugmentOptions& options, Generator& gen);
// v -> clamp(contrast * v + brightness, 0, 1), as albumentations' RandomBrightnessContrast,
// then v^gamma, then the speckle (clamped to 0..1 again).
void apply_photometric(Image& image, const Photometric& p);

// The whole chain: lesion crop, geometry and deformation (one resampling), then photometric
// jitter.
void augment(Image& image, Mask& mask, const AugmentOptions& options, Generator& gen);

}  // namespace sono::data
