#pragma once
// Images and lesion masks as the tools handle them: decoding (PNG, JPEG, BMP via stb),
// resizing, and atomic PNG writing of masks and overlays.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace sono::data {

namespace fs = std::filesystem;

// Pixels row by row, channels interleaved (HWC), values 0..1.
struct Image {
  int height = 0, width = 0, channels = 0;
  std::vector<float> pixels;

  Image() = default;
  Image(int height, int width, int channels, float fill = 0.0f);
  float& at(int y, int x, int c) { return pixels[(static_cast<size_t>(y) * width + x) * channels + c]; }
  float at(int y, int x, int c) const { return pixels[(static_cast<size_t>(y) * width + x) * channels + c]; }
};

// Binary lesion mask: 1 lesion, 0 background.
struct Mask {
  int height = 0, width = 0;
  std::vector<uint8_t> values;

  Mask() = default;
  Mask(int height, int width, uint8_t fill = 0);
  uint8_t& at(int y, int x) { return values[static_cast<size_t>(y) * width + x]; }
  uint8_t at(int y, int x) const { return values[static_cast<size_t>(y) * width + x]; }
  size_t lesion_pixels() const;
};

struct ImageSize {
  int height = 0, width = 0;
  bool operator==(const ImageSize&) const = default;
};

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

// 0..1 -> 0..255, clamped and rounded.
uint8_t to_byte(float v);
// 0..1 -> 0..65535, clamped and rounded.
uint16_t to_sample16(float v);

// Throws sono::Error naming both files when a mask's size differs from its image's.
void check_mask_size(const fs::path& mask, ImageSize mask_size, const fs::path& image, ImageSize image_size);

// Reads only the header. Throws sono::Error naming the file when it is missing or unreadable.
ImageSize read_image_size(const fs::path& file);

// The most pixels an image may have: far above any scan (BUSI's are under 1 Mpx), while a small
// compressed file can declare a huge image, which load_image would hold as 12 bytes of floats
// per pixel.
constexpr int64_t kMaxImagePixels = int64_t{1} << 25;

// Samples in memory: `channels` interleaved (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), 8 or 16 bits
// each, rows `row_stride` bytes apart (at least width * channels * bytes per sample).
struct PixelBuffer {
  const void* data = nullptr;
  int height = 0, width = 0, channels = 0;
  bool sixteen_bit = false;
  size_t row_stride = 0;
};

// As RGB 0..1, the way load_image reads a file of those samples. Throws naming what is wrong
// with the buffer's description.
Image image_from_pixels(const PixelBuffer& pixels);

// Any grey, grey+alpha, RGB or RGBA image, 8 or 16 bits (PNG, JPEG, BMP; DICOM's first
// frame, see dicom.h), as RGB 0..1 (grey is replicated,
// alpha is dropped as PIL's convert("RGB") does). Errors name the file: missing, corrupt,
// truncated.
Image load_image(const fs::path& file);

// The union of the mask files: a pixel is lesion when any colour channel of any file is > 0
// (alpha is ignored: BUSI has RGBA masks with alpha 255 everywhere). All files must have one
// size; an empty list is an error.
Mask load_mask(const std::vector<fs::path>& files);

// Luma (ITU-R 601, as PIL's convert("L")) of an RGB image; a 1-channel image is returned as is.
Image to_grey(const Image& image);

// Triangle-filter resampling with pixel centres at +0.5, as PIL's BILINEAR: plain bilinear
// (F.interpolate align_corners=False) when enlarging, antialiased when shrinking so that a
// 1000 px scan does not alias down to 256 px.
Image resize_bilinear(const Image& image, int height, int width);

// Nearest neighbour with pixel centres at +0.5 (PyTorch's "nearest-exact"), so resizing
// commutes with flips.
Mask resize_nearest(const Mask& mask, int height, int width);

// 8-bit PNG encodings and atomic writes (temp file in the same folder, then rename).
std::string encode_png(const Image& image);                     // 1 or 3 channels, the PNG file's bytes
void save_image_png(const fs::path& file, const Image& image);  // 1 or 3 channels
void save_mask_png(const fs::path& file, const Mask& mask);     // grey, 0 / 255
// The image with the lesion outline drawn in `colour`, a line about 1/256 of the image's
// smaller side thick (at least 1 px). Sizes must match.
void save_overlay_png(const fs::path& file, const Image& image, const Mask& mask,
                      Rgb colour = {255, 48, 48});
Image draw_outline(const Image& image, const Mask& mask, Rgb colour);
// The RGB image under a heat map (1 channel, 0..1, its size) in jet colours, opaque in
// proportion to the heat, so that cold regions show the scan.
Image heatmap_overlay(const Image& image, const Image& heat);
// A 1-channel map of 0..1 (a lesion probability map) as a 16-bit grey PNG, 0..65535.
void save_probability_png(const fs::path& file, const Image& map);

}  // namespace sono::data
