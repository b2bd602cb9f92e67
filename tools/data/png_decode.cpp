#include "tools/data/png_decode.h"

#include <libdeflate.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "tools/data/image.h"

namespace sono::data {

namespace {

uint32_t be32(const unsigned char* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}

bool is_chunk(const unsigned char* type, const char* name) { return std::memcmp(type, name, 4) == 0; }

struct Chunk {
  const unsigned char *type, *data;
  size_t length;
};

// The chunk at byte `at` of the n bytes at b, with `at` moved past it; nullopt where it does
// not lie within them.
std::optional<Chunk> next_chunk(const unsigned char* b, size_t n, size_t& at) {
  if (at > n || n - at < 12) return std::nullopt;
  const size_t length = be32(b + at);
  if (length > n - at - 12) return std::nullopt;
  const Chunk chunk{b + at + 4, b + at + 8, length};
  at += 12 + length;
  return chunk;
}

struct Header {
  int width, height, channels;
  bool sixteen_bit;
  size_t row_bytes() const { return size_t(width) * channels * (sixteen_bit ? 2 : 1); }
  size_t pixel_bytes() const { return size_t(channels) * (sixteen_bit ? 2 : 1); }
};

// IHDR's 13 bytes where they describe a PNG of the simple kind, within the pixel limit.
std::optional<Header> simple_header(const unsigned char* d) {
  const uint32_t width = be32(d), height = be32(d + 4);
  const int depth = d[8], colour_type = d[9];
  const int channels = colour_type == 0 ? 1 : colour_type == 4 ? 2 : colour_type == 2 ? 3 : colour_type == 6 ? 4 : 0;
  const bool compression_filter_interlace_0 = !d[10] && !d[11] && !d[12];
  if (width == 0 || height == 0 || uint64_t{width} * height > uint64_t{kMaxImagePixels}) return std::nullopt;
  if ((depth != 8 && depth != 16) || !channels || !compression_filter_interlace_0) return std::nullopt;
  return Header{int(width), int(height), channels, depth == 16};
}

struct Chunks {
  Header header;
  std::vector<unsigned char> stream;  // the IDAT chunks' data: one zlib stream
};

// The header and image data up to IEND; nullopt at anything irregular, a palette, transparency
// or a critical chunk this decoder does not know.
std::optional<Chunks> read_chunks(const unsigned char* b, size_t n) {
  static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (n < 8 || std::memcmp(b, signature, 8) != 0) return std::nullopt;
  std::optional<Header> header;
  std::vector<unsigned char> stream;
  for (size_t at = 8;;) {
    const std::optional<Chunk> c = next_chunk(b, n, at);
    if (!c) return std::nullopt;
    if (is_chunk(c->type, "IHDR")) {
      if (header || c->length != 13 || !(header = simple_header(c->data))) return std::nullopt;
    } else if (!header) {
      return std::nullopt;  // IHDR comes first
    } else if (is_chunk(c->type, "IDAT")) {
      stream.insert(stream.end(), c->data, c->data + c->length);
    } else if (is_chunk(c->type, "IEND")) {
      return Chunks{*header, std::move(stream)};
    } else if (is_chunk(c->type, "PLTE") || is_chunk(c->type, "tRNS") || !(c->type[0] & 0x20)) {
      return std::nullopt;  // bit 5 of the first letter clear: critical
    }
  }
}

struct DecompressorDeleter {
  void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
};

// Whether the stream inflates to exactly `size` bytes, into `out`.
bool inflate_exactly(const std::vector<unsigned char>& stream, unsigned char* out, size_t size) {
  thread_local std::unique_ptr<libdeflate_decompressor, DecompressorDeleter> d(libdeflate_alloc_decompressor());
  size_t written = 0;
  return d && libdeflate_zlib_decompress(d.get(), stream.data(), stream.size(), out, size, &written) ==
                  LIBDEFLATE_SUCCESS && written == size;
}

// The Paeth predictor: of left, up and up-left, the nearest to left + up - up_left. Its
// distances written so that only two depend on `left`, the value carried from byte to byte.
int paeth(int left, int up, int up_left) {
  const int pa = std::abs(up - up_left), pb = std::abs(left - up_left), pc = std::abs(left - up_left + up - up_left);
  return pa <= pb && pa <= pc ? left : pb <= pc ? up : up_left;
}

// One scan line's filter undone: out = the row's bytes, from `in` and the row above (`up`).
// Bpp: bytes per pixel, the distance of a byte's left neighbour; a constant, so the compiler
// keeps the left neighbour in a register instead of reloading the byte it has just stored. False
// for an unknown filter.
template <size_t Bpp>
bool unfilter_row(int filter, const unsigned char* __restrict in, const unsigned char* __restrict up,
                  unsigned char* __restrict out, size_t row) {
  switch (filter) {
    case 0:
      std::memcpy(out, in, row);
      return true;
    case 1:
      std::memcpy(out, in, Bpp);
      for (size_t i = Bpp; i < row; ++i) out[i] = static_cast<unsigned char>(in[i] + out[i - Bpp]);
      return true;
    case 2:
      for (size_t i = 0; i < row; ++i) out[i] = static_cast<unsigned char>(in[i] + up[i]);
      return true;
    case 3:
      for (size_t i = 0; i < Bpp; ++i) out[i] = static_cast<unsigned char>(in[i] + up[i] / 2);
      for (size_t i = Bpp; i < row; ++i) out[i] = static_cast<unsigned char>(in[i] + (out[i - Bpp] + up[i]) / 2);
      return true;
    case 4:
      for (size_t i = 0; i < Bpp; ++i) out[i] = static_cast<unsigned char>(in[i] + up[i]);  // Paeth(0, up, 0)
      for (size_t i = Bpp; i < row; ++i)
        out[i] = static_cast<unsigned char>(in[i] + paeth(out[i - Bpp], up[i], up[i - Bpp]));
      return true;
    default:
      return false;
  }
}

// unfilter_row for a pixel of `bpp` bytes: 1-4 channels of 1 or 2 bytes.
bool unfilter_row(int filter, const unsigned char* in, const unsigned char* up, unsigned char* out, size_t row,
                  size_t bpp) {
  switch (bpp) {
    case 1: return unfilter_row<1>(filter, in, up, out, row);
    case 2: return unfilter_row<2>(filter, in, up, out, row);
    case 3: return unfilter_row<3>(filter, in, up, out, row);
    case 4: return unfilter_row<4>(filter, in, up, out, row);
    case 6: return unfilter_row<6>(filter, in, up, out, row);
    default: return unfilter_row<8>(filter, in, up, out, row);
  }
}

// Big-endian 16-bit samples in place in the machine's order.
void to_native_order(unsigned char* bytes, size_t n) {
  for (size_t i = 0; i + 1 < n; i += 2) {
    const uint16_t v = static_cast<uint16_t>(bytes[i] << 8 | bytes[i + 1]);
    std::memcpy(bytes + i, &v, 2);
  }
}

}  // namespace

bool png_chunks_fit(const std::string& bytes) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t at = 8;;) {
    const std::optional<Chunk> c = next_chunk(b, bytes.size(), at);
    if (!c) return false;
    if (is_chunk(c->type, "IEND")) return true;
  }
}

std::optional<PngPixels> decode_simple_png(const std::string& bytes) {
  std::optional<Chunks> chunks = read_chunks(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  if (!chunks) return std::nullopt;
  const Header& h = chunks->header;
  const size_t row = h.row_bytes(), rows = size_t(h.height);
  auto lines = std::make_unique_for_overwrite<unsigned char[]>(rows * (row + 1));  // each: filter byte, row
  if (!inflate_exactly(chunks->stream, lines.get(), rows * (row + 1))) return std::nullopt;
  PngPixels png{h.height, h.width, h.channels, h.sixteen_bit};
  png.samples.reset(std::malloc(rows * row));
  if (!png.samples) return std::nullopt;
  auto* out = static_cast<unsigned char*>(png.samples.get());
  const std::vector<unsigned char> zeros(row, 0);  // the row above the first
  for (size_t y = 0; y < rows; ++y) {
    const unsigned char* line = lines.get() + y * (row + 1);
    if (!unfilter_row(line[0], line + 1, y ? out + (y - 1) * row : zeros.data(), out + y * row, row, h.pixel_bytes()))
      return std::nullopt;
  }
  if (h.sixteen_bit) to_native_order(out, rows * row);
  return png;
}

}  // namespace sono::data
