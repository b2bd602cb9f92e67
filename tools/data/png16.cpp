// 16-bit grey PNG, which stb_image_write cannot write (8 bits only).
#include <zlib.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "tensor/atomic_file.h"
#include "tensor/error.h"
#include "tools/data/deflate.h"
#include "tools/data/image.h"

namespace sono::data {

namespace {

void append_u32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xFF);
}

// Length, type + data, CRC of type + data.
void append_chunk(std::string& png, const std::string& type, const std::string& data) {
  append_u32(png, static_cast<uint32_t>(data.size()));
  const std::string body = type + data;
  png += body;
  append_u32(png, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
}

}  // namespace

void save_probability_png(const fs::path& file, const Image& map) {
  SONO_CHECK(map.channels == 1, "save_probability_png: expected a 1-channel map, got ", map.channels, " channels");
  std::string rows;  // each row: filter type 0 (none), then big-endian samples
  rows.reserve(static_cast<size_t>(map.height) * (1 + 2 * size_t(map.width)));
  for (int y = 0; y < map.height; ++y) {
    rows += '\0';
    for (int x = 0; x < map.width; ++x) {
      const uint16_t v = to_sample16(map.at(y, x, 0));
      rows += static_cast<char>(v >> 8);
      rows += static_cast<char>(v & 0xFF);
    }
  }
  int size = 0;
  std::unique_ptr<unsigned char, void (*)(void*)> zlib(
      png_deflate(reinterpret_cast<unsigned char*>(rows.data()), static_cast<int>(rows.size()), &size, 0), std::free);
  SONO_CHECK(zlib, "cannot encode PNG for '", file.string(), "'");
  std::string header;
  append_u32(header, static_cast<uint32_t>(map.width));
  append_u32(header, static_cast<uint32_t>(map.height));
  header += std::string{'\x10', '\0', '\0', '\0', '\0'};  // 16 bits, grey, deflate, filter method 0, not interlaced
  std::string png = "\x89PNG\r\n\x1a\n";
  append_chunk(png, "IHDR", header);
  append_chunk(png, "IDAT", std::string(reinterpret_cast<const char*>(zlib.get()), size));
  append_chunk(png, "IEND", "");
  write_file_atomic(file, png);
}

}  // namespace sono::data
