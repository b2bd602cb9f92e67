// libFuzzer target: an image file (PNG, JPEG, BMP or anything else stb recognises) through the
// tools' loaders: the header read of the dataset scan, the image decode, the mask decode.
#include <cstdlib>
#include <cstring>

#include "fuzz_input.h"
#include "tools/data/image.h"

namespace {

// Issue 15, item 8: stb decodes a BMP cut short, the missing rows read as zeros, and the tools
// train or predict on it. An uncompressed BMP (BI_RGB, BI_BITFIELDS) that decodes must hold the
// whole pixel array its header declares.
bool is_bmp_cut_short(const uint8_t* data, size_t size) {
  if (size < 54 || data[0] != 'B' || data[1] != 'M') return false;
  auto u32 = [&](size_t at) {
    uint32_t v;
    std::memcpy(&v, data + at, 4);
    return v;
  };
  auto u16 = [&](size_t at) {
    uint16_t v;
    std::memcpy(&v, data + at, 2);
    return v;
  };
  const uint32_t compression = u32(30);
  if (u32(14) < 40 || (compression != 0 && compression != 3)) return false;  // OS/2 or RLE
  const uint64_t width = std::llabs(static_cast<int32_t>(u32(18)));
  const uint64_t height = std::llabs(static_cast<int32_t>(u32(22)));
  const uint64_t row_bytes = (width * u16(28) + 31) / 32 * 4;
  return size < u32(10) + row_bytes * height;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sono::fuzz::MemoryFile file;
  const std::string& path = file.write(data, size);
  sono::fuzz::expect_clean_outcome("read_image_size", [&] { sono::data::read_image_size(path); });
  sono::fuzz::expect_clean_outcome("load_image", [&] {
    sono::data::load_image(path);
    if (is_bmp_cut_short(data, size)) {
      std::fprintf(stderr, "FINDING: load_image decoded a BMP shorter than its pixel array\n");
      std::abort();
    }
  });
  sono::fuzz::expect_clean_outcome("load_mask", [&] { sono::data::load_mask({path}); });
  return 0;
}
