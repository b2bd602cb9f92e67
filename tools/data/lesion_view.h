#pragma once
// The classifier's lesion view: instead of the whole scan shrunk to the model's input, the
// window around the lesion its mask marks, so that a small lesion keeps the pixels of its margin,
// echo pattern and posterior shadow (a lesion a fifth of the scan wide is 25 px of a 128 px
// whole-scan input). cls_train --lesion-view trains on it; the checkpoint's card records it
// ("lesion_view"), and every tool that classifies crops as the card says.
#include "tools/data/image.h"

namespace sono::data {

struct Window {
  int x = 0, y = 0, width = 0, height = 0;
  bool operator==(const Window&) const = default;
  static Window whole(int width, int height) { return {0, 0, width, height}; }
};

// The smallest window, as a fraction of the image's side: a speck of a mask is not zoomed in on
// further than 4x.
inline constexpr double kMinWindowFraction = 0.25;

// The bounding box of all the mask's lesion pixels, grown by `context` times its larger side
// on each side, as fractions of the image's width and height alike: a square of the square
// input the whole scan is resized to, whatever the scan's aspect ratio, so a 256 x 256 copy of
// a scan (training) and the scan itself (predict) give the same view. At least
// kMinWindowFraction of the image, moved inside it. The whole image when the mask is empty.
Window lesion_window(const Mask& mask, double context);

Image crop(const Image& image, const Window& window);
Mask crop(const Mask& mask, const Window& window);

// Both cropped to lesion_window(mask, context) in place; unchanged when context <= 0 (the view
// is off).
void apply_lesion_view(Image& image, Mask& mask, double context);

}  // namespace sono::data
