#pragma once
// The PNGs scanners and archives write (8- or 16-bit grey, grey + alpha, RGB or RGBA, not
// interlaced), decoded with libdeflate: stb_image inflates and unfilters at ~100 MB/s, slow
// enough to show in a folder prediction. Every other PNG is left to stb.
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

namespace sono::data {

// Decoded samples (image.cpp's decoder keeps stb's in the same form).
struct PngPixels {
  int height = 0, width = 0, channels = 0;  // channels: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA
  bool sixteen_bit = false;
  // Rows of width * channels samples, 16-bit ones in the machine's byte order, as stb gives them.
  std::unique_ptr<void, void (*)(void*)> samples{nullptr, std::free};
};

// The pixels of `bytes`, or nullopt where it is another kind of PNG, or not one, or anything in
// it is irregular: stb then decodes it, or says what is wrong, as for any other file. A
// transparency chunk is left to stb too, which adds an alpha channel for it.
std::optional<PngPixels> decode_simple_png(const std::string& bytes);

// Whether each chunk of the PNG in `bytes`, up to IEND, lies within them. stb sizes its buffer
// for the image data from the lengths IDAT chunks declare, doubling it until they fit, before
// reading them: a 133-byte file whose second IDAT declares 1.1 GB had it allocate 2 GiB (fuzz
// finding 15), so a file must pass this before stb sees it.
bool png_chunks_fit(const std::string& bytes);

}  // namespace sono::data
