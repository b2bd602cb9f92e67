#include "tools/data/image.h"

#include <stb_image.h>
#include <stb_image_write.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "tensor/error.h"
#include "tensor/atomic_file.h"
#include "tools/data/dicom.h"
#include "tools/data/png_decode.h"

namespace sono::data {

Image::Image(int height, int width, int channels, float fill)
    : height(height), width(width), channels(channels),
      pixels(static_cast<size_t>(height) * width * channels, fill) {}

Mask::Mask(int height, int width, uint8_t fill)
    : height(height), width(width), values(static_cast<size_t>(height) * width, fill) {}

size_t Mask::lesion_pixels() const { return std::count(values.begin(), values.end(), uint8_t{1}); }

namespace {

std::string read_bytes(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) fail("image file '", file.string(), "' does not exist");
  if (fs::is_directory(file, ec)) fail("'", file.string(), "' is a folder, not an image file");
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cannot open image file '", file.string(), "': ", std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read image file '", file.string(), "'");
  if (bytes.empty()) fail("image file '", file.string(), "' is empty");
  return bytes;
}

bool ends_with(const std::string& bytes, std::string_view tail) {
  return bytes.size() >= tail.size() &&
         std::equal(tail.rbegin(), tail.rend(), bytes.rbegin());
}

// As stb finds a JPEG: its start-of-image marker, FF D8, which like every JPEG marker may follow
// any number of FF fill bytes.
bool is_jpeg(const std::string& bytes) {
  const size_t marker = bytes.find_first_not_of('\xff');
  return marker != std::string::npos && marker > 0 && bytes[marker] == '\xd8';
}

uint64_t little_endian(const std::string& bytes, size_t at, int size) {
  uint64_t v = 0;
  for (int i = size; i-- > 0;) v = v << 8 | static_cast<uint8_t>(bytes[at + i]);
  return v;
}

// The bytes an uncompressed BMP must have: its pixel data offset plus |height| rows of
// width * bits rounded up to 4 bytes. stb reads zeros past the end of a cut BMP, so this is
// the only check that catches one. 0 when the header is itself cut; UINT64_MAX for an encoding
// whose length the header does not give (stb refuses those itself).
uint64_t bmp_expected_size(const std::string& bytes) {
  if (bytes.size() < 18) return 0;
  const uint64_t data_offset = little_endian(bytes, 10, 4), header_size = little_endian(bytes, 14, 4);
  int64_t width, height, compression = 0;
  uint64_t bits;
  if (header_size == 12) {  // OS/2 BITMAPCOREHEADER: 16-bit sizes
    if (bytes.size() < 26) return 0;
    width = static_cast<int64_t>(little_endian(bytes, 18, 2));
    height = static_cast<int64_t>(little_endian(bytes, 20, 2));
    bits = little_endian(bytes, 24, 2);
  } else {  // BITMAPINFOHEADER and its successors: signed 32-bit sizes, negative height top-down
    if (bytes.size() < 34) return 0;
    width = static_cast<int32_t>(little_endian(bytes, 18, 4));
    height = static_cast<int32_t>(little_endian(bytes, 22, 4));
    bits = little_endian(bytes, 28, 2);
    compression = static_cast<int32_t>(little_endian(bytes, 30, 4));  // signed, as stb reads it
  }
  // stb refuses RLE (1, 2) and JPEG/PNG (4, 5) and decodes every other value as uncompressed,
  // bit fields (3) and negative garbage too (fuzz finding image/bmp_negative_compression).
  if (compression == 1 || compression == 2 || compression >= 4 || width < 0) return UINT64_MAX;
  const uint64_t row = (static_cast<uint64_t>(width) * bits + 31) / 32 * 4;  // < 2^53: no overflow
  return data_offset + row * static_cast<uint64_t>(std::abs(height));
}

// stb rejects most cut-off files, but with a terse reason ("outofdata", "expected marker", or
// none at all when a PNG lacks its end chunk) and accepts a PNG cut inside its end chunk. So a
// file must first end the way its format ends: PNG with the IEND chunk, JPEG with the EOI
// marker (some writers pad after it, so look near the end); a BMP must be as long as its
// header says.
void check_not_truncated(const std::string& bytes, const fs::path& file) {
  if (bytes.compare(0, 2, "BM") == 0) {
    const uint64_t expected = bmp_expected_size(bytes);
    if (expected == 0) fail("image file '", file.string(), "' is truncated (", bytes.size(), " bytes, inside the BMP header)");
    if (expected != UINT64_MAX && bytes.size() < expected)
      fail("image file '", file.string(), "' is truncated (", bytes.size(), " of ", expected,
           " bytes the BMP header promises)");
    return;
  }
  static const std::string png_signature = "\x89PNG\r\n\x1a\n";
  static const std::string png_end("\0\0\0\0IEND\xae\x42\x60\x82", 12);
  bool is_png = bytes.compare(0, png_signature.size(), png_signature) == 0;
  bool truncated = false;
  if (is_png) truncated = !ends_with(bytes, png_end);
  if (is_png && !truncated && !png_chunks_fit(bytes))
    fail("image file '", file.string(), "' is corrupt (a PNG chunk runs past the end of the file)");
  if (is_jpeg(bytes)) {
    size_t from = bytes.size() > 4096 ? bytes.size() - 4096 : 0;
    truncated = bytes.find("\xff\xd9", from) == std::string::npos;
  }
  if (truncated) fail("image file '", file.string(), "' is truncated (its end marker is missing)");
}

// stb_image (Debian's 2022 snapshot) builds a JPEG Huffman table from 16 code-length counts
// without checking that they sum to at most 256: a larger sum writes past its arrays. Every
// FF C4 in a JPEG is a DHT marker to stb (entropy-coded data stuffs its FF bytes), so each
// is read here as stb reads it: tables while the segment length lasts, zeros past the end.
void check_jpeg_huffman_tables(const std::string& bytes, const fs::path& file) {
  auto byte = [&](size_t i) -> int64_t { return i < bytes.size() ? static_cast<uint8_t>(bytes[i]) : 0; };
  for (size_t at = bytes.find("\xff\xc4"); at != std::string::npos; at = bytes.find("\xff\xc4", at + 2)) {
    int64_t left = (byte(at + 2) << 8 | byte(at + 3)) - 2;
    for (size_t table = at + 4; left > 0 && table < bytes.size();) {
      int64_t codes = 0;
      for (size_t i = 1; i <= 16; ++i) codes += byte(table + i);
      if (codes > 256)
        fail("image file '", file.string(), "' is corrupt (a JPEG Huffman table lists ", codes, " codes, at most 256)");
      table += 17 + static_cast<size_t>(codes);
      left -= 17 + codes;
    }
  }
}

// Whether a JPEG's frame is sequential (baseline or extended Huffman: SOF0, SOF1), from a walk
// of its marker segments up to the first start-of-frame.
bool is_sequential_jpeg(const std::string& bytes) {
  size_t at = bytes.find_first_not_of('\xff') + 1;  // after SOI
  while (at + 4 <= bytes.size()) {
    if (static_cast<uint8_t>(bytes[at]) != 0xff) return false;
    const uint8_t code = static_cast<uint8_t>(bytes[at + 1]);
    if (code == 0xff) {  // fill byte
      ++at;
      continue;
    }
    if (code >= 0xc0 && code <= 0xcf && code != 0xc4 && code != 0xc8 && code != 0xcc) return code <= 0xc1;
    at += 2 + (static_cast<uint8_t>(bytes[at + 2]) << 8 | static_cast<uint8_t>(bytes[at + 3]));
  }
  return false;
}

// A sequential JPEG spends at least 2 bits on each 8 x 8 block of each component (the shortest
// Huffman codes: a DC difference and an end of block), so a whole one holds at most 256 pixels a
// byte. Past that its scan is cut short, and stb would decode the missing blocks as grey: a
// 707-byte file stood for 65026 x 255 pixels (fuzz finding image/jpeg_pixels_beyond_its_bytes).
// Progressive JPEGs can skip runs of blocks, so no such bound holds for them.
constexpr int64_t kMaxSequentialJpegPixelsPerByte = 256;

void check_dimensions(const std::string& bytes, const fs::path& file) {
  int width = 0, height = 0, channels = 0;
  if (!stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &width,
                             &height, &channels))
    return;  // decoding will say what is wrong
  const int64_t pixels = static_cast<int64_t>(width) * height;
  if (pixels > kMaxImagePixels)
    fail("image file '", file.string(), "' is ", width, "x", height, ", more than the limit of ", kMaxImagePixels,
         " pixels");
  if (is_jpeg(bytes) && pixels > kMaxSequentialJpegPixelsPerByte * static_cast<int64_t>(bytes.size()) &&
      is_sequential_jpeg(bytes))
    fail("image file '", file.string(), "' is truncated (its ", bytes.size(), " bytes cannot hold the ", width, "x",
         height, " pixels its JPEG header declares)");
}

// stb's reason may quote bytes of the file (an unknown PNG chunk's name): keep the line text.
std::string printable(const char* reason) {
  std::string text = reason ? reason : "unknown reason";
  std::replace_if(text.begin(), text.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
  return text;
}

// Sample i of 8- or 16-bit samples as 0..1.
float sample_value(const void* samples, size_t i, bool sixteen_bit) {
  return sixteen_bit ? static_cast<const uint16_t*>(samples)[i] / 65535.0f
                     : static_cast<const uint8_t*>(samples)[i] / 255.0f;
}

// A decoded file in its own channel count and bit depth, from libdeflate (simple PNGs) or stb
// (the rest).
struct Decoded : PngPixels {
  // Sample as 0..1.
  float value(size_t pixel, int channel) const {
    return sample_value(samples.get(), pixel * channels + channel, sixteen_bit);
  }
  int colour_channels() const { return channels >= 3 ? 3 : 1; }  // alpha excluded
  PixelBuffer buffer() const {
    return {samples.get(), height, width, channels, sixteen_bit, size_t(width) * channels * (sixteen_bit ? 2 : 1)};
  }
};

Decoded decode(const fs::path& file) {
  std::string bytes = read_bytes(file);
  if (bytes.size() > static_cast<size_t>(INT_MAX)) fail("image file '", file.string(), "' is over 2 GiB");
  check_not_truncated(bytes, file);
  if (is_jpeg(bytes)) check_jpeg_huffman_tables(bytes, file);
  check_dimensions(bytes, file);
  if (std::optional<PngPixels> png = decode_simple_png(bytes)) return {std::move(*png)};
  Decoded d;
  auto* buffer = reinterpret_cast<const stbi_uc*>(bytes.data());
  int size = static_cast<int>(bytes.size());
  d.sixteen_bit = stbi_is_16_bit_from_memory(buffer, size);
  void* pixels = d.sixteen_bit
                     ? static_cast<void*>(stbi_load_16_from_memory(buffer, size, &d.width, &d.height, &d.channels, 0))
                     : static_cast<void*>(stbi_load_from_memory(buffer, size, &d.width, &d.height, &d.channels, 0));
  if (!pixels) fail("cannot decode image file '", file.string(), "': ", printable(stbi_failure_reason()));
  d.samples = decltype(d.samples)(pixels, stbi_image_free);
  return d;
}

}  // namespace

uint8_t to_byte(float v) { return static_cast<uint8_t>(std::lround(std::clamp(v, 0.0f, 1.0f) * 255.0f)); }
uint16_t to_sample16(float v) { return static_cast<uint16_t>(std::lround(std::clamp(v, 0.0f, 1.0f) * 65535.0f)); }

void check_mask_size(const fs::path& mask, ImageSize mask_size, const fs::path& image, ImageSize image_size) {
  if (!(mask_size == image_size))
    fail("mask '", mask.string(), "' is ", mask_size.width, "x", mask_size.height, " but its image '",
         image.string(), "' is ", image_size.width, "x", image_size.height);
}

ImageSize read_image_size(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) fail("image file '", file.string(), "' does not exist");
  if (is_dicom_file(file)) return read_dicom_size(file);
  // stbi_info parses a JPEG's Huffman tables too, so they are checked first, as decode does.
  std::string bytes = read_bytes(file);
  if (bytes.size() > static_cast<size_t>(INT_MAX)) fail("image file '", file.string(), "' is over 2 GiB");
  if (is_jpeg(bytes)) check_jpeg_huffman_tables(bytes, file);
  int width = 0, height = 0, channels = 0;
  if (!stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &width,
                             &height, &channels))
    fail("cannot read the header of image file '", file.string(), "': ", printable(stbi_failure_reason()));
  return {height, width};
}

// A row of samples as RGB in 0..1: grey repeated, alpha, if any, dropped as PIL's convert("RGB")
// does. Loops of one sample type and channel count, so that the compiler vectorises them: every
// scan of a folder run passes through here at full size.
template <typename Sample>
void row_to_rgb(const Sample* row, int width, int channels, float full_scale, float* out) {
  if (channels < 3) {
    for (int x = 0; x < width; ++x) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = row[x * channels] / full_scale;
    return;
  }
  for (int x = 0; x < width; ++x)
    for (int c = 0; c < 3; ++c) out[3 * x + c] = row[x * channels + c] / full_scale;
}

Image image_from_pixels(const PixelBuffer& pixels) {
  const auto& [data, height, width, channels, sixteen_bit, row_stride] = pixels;
  SONO_CHECK(data, "image: no pixel data");
  SONO_CHECK(height > 0 && width > 0, "image: ", width, "x", height, " pixels; both sides must be positive");
  SONO_CHECK(int64_t{width} * height <= kMaxImagePixels, "image: ", width, "x", height, " pixels, more than the limit of ",
             kMaxImagePixels);
  SONO_CHECK(channels >= 1 && channels <= 4, "image: ", channels, " channels; expected 1 to 4");
  const size_t sample_bytes = sixteen_bit ? 2 : 1, row_bytes = size_t(width) * channels * sample_bytes;
  SONO_CHECK(row_stride >= row_bytes, "image: rows ", row_stride, " bytes apart, but a row of ", width, "x",
             channels, " samples of ", sample_bytes, " bytes takes ", row_bytes);
  Image image(height, width, 3);
  for (int y = 0; y < height; ++y) {
    const auto* row = static_cast<const unsigned char*>(data) + y * row_stride;
    float* out = &image.at(y, 0, 0);
    if (sixteen_bit) row_to_rgb(reinterpret_cast<const uint16_t*>(row), width, channels, 65535.0f, out);
    else row_to_rgb(row, width, channels, 255.0f, out);
  }
  return image;
}

Image load_image(const fs::path& file) {
  if (is_dicom_file(file)) return load_dicom(file);
  return image_from_pixels(decode(file).buffer());
}

Mask load_mask(const std::vector<fs::path>& files) {
  SONO_CHECK(!files.empty(), "load_mask: no mask files given");
  Mask mask;
  for (const fs::path& file : files) {
    Decoded d = decode(file);
    if (mask.values.empty()) mask = Mask(d.height, d.width);
    if (d.height != mask.height || d.width != mask.width)
      fail("mask file '", file.string(), "' is ", d.width, "x", d.height, " but '", files[0].string(),
           "' is ", mask.width, "x", mask.height, ": masks of one image must have one size");
    size_t n = mask.values.size();
    for (size_t p = 0; p < n; ++p)
      for (int c = 0; c < d.colour_channels(); ++c)
        if (d.value(p, c) > 0) mask.values[p] = 1;
  }
  return mask;
}

Image to_grey(const Image& image) {
  if (image.channels == 1) return image;
  SONO_CHECK(image.channels == 3, "to_grey: expected 1 or 3 channels, got ", image.channels);
  Image grey(image.height, image.width, 1);
  for (size_t p = 0; p < grey.pixels.size(); ++p) {
    const float* rgb = &image.pixels[p * 3];
    grey.pixels[p] = 0.299f * rgb[0] + 0.587f * rgb[1] + 0.114f * rgb[2];
  }
  return grey;
}

namespace {

// For each output position along one axis, the input positions and normalised weights of
// the triangle filter (support widened by the shrink factor, as PIL).
// Output o reads inputs first[o] .. first[o] + taps(o) - 1 with weights w[offset[o] ...].
struct AxisWeights {
  std::vector<int> first, offset;  // offset: out_size + 1 entries
  std::vector<float> w;

  int taps(int o) const { return offset[o + 1] - offset[o]; }
  const float* weights(int o) const { return w.data() + offset[o]; }
};

AxisWeights triangle_weights(int in_size, int out_size) {
  double scale = static_cast<double>(in_size) / out_size;
  double filter_scale = std::max(scale, 1.0);
  double support = filter_scale;  // the triangle's half-width is 1 input pixel, widened
  AxisWeights a;
  a.first.resize(out_size);
  a.offset.assign(1, 0);
  for (int o = 0; o < out_size; ++o) {
    double centre = (o + 0.5) * scale;
    int lo = std::max(static_cast<int>(centre - support + 0.5), 0);
    int hi = std::min(static_cast<int>(centre + support + 0.5), in_size);
    double total = 0;
    std::vector<double> w;
    for (int i = lo; i < hi; ++i) {
      double t = std::abs((i + 0.5 - centre) / filter_scale);
      w.push_back(t < 1 ? 1 - t : 0);
      total += w.back();
    }
    a.first[o] = lo;
    for (double v : w) a.w.push_back(static_cast<float>(total > 0 ? v / total : 0));
    a.offset.push_back(static_cast<int>(a.w.size()));
  }
  return a;
}

// One row of the horizontal pass, CH channels known at compile time (0: `ch` at run time).
template <int CH>
void resize_row(const float* src, float* dst, const AxisWeights& wx, int width, int ch) {
  const int channels = CH ? CH : ch;
  for (int x = 0; x < width; ++x) {
    const float* w = wx.weights(x);
    const float* s = src + static_cast<size_t>(wx.first[x]) * channels;
    const int taps = wx.taps(x);
    for (int c = 0; c < channels; ++c) {
      float acc = 0;
      for (int k = 0; k < taps; ++k) acc += w[k] * s[k * channels + c];
      dst[x * channels + c] = acc;
    }
  }
}

// The vertical pass: `height` rows of `row` floats, row y the weighted sum of the source rows
// wy gives it. Each starts as its first tap's products (what 0 + w * x gives), not zeroed first:
// a folder run resizes every scan at full width twice.
void resize_rows(const float* src, size_t row, const AxisWeights& wy, int height, float* dst) {
  for (int y = 0; y < height; ++y, dst += row) {
    if (wy.taps(y) == 0) {
      std::fill_n(dst, row, 0.0f);
      continue;
    }
    const float* first = src + wy.first[y] * row;
    const float w0 = wy.weights(y)[0];
    for (size_t i = 0; i < row; ++i) dst[i] = w0 * first[i];
    for (int k = 1; k < wy.taps(y); ++k) {
      const float* tap = src + (wy.first[y] + k) * row;
      const float w = wy.weights(y)[k];
      for (size_t i = 0; i < row; ++i) dst[i] += w * tap[i];
    }
  }
}

// The horizontal pass over `rows` rows of `in_width` pixels of `ch` channels.
void resize_columns(const float* src, int rows, int in_width, const AxisWeights& wx, int width, int ch, float* dst) {
  const auto row = ch == 3 ? resize_row<3> : ch == 1 ? resize_row<1> : resize_row<0>;
  for (int y = 0; y < rows; ++y)
    row(src + static_cast<size_t>(y) * in_width * ch, dst + static_cast<size_t>(y) * width * ch, wx, width, ch);
}

}  // namespace

Image resize_bilinear(const Image& image, int height, int width) {
  SONO_CHECK(height > 0 && width > 0 && image.height > 0 && image.width > 0,
             "resize_bilinear: cannot resize ", image.width, "x", image.height, " to ", width, "x", height);
  const int ch = image.channels;
  AxisWeights wx = triangle_weights(image.width, width), wy = triangle_weights(image.height, height);
  // The passes are linear, so either may go first. The vertical one runs along whole rows,
  // which vectorise; the horizontal one gathers per output value, so it goes where there are
  // fewer rows: last when the image gets shorter (a scan resized for a model: ~4x fewer rows for
  // a BUSI scan), first when it gets taller (a model's lesion map resized to its scan).
  const size_t in_row = static_cast<size_t>(image.width) * ch, out_row = static_cast<size_t>(width) * ch;
  Image out(height, width, ch);
  if (height > image.height) {
    const std::unique_ptr<float[]> rows(new float[image.height * out_row]);
    resize_columns(image.pixels.data(), image.height, image.width, wx, width, ch, rows.get());
    resize_rows(rows.get(), out_row, wy, height, out.pixels.data());
  } else {
    const std::unique_ptr<float[]> rows(new float[height * in_row]);
    resize_rows(image.pixels.data(), in_row, wy, height, rows.get());
    resize_columns(rows.get(), height, image.width, wx, width, ch, out.pixels.data());
  }
  return out;
}

Mask resize_nearest(const Mask& mask, int height, int width) {
  SONO_CHECK(height > 0 && width > 0 && mask.height > 0 && mask.width > 0,
             "resize_nearest: cannot resize ", mask.width, "x", mask.height, " to ", width, "x", height);
  auto source = [](int o, int in, int out) {
    return std::min(static_cast<int>((o + 0.5) * in / out), in - 1);
  };
  Mask out(height, width);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      out.at(y, x) = mask.at(source(y, mask.height, height), source(x, mask.width, width));
  return out;
}

namespace {

void append_bytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), size);
}

std::string png_bytes(int height, int width, int channels, const uint8_t* pixels) {
  std::string png;
  SONO_CHECK(stbi_write_png_to_func(append_bytes, &png, width, height, channels, pixels, width * channels),
             "cannot encode a ", width, "x", height, " PNG");
  return png;
}

void write_png(const fs::path& file, int height, int width, int channels, const uint8_t* pixels) {
  write_file_atomic(file, png_bytes(height, width, channels, pixels));
}

}  // namespace

std::string encode_png(const Image& image) {
  SONO_CHECK(image.channels == 1 || image.channels == 3, "encode_png: expected 1 or 3 channels, got ",
             image.channels);
  std::vector<uint8_t> bytes(image.pixels.size());
  std::transform(image.pixels.begin(), image.pixels.end(), bytes.begin(), to_byte);
  return png_bytes(image.height, image.width, image.channels, bytes.data());
}

void save_image_png(const fs::path& file, const Image& image) {
  SONO_CHECK(image.channels == 1 || image.channels == 3, "save_image_png: expected 1 or 3 channels, got ",
             image.channels, " for '", file.string(), "'");
  write_file_atomic(file, encode_png(image));
}

void save_mask_png(const fs::path& file, const Mask& mask) {
  std::vector<uint8_t> bytes(mask.values.size());
  std::transform(mask.values.begin(), mask.values.end(), bytes.begin(),
                 [](uint8_t v) { return uint8_t(v ? 255 : 0); });
  write_png(file, mask.height, mask.width, 1, bytes.data());
}

namespace {

Image to_rgb(const Image& image) {
  if (image.channels == 3) return image;
  SONO_CHECK(image.channels == 1, "expected a 1- or 3-channel image, got ", image.channels, " channels");
  Image rgb(image.height, image.width, 3);
  for (size_t p = 0; p < image.pixels.size(); ++p)
    for (int c = 0; c < 3; ++c) rgb.pixels[p * 3 + c] = image.pixels[p];
  return rgb;
}

}  // namespace

Image draw_outline(const Image& image, const Mask& mask, Rgb colour) {
  SONO_CHECK(image.height == mask.height && image.width == mask.width, "draw_outline: image is ",
             image.width, "x", image.height, " but mask is ", mask.width, "x", mask.height);
  Image out = to_rgb(image);
  const int radius = std::max(1, std::min(mask.height, mask.width) / 256);
  // A lesion pixel lies on the outline when a background pixel (or the border) is within
  // `radius` of it: the line sits inside the lesion and is `radius` pixels thick.
  auto on_outline = [&](int y, int x) {
    for (int dy = -radius; dy <= radius; ++dy)
      for (int dx = -radius; dx <= radius; ++dx) {
        int yy = y + dy, xx = x + dx;
        if (yy < 0 || xx < 0 || yy >= mask.height || xx >= mask.width || !mask.at(yy, xx)) return true;
      }
    return false;
  };
  const float rgb[3] = {colour.r / 255.0f, colour.g / 255.0f, colour.b / 255.0f};
  for (int y = 0; y < mask.height; ++y)
    for (int x = 0; x < mask.width; ++x)
      if (mask.at(y, x) && on_outline(y, x))
        for (int c = 0; c < 3; ++c) out.at(y, x, c) = rgb[c];
  return out;
}

void save_overlay_png(const fs::path& file, const Image& image, const Mask& mask, Rgb colour) {
  save_image_png(file, draw_outline(image, mask, colour));
}

}  // namespace sono::data
