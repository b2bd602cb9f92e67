// The tools' data code: image decoding and writing, dataset layouts, the duplicate-aware
// split, joint augmentation, the threaded loader, metrics, progress and training logs. Inputs
// are small synthetic images written to a temp folder; one case runs the split on BUSI when
// the data is present (SONO_BUSI_DIR, or ../shared/busi beside the source tree).
#include <stb_image.h>
#include <stb_image_write.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "helpers.h"
#include "tools/data/augment.h"
#include "tools/data/cache.h"
#include "tools/data/dataset.h"
#include "tools/data/image.h"
#include "tools/data/lesion_view.h"
#include "tools/data/loader.h"
#include "tools/data/metrics.h"
#include "tools/data/model_input.h"
#include "tools/data/parallel.h"
#include "tools/data/png_decode.h"
#include "tools/data/progress.h"
#include "tools/data/seeding.h"
#include "tools/data/split.h"
#include "tools/data/training_log.h"

using namespace sono;
using namespace sono::data;
using namespace sono::test;

namespace {

void write_png8(const fs::path& file, int h, int w, int comp, const std::vector<uint8_t>& px) {
  fs::create_directories(file.parent_path());
  REQUIRE(px.size() == size_t(h) * w * comp);
  REQUIRE(stbi_write_png(file.c_str(), w, h, comp, px.data(), w * comp));
}

// stb_image_write writes only 8-bit PNGs, each row with the filter it picks, so other PNGs are
// built here: stored (uncompressed) deflate blocks, big-endian samples, the rows' filters given.
uint32_t crc32(const std::string& bytes) {
  uint32_t c = 0xffffffffu;
  for (unsigned char b : bytes) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return ~c;
}

std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }

std::string png_chunk(const std::string& type, const std::string& data) {
  return be32(uint32_t(data.size())) + type + data + be32(crc32(type + data));
}

std::string zlib_stored(const std::string& raw) {
  std::string zlib = "\x78\x01";
  for (size_t at = 0; at < raw.size(); at += 65535) {
    uint16_t n = uint16_t(std::min<size_t>(65535, raw.size() - at));
    zlib += char(at + n >= raw.size() ? 1 : 0);
    zlib += {char(n), char(n >> 8), char(~n), char(~n >> 8)};
    zlib += raw.substr(at, n);
  }
  uint32_t a = 1, b = 0;
  for (unsigned char c : raw) a = (a + c) % 65521, b = (b + a) % 65521;
  return zlib + be32((b << 16) | a);
}

// PNG filter `type` applied to row `y` of `bytes` (rows of `row` bytes, `bpp` bytes a pixel).
std::string filtered_row(const std::string& bytes, size_t y, size_t row, size_t bpp, int type) {
  auto at = [&](size_t yy, size_t i) -> int { return static_cast<unsigned char>(bytes[yy * row + i]); };
  std::string out(1, char(type));
  for (size_t i = 0; i < row; ++i) {
    const int left = i >= bpp ? at(y, i - bpp) : 0, up = y ? at(y - 1, i) : 0,
              up_left = y && i >= bpp ? at(y - 1, i - bpp) : 0;
    const int p = left + up - up_left, pa = std::abs(p - left), pb = std::abs(p - up), pc = std::abs(p - up_left);
    const int paeth = pa <= pb && pa <= pc ? left : pb <= pc ? up : up_left;
    const int prediction[] = {0, left, up, (left + up) / 2, paeth};
    out += char(at(y, i) - prediction[type]);
  }
  return out;
}

// A PNG of h x w pixels of comp samples of `depth` bits (8 or 16), row y filtered with
// filters[y % size]; `chunks` go between IHDR and IDAT.
std::string png_bytes(int h, int w, int comp, int depth, const std::vector<uint16_t>& px, std::vector<int> filters,
                      const std::string& chunks = "") {
  REQUIRE(px.size() == size_t(h) * w * comp);
  const char colour_type = comp == 1 ? 0 : comp == 2 ? 4 : comp == 3 ? 2 : 6;
  std::string bytes;
  for (uint16_t v : px) bytes += depth == 16 ? std::string{char(v >> 8), char(v)} : std::string(1, char(v));
  const size_t row = bytes.size() / h, bpp = size_t(comp) * depth / 8;
  std::string raw;
  for (int y = 0; y < h; ++y) raw += filtered_row(bytes, y, row, bpp, filters[y % filters.size()]);
  std::string ihdr = be32(w) + be32(h) + std::string{char(depth), colour_type, 0, 0, 0};
  return "\x89PNG\r\n\x1a\n" + png_chunk("IHDR", ihdr) + chunks + png_chunk("IDAT", zlib_stored(raw)) +
         png_chunk("IEND", "");
}

void write_png16(const fs::path& file, int h, int w, int comp, const std::vector<uint16_t>& px) {
  std::ofstream(file, std::ios::binary) << png_bytes(h, w, comp, 16, px, {0});
}

// A smooth random grey pattern: a few sinusoids with random frequencies and phases, so that
// two seeds give unrelated images (pHash about 32 bits apart).
std::vector<uint8_t> scan_pixels(int h, int w, uint64_t seed) {
  Generator gen(seed);
  std::vector<double> fx, fy, phase;
  for (int k = 0; k < 4; ++k) {
    fx.push_back(uniform(gen, 0.5, 3.5));
    fy.push_back(uniform(gen, 0.5, 3.5));
    phase.push_back(uniform(gen, 0, 6.283));
  }
  std::vector<uint8_t> px(size_t(h) * w);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      double v = 0;
      for (int k = 0; k < 4; ++k) v += std::sin(6.283 * (fx[k] * x / w + fy[k] * y / h) + phase[k]);
      px[size_t(y) * w + x] = uint8_t(std::clamp(128 + 30 * v, 0.0, 255.0));
    }
  return px;
}

Image grey_image(int h, int w, const std::vector<uint8_t>& px) {
  Image img(h, w, 3);
  for (size_t p = 0; p < px.size(); ++p)
    for (int c = 0; c < 3; ++c) img.pixels[p * 3 + c] = px[p] / 255.0f;
  return img;
}

// A copy with small noise and a caliper mark: what BUSI's near-duplicates look like.
std::vector<uint8_t> near_copy(std::vector<uint8_t> px, int h, int w, uint64_t seed) {
  Generator gen(seed);
  for (auto& v : px) v = uint8_t(std::clamp(v + int(gen.next() % 9) - 4, 0, 255));
  for (int d = -2; d <= 2; ++d) px[size_t(h / 3) * w + w / 3 + d] = px[size_t(h / 3 + d) * w + w / 3] = 255;
  return px;
}

std::vector<uint8_t> mask_pixels(int h, int w, int y0, int x0, int y1, int x1, uint8_t on = 255) {
  std::vector<uint8_t> px(size_t(h) * w, 0);
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) px[size_t(y) * w + x] = on;
  return px;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

void truncate_file(const fs::path& file, double keep) {
  fs::resize_file(file, size_t(fs::file_size(file) * keep));
}

// A BUSI-style tree: ROOT/CLASS/X.png + X_mask.png, `per_class` images per class.
void write_busi_tree(const fs::path& root, const std::vector<std::string>& classes, int per_class, int h, int w) {
  uint64_t seed = 1;
  for (const auto& c : classes)
    for (int i = 0; i < per_class; ++i, ++seed) {
      std::string stem = c + " (" + std::to_string(i + 1) + ")";
      write_png8(root / c / (stem + ".png"), h, w, 1, scan_pixels(h, w, seed));
      write_png8(root / c / (stem + "_mask.png"), h, w, 1, mask_pixels(h, w, 2, 2 + i % 5, h / 2, w / 2));
    }
}

}  // namespace

// stb's pixels of a PNG in memory, in its own channel count and depth.
std::vector<uint8_t> stb_pixels(const std::string& png) {
  const auto* bytes = reinterpret_cast<const stbi_uc*>(png.data());
  const int size = static_cast<int>(png.size());
  int w = 0, h = 0, c = 0;
  const bool sixteen = stbi_is_16_bit_from_memory(bytes, size);
  void* p = sixteen ? static_cast<void*>(stbi_load_16_from_memory(bytes, size, &w, &h, &c, 0))
                    : static_cast<void*>(stbi_load_from_memory(bytes, size, &w, &h, &c, 0));
  REQUIRE(p);
  const auto* b = static_cast<const uint8_t*>(p);
  std::vector<uint8_t> pixels(b, b + size_t(w) * h * c * (sixteen ? 2 : 1));
  stbi_image_free(p);
  return pixels;
}

std::vector<uint8_t> simple_png_pixels(const std::string& png) {
  const std::optional<PngPixels> d = decode_simple_png(png);
  REQUIRE(d);
  const auto* b = static_cast<const uint8_t*>(d->samples.get());
  return {b, b + size_t(d->width) * d->height * d->channels * (d->sixteen_bit ? 2 : 1)};
}

// predict's --streams: results come back in order whatever stream finishes first, a stream runs
// at most 2 streams items past the last delivered, and an error stops the run at its item.
TEST_CASE("run_in_streams delivers in order, holds back a stream that runs ahead, rethrows the first error") {
  const size_t n = 23;
  const int streams = 3;
  std::mutex mutex;
  std::vector<size_t> delivered;
  std::vector<int> started(streams, 0);
  size_t most_ahead = 0;
  data::run_in_streams(
      n, streams, [&](int s) { started[s] += 1; },
      [&](int s, size_t k) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          most_ahead = std::max(most_ahead, k - std::min(k, delivered.size()));
        }
        CHECK(k % streams == static_cast<size_t>(s));
        if (s == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the others run ahead
        return k * k;
      },
      [&](size_t k, size_t& square) {
        CHECK(square == k * k);
        std::lock_guard<std::mutex> lock(mutex);
        delivered.push_back(k);
      });
  std::vector<size_t> expected(n);
  std::iota(expected.begin(), expected.end(), size_t{0});
  CHECK(delivered == expected);
  CHECK(started == std::vector<int>(streams, 1));
  CHECK(most_ahead < 2 * streams);
  CHECK(most_ahead >= 2);  // the fast streams did run ahead of the slow one

  delivered.clear();
  auto failing = [&] {
    data::run_in_streams(
        n, streams, [](int) {},
        [](int, size_t k) {
          if (k == 7) throw std::runtime_error("item 7");
          return k;
        },
        [&](size_t k, size_t&) { delivered.push_back(k); });
  };
  CHECK_THROWS_WITH(failing(), "item 7");
  CHECK(delivered == std::vector<size_t>{0, 1, 2, 3, 4, 5, 6});
}

TEST_CASE("PNGs of the simple kind decode to stb's pixels through libdeflate; other PNGs are left to stb") {
  std::mt19937 rng(5);
  for (int depth : {8, 16})
    for (int comp = 1; comp <= 4; ++comp)
      for (const std::vector<int>& filters : std::vector<std::vector<int>>{{0}, {1}, {2}, {3}, {4}, {4, 3, 2, 1, 0}}) {
        INFO(depth << "-bit, " << comp << " channels, filters " << filters.front() << (filters.size() > 1 ? "..." : ""));
        std::vector<uint16_t> px(5 * 7 * comp);
        for (uint16_t& v : px) v = static_cast<uint16_t>(rng() % (depth == 16 ? 65536 : 256));
        const std::string png = png_bytes(5, 7, comp, depth, px, filters);
        CHECK(simple_png_pixels(png) == stb_pixels(png));
      }
  // as stb_image_write writes them: compressed, a filter picked per row
  std::vector<uint8_t> scan(31 * 17);
  for (size_t i = 0; i < scan.size(); ++i) scan[i] = static_cast<uint8_t>((i * 7) % 251 + (i / 17) % 3);
  TempDir dir;
  write_png8(dir / "scan.png", 31, 17, 1, scan);
  std::ifstream file(dir / "scan.png", std::ios::binary);
  const std::string stb_png{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  CHECK(simple_png_pixels(stb_png) == stb_pixels(stb_png));
  // an ancillary chunk is skipped
  const std::vector<uint16_t> grey = {0, 50, 100, 150, 200, 250};
  CHECK(simple_png_pixels(png_bytes(2, 3, 1, 8, grey, {1}, png_chunk("tEXt", "a\0b"))) == stb_pixels(png_bytes(2, 3, 1, 8, grey, {1})));

  // a row of 3 grey pixels from its image data, or from its scan line (filter byte first)
  auto grey_row_of_stream = [](const std::string& stream) {
    return "\x89PNG\r\n\x1a\n" + png_chunk("IHDR", be32(3) + be32(1) + std::string{8, 0, 0, 0, 0}) +
           png_chunk("IDAT", stream) + png_chunk("IEND", "");
  };
  auto grey_row_png = [&](const std::string& line) { return grey_row_of_stream(zlib_stored(line)); };
  std::string corrupt = zlib_stored(std::string("\0\1\2\3", 4));
  corrupt[5] ^= 1;  // the stored block's length and its complement disagree
  CHECK(simple_png_pixels(grey_row_png(std::string("\0\1\2\3", 4))) == std::vector<uint8_t>{1, 2, 3});
  std::string interlaced = grey_row_png(std::string("\0\1\2\3", 4)), palette = interlaced;
  const size_t ihdr_data = 16;
  interlaced[ihdr_data + 12] = 1;
  palette[ihdr_data + 9] = 3;
  // sides whose product overflows 64-bit signed arithmetic, an 8-bit grey header otherwise
  // (tests/fuzz/findings/image/png_ihdr_sides_overflow.png)
  const std::string huge = "\x89PNG\r\n\x1a\n" +
                           png_chunk("IHDR", be32(0xffffffffu) + be32(0xffffffffu) + std::string{8, 0, 0, 0, 0}) +
                           png_chunk("IDAT", zlib_stored(std::string("\0\1\2\3", 4))) + png_chunk("IEND", "");
  for (const auto& [name, png] : std::vector<std::pair<std::string, std::string>>{
           {"over the pixel limit, sides of 2^32 - 1", huge},
           {"interlaced", interlaced},
           {"palette", palette},
           {"filter type 5", grey_row_png(std::string("\5\1\2\3", 4))},
           {"a stream shorter than the rows", grey_row_png(std::string("\0\1\2", 3))},
           {"a stream longer than the rows", grey_row_png(std::string("\0\1\2\3\4", 5))},
           {"a corrupt stream", grey_row_of_stream(corrupt)},
           {"a chunk cut short", grey_row_png(std::string("\0\1\2\3", 4)).substr(0, 45) + png_chunk("IEND", "")},
           {"transparency chunk", png_bytes(2, 3, 1, 8, grey, {0}, png_chunk("tRNS", std::string(2, '\0')))},
           {"unknown critical chunk", png_bytes(2, 3, 1, 8, grey, {0}, png_chunk("ABCD", ""))},
           {"no PNG", "GIF89a"}}) {
    INFO(name);
    CHECK_FALSE(decode_simple_png(png));
  }
}

TEST_CASE("load_image: grey, grey+alpha, RGB, RGBA, 16-bit and JPEG become RGB 0..1") {
  TempDir dir;
  write_png8(dir / "grey.png", 1, 2, 1, {0, 200});
  write_png8(dir / "ga.png", 1, 2, 2, {10, 255, 20, 0});
  write_png8(dir / "rgb.png", 1, 2, 3, {1, 2, 3, 4, 5, 6});
  write_png8(dir / "rgba.png", 1, 2, 4, {1, 2, 3, 0, 4, 5, 6, 128});
  write_png16(dir / "grey16.png", 2, 1, 1, {0, 65535});
  write_png16(dir / "rgb16.png", 1, 1, 3, {1000, 30000, 65535});
  auto pixels = [&](const char* name) { return load_image(dir / name).pixels; };
  CHECK(pixels("grey.png") == std::vector<float>{0, 0, 0, 200 / 255.f, 200 / 255.f, 200 / 255.f});
  CHECK(pixels("ga.png") == std::vector<float>{10 / 255.f, 10 / 255.f, 10 / 255.f, 20 / 255.f, 20 / 255.f, 20 / 255.f});
  CHECK(pixels("rgb.png") == std::vector<float>{1 / 255.f, 2 / 255.f, 3 / 255.f, 4 / 255.f, 5 / 255.f, 6 / 255.f});
  CHECK(pixels("rgba.png") == pixels("rgb.png"));
  Image g16 = load_image(dir / "grey16.png");
  CHECK(g16.height == 2);
  CHECK(g16.width == 1);
  CHECK(g16.pixels == std::vector<float>{0, 0, 0, 1, 1, 1});
  CHECK(pixels("rgb16.png") == std::vector<float>{1000 / 65535.f, 30000 / 65535.f, 1.f});

  std::vector<uint8_t> flat(8 * 8 * 3, 90);
  REQUIRE(stbi_write_jpg((dir / "flat.jpg").c_str(), 8, 8, 3, flat.data(), 95));
  for (float v : pixels("flat.jpg")) CHECK(v == doctest::Approx(90 / 255.0).epsilon(0.02));
  CHECK(read_image_size(dir / "rgb16.png") == ImageSize{1, 1});
}

TEST_CASE("image errors name the file: missing, empty, corrupt, truncated PNG and JPEG") {
  TempDir dir;
  CHECK(contains(error_of([&] { load_image(dir / "nope.png"); }), "nope.png' does not exist"));
  std::ofstream(dir / "empty.png").close();
  CHECK(contains(error_of([&] { load_image(dir / "empty.png"); }), "empty.png' is empty"));
  std::ofstream(dir / "junk.png") << "this is not an image at all";
  CHECK(contains(error_of([&] { load_image(dir / "junk.png"); }), "cannot decode image file"));
  CHECK(contains(error_of([&] { load_image(dir / "junk.png"); }), "junk.png"));

  write_png8(dir / "cut.png", 40, 40, 1, scan_pixels(40, 40, 3));
  truncate_file(dir / "cut.png", 0.6);
  CHECK(contains(error_of([&] { load_image(dir / "cut.png"); }), "cut.png' is truncated"));
  CHECK(contains(error_of([&] { load_mask({dir / "cut.png"}); }), "cut.png' is truncated"));

  std::vector<uint8_t> noise(64 * 64 * 3);
  Generator gen(5);
  for (auto& v : noise) v = uint8_t(gen.next());
  REQUIRE(stbi_write_jpg((dir / "cut.jpg").c_str(), 64, 64, 3, noise.data(), 90));
  truncate_file(dir / "cut.jpg", 0.5);
  CHECK(contains(error_of([&] { load_image(dir / "cut.jpg"); }), "cut.jpg' is truncated"));
}

TEST_CASE("a BMP shorter than its header promises is truncated; a whole one loads") {
  TempDir dir;
  std::vector<uint8_t> rgb(30 * 30 * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t(i * 7);
  for (const char* name : {"whole.bmp", "cut.bmp", "header.bmp"})
    REQUIRE(stbi_write_bmp((dir / name).c_str(), 30, 30, 3, rgb.data()));
  Image whole = load_image(dir / "whole.bmp");
  REQUIRE(whole.pixels.size() == rgb.size());
  CHECK(whole.at(29, 29, 2) == doctest::Approx(rgb.back() / 255.0f));
  // 54 bytes of headers, then 30 rows of 92 bytes (90 padded to a multiple of 4).
  REQUIRE(fs::file_size(dir / "whole.bmp") == 54 + 30 * 92);
  fs::resize_file(dir / "cut.bmp", 54 + 30 * 92 - 1);
  CHECK(contains(error_of([&] { load_image(dir / "cut.bmp"); }), "cut.bmp' is truncated (2813 of 2814 bytes"));
  fs::resize_file(dir / "header.bmp", 30);
  CHECK(contains(error_of([&] { load_image(dir / "header.bmp"); }), "header.bmp' is truncated"));
  // stb decodes a compression field it does not know, a negative one too, as uncompressed: the
  // cut file is still truncated (tests/fuzz/findings/image/bmp_negative_compression.bmp).
  std::string bytes(std::istreambuf_iterator<char>(std::ifstream(dir / "cut.bmp", std::ios::binary).rdbuf()), {});
  bytes[33] = '\xff';  // compression 0xff000000
  std::ofstream(dir / "cut.bmp", std::ios::binary | std::ios::trunc) << bytes;
  CHECK(contains(error_of([&] { load_image(dir / "cut.bmp"); }), "cut.bmp' is truncated (2813 of 2814 bytes"));
}

TEST_CASE("hostile image headers are refused before stb decodes: JPEG Huffman counts, huge dimensions, chunk lengths") {
  TempDir dir;
  // DHT with 16 counts of 255 (4080 codes; stb's tables hold 256), then the end marker.
  std::string jpeg = std::string("\xff\xd8\xff\xc4\x00\x13\x00", 7) + std::string(16, '\xff') + "\xff\xd9";
  std::ofstream(dir / "dht.jpg", std::ios::binary) << jpeg;
  CHECK(contains(error_of([&] { load_image(dir / "dht.jpg"); }),
                 "dht.jpg' is corrupt (a JPEG Huffman table lists 4080 codes, at most 256)"));
  // A segment length of 3 still makes stb read a whole table past it.
  jpeg[5] = '\x03';
  std::ofstream(dir / "dht.jpg", std::ios::binary) << jpeg;
  CHECK(contains(error_of([&] { load_image(dir / "dht.jpg"); }), "4080 codes"));
  // The data set scan reads every image's size first: stbi_info parses the tables too.
  CHECK(contains(error_of([&] { read_image_size(dir / "dht.jpg"); }), "4080 codes"));
  // stb skips FF fill bytes before the start-of-image marker, as before any marker: so does
  // the check (tests/fuzz/findings/image/jpeg_dht_after_fill_bytes.jpg).
  std::ofstream(dir / "dht.jpg", std::ios::binary) << std::string("\xff\xff", 2) << jpeg;
  CHECK(contains(error_of([&] { load_image(dir / "dht.jpg"); }), "4080 codes"));

  // A PNG whose header declares 10000 x 10000 grey pixels: 1.2 GB as load_image's floats.
  std::string ihdr("\x00\x00\x00\x0dIHDR\x00\x00\x27\x10\x00\x00\x27\x10\x08\x00\x00\x00\x00\x00\x00\x00\x00", 25);
  std::string png = std::string("\x89PNG\r\n\x1a\n") + ihdr + std::string("\0\0\0\0IEND\xae\x42\x60\x82", 12);
  std::ofstream(dir / "huge.png", std::ios::binary) << png;
  CHECK(contains(error_of([&] { load_image(dir / "huge.png"); }),
                 "huge.png' is 10000x10000, more than the limit of 33554432 pixels"));
  // A second IDAT declaring 1 GiB, where the file ends 6 bytes later, with IEND: stb would
  // allocate for it before reading (tests/fuzz/findings/image/png_idat_length_past_end.png).
  png = png_bytes(2, 3, 1, 8, {0, 50, 100, 150, 200, 250}, {0});
  png.insert(png.size() - 12, be32(uint32_t{1} << 30) + "IDATxx");
  std::ofstream(dir / "long_chunk.png", std::ios::binary) << png;
  CHECK(contains(error_of([&] { load_image(dir / "long_chunk.png"); }),
                 "long_chunk.png' is corrupt (a PNG chunk runs past the end of the file)"));

  // A sequential JPEG holds at most 256 pixels a byte: a whole 256 x 256 one of a single grey
  // loads; the same file whose frame header says 4000 x 4000 is a cut-short scan.
  std::vector<uint8_t> grey(256 * 256, 128);
  REQUIRE(stbi_write_jpg((dir / "flat.jpg").c_str(), 256, 256, 1, grey.data(), 90));
  CHECK(load_image(dir / "flat.jpg").width == 256);
  std::string flat(std::istreambuf_iterator<char>(std::ifstream(dir / "flat.jpg", std::ios::binary).rdbuf()), {});
  const size_t sof = flat.find("\xff\xc0");
  REQUIRE(sof != std::string::npos);
  flat.replace(sof + 5, 4, "\x0f\xa0\x0f\xa0");  // height, width: 4000
  std::ofstream(dir / "flat.jpg", std::ios::binary | std::ios::trunc) << flat;
  CHECK(contains(error_of([&] { load_image(dir / "flat.jpg"); }),
                 "flat.jpg' is truncated (its " + std::to_string(flat.size()) +
                     " bytes cannot hold the 4000x4000 pixels its JPEG header declares)"));
}

TEST_CASE("load_mask: any colour channel > 0 is lesion, alpha ignored, files unioned") {
  TempDir dir;
  write_png8(dir / "a_mask.png", 1, 4, 1, {0, 1, 0, 0});                                 // 1-bit style 0/1
  write_png8(dir / "a_mask_1.png", 1, 4, 4, {0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 9, 255, 0, 0, 0, 255});  // RGBA
  write_png8(dir / "a_mask_2.png", 1, 4, 3, {0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0});       // RGB
  CHECK(load_mask({dir / "a_mask.png"}).values == std::vector<uint8_t>{0, 1, 0, 0});
  CHECK(load_mask({dir / "a_mask_1.png"}).values == std::vector<uint8_t>{0, 0, 1, 0});
  Mask all = load_mask({dir / "a_mask.png", dir / "a_mask_1.png", dir / "a_mask_2.png"});
  CHECK(all.values == std::vector<uint8_t>{0, 1, 1, 1});
  CHECK(all.lesion_pixels() == 3);
  write_png8(dir / "b_mask.png", 2, 4, 1, std::vector<uint8_t>(8, 0));
  std::string e = error_of([&] { load_mask({dir / "a_mask.png", dir / "b_mask.png"}); });
  CHECK(contains(e, "b_mask.png' is 4x2"));
  CHECK(contains(e, "a_mask.png' is 4x1"));
}

TEST_CASE("resize: bilinear as PIL (plain when enlarging, antialiased when shrinking), nearest for masks") {
  Image row(1, 4, 1);
  row.pixels = {0, 1, 2, 3};
  // Enlarging 2x: F.interpolate(bilinear, align_corners=False) values.
  Image up = resize_bilinear(row, 1, 8);
  check_values(Tensor::from_vector({up.pixels.begin(), up.pixels.end()}, {8}),
               {0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3}, 1e-6);
  // Shrinking 2x: triangle of half-width 2 input pixels, weights (0.75, 0.75, 0.25) / 1.75 at the left edge.
  Image down = resize_bilinear(row, 1, 2);
  CHECK(down.pixels[0] == doctest::Approx(1.25 / 1.75));
  CHECK(down.pixels[1] == doctest::Approx(3 - 1.25 / 1.75));
  Image flat(30, 17, 3, 0.4f);
  for (float v : resize_bilinear(flat, 7, 11).pixels) CHECK(v == doctest::Approx(0.4));

  // Enlarging both axes (the horizontal pass first): bilinear between the 4 nearest pixels.
  Image grid(3, 4, 2);
  for (size_t i = 0; i < grid.pixels.size(); ++i) grid.pixels[i] = static_cast<float>((i * 7) % 5) - 1.5f;
  const Image enlarged = resize_bilinear(grid, 7, 9);
  auto source = [](int o, int in, int out) {  // clamped sample position and its lower neighbour
    const double s = std::clamp((o + 0.5) * in / out - 0.5, 0.0, in - 1.0);
    return std::pair{s, std::min(static_cast<int>(s), in - 2)};
  };
  for (int y = 0; y < 7; ++y)
    for (int x = 0; x < 9; ++x)
      for (int c = 0; c < 2; ++c) {
        const auto [sy, y0] = source(y, 3, 7);
        const auto [sx, x0] = source(x, 4, 9);
        const double fy = sy - y0, fx = sx - x0;
        const double expected = (1 - fy) * ((1 - fx) * grid.at(y0, x0, c) + fx * grid.at(y0, x0 + 1, c)) +
                                fy * ((1 - fx) * grid.at(y0 + 1, x0, c) + fx * grid.at(y0 + 1, x0 + 1, c));
        CHECK(enlarged.at(y, x, c) == doctest::Approx(expected).epsilon(1e-5));
      }
  // Taller and narrower, against the transposed image (shorter and wider: the other pass first).
  Image wide(3, 8, 1), tall(8, 3, 1);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 8; ++x) wide.at(y, x, 0) = tall.at(x, y, 0) = static_cast<float>((y * 8 + x) % 6);
  const Image a = resize_bilinear(wide, 7, 3), b = resize_bilinear(tall, 3, 7);
  for (int y = 0; y < 7; ++y)
    for (int x = 0; x < 3; ++x) CHECK(a.at(y, x, 0) == doctest::Approx(b.at(x, y, 0)).epsilon(1e-6));

  Mask m(2, 2);
  m.values = {1, 0, 0, 1};
  CHECK(resize_nearest(m, 4, 4).values == std::vector<uint8_t>{1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1});
  Mask big(4, 4);
  big.at(1, 1) = big.at(3, 3) = 1;  // nearest-exact samples input 1 and 3 when halving
  CHECK(resize_nearest(big, 2, 2).values == std::vector<uint8_t>{1, 0, 0, 1});
}

TEST_CASE("mask and overlay PNGs are written atomically and read back") {
  TempDir dir;
  Mask m(24, 30);
  for (int y = 4; y < 20; ++y)
    for (int x = 5; x < 25; ++x) m.at(y, x) = 1;
  save_mask_png(dir / "m.png", m);
  CHECK(load_mask({dir / "m.png"}).values == m.values);
  CHECK(load_image(dir / "m.png").at(10, 10, 0) == 1.0f);  // stored as 255

  Image img(24, 30, 3, 0.5f);
  save_overlay_png(dir / "o.png", img, m, {255, 0, 0});
  Image o = load_image(dir / "o.png");
  CHECK(o.at(4, 10, 0) == 1.0f);   // top edge of the lesion: outline colour
  CHECK(o.at(4, 10, 1) == 0.0f);
  CHECK(o.at(12, 15, 0) == doctest::Approx(128 / 255.0));  // inside: image
  CHECK(o.at(2, 2, 1) == doctest::Approx(128 / 255.0));    // outside: image

  // Failures: nothing half-written, nothing replaced, no temp file left behind.
  fs::create_directory(dir / "taken.png");
  CHECK(contains(error_of([&] { save_mask_png(dir / "taken.png", m); }), "cannot write"));
  CHECK(fs::is_directory(dir / "taken.png"));
  CHECK(contains(error_of([&] { save_mask_png(dir / "no" / "such" / "dir.png", m); }), "dir.png"));
  Image two(3, 3, 2);
  CHECK(contains(error_of([&] { save_image_png(dir / "m.png", two); }), "expected 1 or 3 channels"));
  CHECK(load_mask({dir / "m.png"}).values == m.values);
  for (const auto& e : fs::directory_iterator(dir.path)) CHECK_FALSE(contains(e.path().string(), ".tmp-"));
}

TEST_CASE("dataset layouts are detected: flat, class folders, BUSI; masks are unioned") {
  TempDir dir;
  auto img = [](int seed) { return scan_pixels(6, 8, seed); };
  auto mask = mask_pixels(6, 8, 1, 1, 3, 3);

  write_png8(dir / "flat/images/b.png", 6, 8, 1, img(1));
  write_png8(dir / "flat/images/a.png", 6, 8, 1, img(2));
  write_png8(dir / "flat/masks/a_mask.png", 6, 8, 1, mask);
  write_png8(dir / "flat/masks/b.png", 6, 8, 1, mask);  // same-name masks are accepted
  Dataset flat = scan_dataset(dir / "flat/images", dir / "flat/masks");
  CHECK(flat.layout == Layout::flat);
  CHECK(flat.classes.empty());
  REQUIRE(flat.samples.size() == 2);
  CHECK(flat.samples[0].name == "a");
  CHECK(flat.samples[1].masks == std::vector<fs::path>{dir / "flat/masks/b.png"});

  for (const char* c : {"malignant", "benign"}) {
    write_png8(dir / "cls/images" / c / "x.jpg.png", 6, 8, 3, std::vector<uint8_t>(6 * 8 * 3, 50));
    write_png8(dir / "cls/masks" / c / "x.jpg_mask.png", 6, 8, 1, mask);
  }
  Dataset cls = scan_dataset(dir / "cls/images", dir / "cls/masks");
  CHECK(cls.layout == Layout::class_folders);
  CHECK(cls.classes == std::vector<std::string>{"benign", "malignant"});
  CHECK(cls.samples[1].label == 1);
  CHECK(cls.samples[1].name == "malignant/x.jpg");

  write_busi_tree(dir / "busi", {"normal", "benign"}, 2, 6, 8);
  write_png8(dir / "busi/benign/benign (1)_mask_1.png", 6, 8, 1, mask_pixels(6, 8, 4, 6, 6, 8));
  Dataset busi = scan_dataset(dir / "busi");
  CHECK(busi.layout == Layout::busi);
  CHECK(busi.classes == std::vector<std::string>{"benign", "normal"});
  CHECK(busi.samples.size() == 4);
  CHECK(busi.class_counts() == std::vector<size_t>{2, 2});
  CHECK(busi.summary() == "busi layout, 4 images: benign 2, normal 2");
  const std::vector<std::string> many = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"};
  CHECK(class_counts_text({many.begin(), many.end() - 1}, std::vector<size_t>(12, 3)) ==
        "a 3, b 3, c 3, d 3, e 3, f 3, g 3, h 3, i 3, j 3, k 3, l 3");
  CHECK(class_counts_text(many, std::vector<size_t>(13, 60)) == "13 classes of 60 images");
  std::vector<size_t> uneven(13, 40);
  uneven[4] = 12, uneven[9] = 80;
  CHECK(class_counts_text(many, uneven) == "13 classes of 12-80 images");
  REQUIRE(busi.samples[0].masks.size() == 2);
  Mask unioned = load_mask(busi.samples[0].masks);
  CHECK(unioned.at(1, 3) == 0);
  CHECK(unioned.at(2, 2) == 1);
  CHECK(unioned.at(5, 7) == 1);
  CHECK(unioned.lesion_pixels() == 1 * 2 + 2 * 2);
}

TEST_CASE("dataset errors: missing folder, image without mask, size mismatch, empty") {
  TempDir dir;
  CHECK(contains(error_of([&] { scan_dataset(dir / "nothing"); }), "images folder '"));
  CHECK(contains(error_of([&] { scan_dataset(dir / "nothing"); }), "nothing' does not exist"));
  fs::create_directories(dir / "empty");
  CHECK(contains(error_of([&] { scan_dataset(dir / "empty"); }), "no images found in"));

  write_busi_tree(dir / "busi", {"benign"}, 2, 6, 8);
  fs::remove(dir / "busi/benign/benign (2)_mask.png");
  std::string e = error_of([&] { scan_dataset(dir / "busi"); });
  CHECK(contains(e, "benign (2).png' has no mask"));
  CHECK(contains(e, "benign (2)_mask.png"));
  CHECK(scan_dataset(dir / "busi", {}, {.masks_required = false}).samples[1].masks.empty());

  write_png8(dir / "busi/benign/benign (2)_mask.png", 7, 8, 1, std::vector<uint8_t>(7 * 8, 0));
  e = error_of([&] { scan_dataset(dir / "busi"); });
  CHECK(contains(e, "benign (2)_mask.png' is 8x7 but its image"));
  CHECK(contains(e, "benign (2).png' is 8x6"));

  write_png8(dir / "cls/images/benign/x.png", 6, 8, 1, scan_pixels(6, 8, 1));
  fs::create_directories(dir / "cls/masks");
  CHECK(contains(error_of([&] { scan_dataset(dir / "cls/images", dir / "cls/masks"); }), "masks folder '"));
  fs::create_directories(dir / "cls/images/normal");
  fs::create_directories(dir / "cls/masks/normal");
  write_png8(dir / "cls/masks/benign/x_mask.png", 6, 8, 1, mask_pixels(6, 8, 1, 1, 2, 2));
  CHECK(contains(error_of([&] { scan_dataset(dir / "cls/images", dir / "cls/masks"); }), "normal' holds no images"));
  CHECK(contains(error_of([&] { scan_dataset(dir / "busi", dir / "missing"); }), "missing' does not exist"));
}

TEST_CASE("perceptual hash: copies and near-copies are close, unrelated scans far apart") {
  const int h = 60, w = 80;
  std::vector<uint64_t> hashes;
  for (uint64_t s = 1; s <= 12; ++s) hashes.push_back(perceptual_hash(grey_image(h, w, scan_pixels(h, w, s))));
  for (size_t i = 0; i < hashes.size(); ++i)
    for (size_t j = i + 1; j < hashes.size(); ++j) CHECK(hamming_distance(hashes[i], hashes[j]) > 12);
  auto base = scan_pixels(h, w, 3);
  CHECK(perceptual_hash(grey_image(h, w, base)) == hashes[2]);
  CHECK(hamming_distance(perceptual_hash(grey_image(h, w, near_copy(base, h, w, 9))), hashes[2]) <= 6);
  // A rescaled copy (another export size) hashes alike too.
  Image resized = resize_bilinear(grey_image(h, w, base), 45, 61);
  CHECK(hamming_distance(perceptual_hash(resized), hashes[2]) <= 6);

  std::vector<int> g = group_near_duplicates({0b0000, 0b0111, 0b1111'0000, 0b0011, 0xFFFF'0000'0000}, 2);
  CHECK(g == std::vector<int>{0, 0, 1, 0, 2});  // 0-3-1 chain joins through 3
}

namespace {

// 3 classes x 20 "patients"; some patients appear twice (near-copy), one pair across classes.
struct SplitFixture {
  Dataset dataset;
  std::vector<uint64_t> hashes;
  std::vector<std::pair<size_t, size_t>> duplicates;

  SplitFixture() {
    const int h = 40, w = 48;
    dataset.classes = {"a", "b", "c"};
    auto add = [&](int label, const std::vector<uint8_t>& px) {
      dataset.samples.push_back({"", {}, label, std::to_string(dataset.samples.size())});
      hashes.push_back(perceptual_hash(grey_image(h, w, px)));
      return dataset.samples.size() - 1;
    };
    uint64_t seed = 100;
    for (int label = 0; label < 3; ++label)
      for (int i = 0; i < 20; ++i, ++seed) {
        auto px = scan_pixels(h, w, seed);
        size_t first = add(label, px);
        if (i % 4 == 0) duplicates.emplace_back(first, add(label, near_copy(px, h, w, seed)));
        if (i % 7 == 0) duplicates.emplace_back(first, add(label, px));  // exact copy
        if (label == 0 && i == 5) duplicates.emplace_back(first, add(1, px));  // same scan, other label
      }
  }
};

}  // namespace

TEST_CASE("split keeps duplicates together, is stratified and deterministic") {
  SplitFixture f;
  const size_t n = f.dataset.samples.size();
  Split s = split_dataset(f.dataset, f.hashes, {.val_fraction = 0.25, .seed = 7});
  CHECK(s.group_count == 60);  // one group per patient
  CHECK(s.train.size() + s.val.size() == n);
  std::set<size_t> val(s.val.begin(), s.val.end());
  for (auto [i, j] : f.duplicates) {
    CHECK(s.group[i] == s.group[j]);
    CHECK(val.count(i) == val.count(j));
  }
  std::vector<size_t> per_class(3, 0), val_per_class(3, 0);
  for (size_t i = 0; i < n; ++i) ++per_class[f.dataset.samples[i].label], val_per_class[f.dataset.samples[i].label] += val.count(i);
  for (int c = 0; c < 3; ++c) {
    INFO("class " << c);
    CHECK(std::abs(double(val_per_class[c]) - 0.25 * per_class[c]) <= 2.0);
  }
  Split again = split_dataset(f.dataset, f.hashes, {.val_fraction = 0.25, .seed = 7});
  CHECK(again.val == s.val);
  CHECK(split_dataset(f.dataset, f.hashes, {.val_fraction = 0.25, .seed = 8}).val != s.val);
  CHECK(contains(s.summary(f.dataset), "in 60 duplicate groups"));
  CHECK(contains(s.summary(f.dataset), "val " + std::to_string(s.val.size()) + " (a "));

  // Held out: the named image and its near-duplicate leave whichever side they were on.
  auto group_of_two = [&](const std::pair<size_t, size_t>& d) {
    return std::count(s.group.begin(), s.group.end(), s.group[d.first]) == 2;
  };
  auto [first, duplicate] = *std::find_if(f.duplicates.begin(), f.duplicates.end(), group_of_two);
  Split held = s;
  hold_out(held, {first});
  CHECK(held.held_out == std::vector<size_t>{std::min(first, duplicate), std::max(first, duplicate)});
  CHECK(held.train.size() + held.val.size() == n - 2);
  for (const auto* side : {&held.train, &held.val})
    CHECK(std::none_of(side->begin(), side->end(), [&](size_t i) { return i == first || i == duplicate; }));
  CHECK(contains(held.summary(f.dataset), ", held out 2 ("));

  Dataset tiny;  // class c has one image: it cannot be on both sides
  tiny.classes = {"a", "c"};
  for (int i = 0; i < 6; ++i) tiny.samples.push_back({"", {}, i == 5 ? 1 : 0, std::to_string(i)});
  std::vector<uint64_t> far(6);
  for (int i = 0; i < 6; ++i) far[i] = mix_seed({uint64_t(i)});
  std::string e = error_of([&] { split_dataset(tiny, far, {.val_fraction = 0.3}); });
  CHECK(contains(e, "class 'c' has no image in the"));
  CHECK(contains(e, "change --val-split or add images"));
  // Fraction 0: a final model trains on every image, the one-image class included.
  Split all = split_dataset(tiny, far, {.val_fraction = 0});
  CHECK(all.val.empty());
  CHECK(all.train == std::vector<size_t>{0, 1, 2, 3, 4, 5});
}

namespace {

// A 64x64 dark image with a bright, asymmetric L-shaped blob and its mask.
std::pair<Image, Mask> blob_sample() {
  Image img(64, 64, 3, 0.1f);
  Mask m(64, 64);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x)
      if ((y >= 10 && y < 22 && x >= 12 && x < 40) || (y >= 22 && y < 34 && x >= 12 && x < 22)) {
        m.at(y, x) = 1;
        for (int c = 0; c < 3; ++c) img.at(y, x, c) = 0.9f;
      }
  return {img, m};
}

}  // namespace

TEST_CASE("flips and quarter turns move image and mask exactly together") {
  auto [img, m] = blob_sample();
  AugmentOptions only_flips = AugmentOptions::none();
  only_flips.hflip = 1;
  Image a = img;
  Mask am = m;
  Generator gen(1);
  augment(a, am, only_flips, gen);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x) {
      REQUIRE(a.at(y, x, 1) == doctest::Approx(img.at(y, 63 - x, 1)).epsilon(1e-6));
      REQUIRE(am.at(y, x) == m.at(y, 63 - x));
    }
  AugmentOptions turns = AugmentOptions::none();
  turns.rotate90 = true;
  std::set<size_t> seen;
  for (uint64_t seed = 0; seed < 16; ++seed) {
    Image b = img;
    Mask bm = m;
    Generator g(seed);
    augment(b, bm, turns, g);
    CHECK(bm.lesion_pixels() == m.lesion_pixels());
    for (size_t p = 0; p < bm.values.size(); ++p) REQUIRE((b.pixels[p * 3] > 0.5f) == (bm.values[p] == 1));
    seen.insert(std::hash<std::string>{}(std::string(bm.values.begin(), bm.values.end())));
  }
  CHECK(seen.size() == 4);  // all four orientations occur
}

TEST_CASE("full augmentation keeps the bright blob under its mask") {
  auto [img, m] = blob_sample();
  AugmentOptions o;  // defaults: flips, quarter turns, +-10 deg, 0.9-1.1 scale, 5% shift, jitter
  for (uint64_t seed = 0; seed < 80; ++seed) {
    o.elastic = seed < 40 ? 0 : 0.03;  // then a deformation as well: ~2 pixels at the lattice
    Image a = img;
    Mask am = m;
    Generator gen(seed);
    augment(a, am, o, gen);
    double inside = 0, outside = 0, mx = 0, my = 0, ix = 0, iy = 0, iw = 0;
    size_t n_in = 0, n_out = 0;
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 64; ++x) {
        double v = a.at(y, x, 0);
        if (am.at(y, x)) inside += v, ++n_in, mx += x, my += y;
        else outside += v, ++n_out;
        double bright = std::max(0.0, v - 0.5);  // weight of the blob's pixels
        ix += bright * x, iy += bright * y, iw += bright;
      }
    INFO("seed " << seed);
    REQUIRE(n_in > 0);
    // 0.9-1.1 scale per axis; the deformation stretches or squeezes the 12-pixel-thick blob more
    CHECK(double(n_in) == doctest::Approx(double(m.lesion_pixels())).epsilon(o.elastic > 0 ? 0.4 : 0.25));
    CHECK(inside / n_in > 0.6);  // 0.9 darkened by the jitter to 0.71 at worst, less at edges
    CHECK(outside / n_out < 0.3);
    CHECK(std::abs(mx / n_in - ix / iw) < 0.75);  // centroids agree within a pixel
    CHECK(std::abs(my / n_in - iy / iw) < 0.75);
  }
}

TEST_CASE("the elastic deformation: bilinear between its lattice, one resampling with the affine, drawn last") {
  AugmentOptions o = AugmentOptions::none();
  Generator off(3), on(3);
  CHECK(draw_deformation(o, 64, 48, off).dx.empty());
  o.elastic = 0.05;
  const Deformation d = draw_deformation(o, 64, 48, on);
  const size_t points = (Deformation::kDeformationCells + 1) * (Deformation::kDeformationCells + 1);
  REQUIRE(d.dx.size() == points);
  REQUIRE(d.dy.size() == points);
  double spread_x = 0;
  for (float v : d.dx) spread_x += v * v;
  CHECK(std::sqrt(spread_x / points) == doctest::Approx(0.05 * 48).epsilon(0.5));  // N(0, elastic x width)
  // The lattice spans the first to the last pixel centre: corners and points exact, bilinear between.
  CHECK(d.at(0, 0, 64, 48).first == doctest::Approx(d.dx.front()));
  CHECK(d.at(47, 63, 64, 48).second == doctest::Approx(d.dy.back()));
  const double x1 = 47.0 / 4, y2 = 63.0 / 2;  // lattice column 1, row 2
  CHECK(d.at(x1, y2, 64, 48).first == doctest::Approx(d.dx[2 * 5 + 1]));
  CHECK(d.at(x1 / 2, 0, 64, 48).second == doctest::Approx((d.dy[0] + d.dy[1]) / 2));

  // A displacement of 2 pixels along x everywhere: output pixel x shows source pixel x + 2.
  auto [img, m] = blob_sample();
  Deformation shift{std::vector<float>(points, 2.0f), std::vector<float>(points, 0.0f)};
  Image out;
  Mask out_mask;
  warp(img, m, Affine{}, shift, out, out_mask);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 62; ++x) {
      REQUIRE(out.at(y, x, 0) == doctest::Approx(img.at(y, x + 2, 0)));
      REQUIRE(out_mask.at(y, x) == m.at(y, x + 2));
    }

  // Drawn after the rest: a deformation too small to move a pixel leaves the chain as it was.
  AugmentOptions chain;
  Image a = img, b = img;
  Mask am = m, bm = m;
  Generator ga(9), gb(9);
  augment(a, am, chain, ga);
  chain.elastic = 1e-9;
  augment(b, bm, chain, gb);
  CHECK(bm.values == am.values);
  for (size_t i = 0; i < a.pixels.size(); ++i) REQUIRE(b.pixels[i] == doctest::Approx(a.pixels[i]).epsilon(1e-5));
}

TEST_CASE("photometric jitter touches the image only and clamps") {
  Image img(1, 3, 1);
  img.pixels = {0.0f, 0.5f, 1.0f};
  apply_photometric(img, {0.1, 1.2});
  CHECK(img.pixels[0] == doctest::Approx(0.1));
  CHECK(img.pixels[1] == doctest::Approx(0.7));
  CHECK(img.pixels[2] == 1.0f);
}

TEST_CASE("metrics: Dice and IoU with the empty-mask rule, lesion-only means, lesions found") {
  Mask empty(2, 4), target(2, 4), half(2, 4);
  target.values = {1, 1, 0, 0, 1, 1, 0, 0};
  half.values = {1, 0, 0, 0, 1, 0, 0, 1};  // 2 of 4 hit, 1 false positive
  CHECK(overlap(empty, empty).dice == 1.0);
  CHECK(overlap(empty, empty).iou == 1.0);
  CHECK(overlap(half, empty).dice == 0.0);
  CHECK(overlap(empty, target).dice == 0.0);
  CHECK(overlap(half, target).dice == doctest::Approx(2.0 * 2 / (3 + 4)));
  CHECK(overlap(half, target).iou == doctest::Approx(2.0 / 5));

  SegmentationMetrics seg;
  CHECK(std::isnan(seg.dice()));
  CHECK(std::isnan(seg.lesions_found()));
  seg.add(empty, empty);
  seg.add(half, empty);
  seg.add(half, target);
  CHECK(seg.images() == 3);
  CHECK(seg.lesion_images() == 1);
  CHECK(seg.dice() == doctest::Approx((1 + 0 + 4.0 / 7) / 3));
  CHECK(seg.iou() == doctest::Approx((1 + 0 + 0.4) / 3));
  CHECK(seg.lesion_dice() == doctest::Approx(4.0 / 7));
  CHECK(seg.lesion_iou() == doctest::Approx(0.4));
  CHECK(seg.lesions_found() == 1.0);
  CHECK(seg.found_lesion_dice() == doctest::Approx(4.0 / 7));
  CHECK(seg.empty_kept_empty() == 0.5);
  seg.add(empty, target);  // a lesion missed: lowers the share found, not the Dice of those found
  CHECK(seg.lesions_found() == 0.5);
  CHECK(seg.found_lesion_dice() == doctest::Approx(4.0 / 7));
  CHECK(seg.lesion_dice() == doctest::Approx(2.0 / 7));

  SegmentationMetrics from_tensors;  // logits > 0 is the prediction
  Tensor logits = Tensor::from_vector({3, -1, -2, -5, 2, -1, -3, 4, /**/ -1, -1, -1, -1, -1, -1, -1, -1}, {2, 2, 4, 1});
  Tensor targets = Tensor::from_vector({1, 1, 0, 0, 1, 1, 0, 0, /**/ 0, 0, 0, 0, 0, 0, 0, 0}, {2, 2, 4, 1});
  from_tensors.add_batch(logits, targets);
  CHECK(from_tensors.dice() == doctest::Approx((4.0 / 7 + 1) / 2));
  CHECK(from_tensors.lesion_dice() == doctest::Approx(4.0 / 7));
}

// seg_train's out-of-fold table: each image's figures, its peak from the map before the empty-image
// threshold (here the second image's map was emptied to -20; before, it peaked at logit 0).
TEST_CASE("metrics: one image's overlap, shares and peak probability") {
  Tensor logits = Tensor::from_vector({3, -1, -2, -5, 2, -1, -3, 4, /**/ -20, -20, -20, -20, -20, -20, -20, -20}, {2, 2, 4, 1});
  Tensor before = Tensor::from_vector({3, -1, -2, -5, 2, -1, -3, 4, /**/ -1, -3, 0, -2, -1, -1, -1, -1}, {2, 2, 4, 1});
  Tensor targets = Tensor::from_vector({1, 1, 0, 0, 1, 1, 0, 0, /**/ 0, 0, 1, 0, 0, 0, 0, 0}, {2, 2, 4, 1});
  const std::vector<ImageSegmentation> images = image_segmentations(logits, before, targets);
  REQUIRE(images.size() == 2);
  CHECK(images[0].overlap.dice == doctest::Approx(4.0 / 7));  // 2 of 3 predicted pixels on the 4-pixel lesion
  CHECK(images[0].overlap.iou == doctest::Approx(0.4));
  CHECK(images[0].predicted_share == doctest::Approx(3.0 / 8));
  CHECK(images[0].target_share == doctest::Approx(0.5));
  CHECK(images[0].peak_probability == doctest::Approx(1 / (1 + std::exp(-4.0))));
  CHECK(images[1].overlap.dice == 0);  // a lesion missed: nothing marked
  CHECK(images[1].predicted_share == 0);
  CHECK(images[1].target_share == doctest::Approx(1.0 / 8));
  CHECK(images[1].peak_probability == doctest::Approx(0.5));
  CHECK(contains(error_of([&] { image_segmentations(logits, before.reshape({1, 4, 4, 1}), targets); }),
                 "image_segmentations: uncalibrated logits [1, 4, 4, 1]"));
}

TEST_CASE("metrics: accuracy, macro-F1, recall and confusion matrix as sklearn") {
  ClassificationMetrics m(4);  // class 3 never occurs: left out of macro-F1
  int truth[] = {0, 0, 0, 1, 1, 2}, pred[] = {0, 1, 0, 1, 2, 2};
  for (int i = 0; i < 6; ++i) m.add(truth[i], pred[i]);
  CHECK(m.confusion()[0] == std::vector<int64_t>{2, 1, 0, 0});
  CHECK(m.confusion()[1] == std::vector<int64_t>{0, 1, 1, 0});
  CHECK(m.accuracy() == doctest::Approx(4.0 / 6));
  CHECK(m.recall(0) == doctest::Approx(2.0 / 3));
  CHECK(m.recall(2) == doctest::Approx(1.0));
  CHECK(m.precision(2) == doctest::Approx(0.5));
  CHECK(m.recall(3) == 0.0);
  CHECK(m.f1(0) == doctest::Approx(0.8));
  CHECK(m.macro_f1() == doctest::Approx((0.8 + 0.5 + 2.0 / 3) / 3));  // sklearn: 0.6555...
  CHECK(contains(m.confusion_table({"benign", "malignant", "normal", "other"}), "benign"));

  ClassificationMetrics t(3);
  t.add_batch(Tensor::from_vector({0.1, 2, 0, 5, 1, 1}, {2, 3}), Tensor::from_labels({1, 2}));
  CHECK(t.confusion()[1][1] == 1);
  CHECK(t.confusion()[2][0] == 1);
  CHECK(contains(error_of([&] { t.add(3, 0); }), "outside 0..2"));
}

namespace {

std::shared_ptr<SampleCache> small_cache(const fs::path& root, int per_class, int size) {
  write_busi_tree(root, {"benign", "malignant"}, per_class, 20, 30);
  return std::make_shared<SampleCache>(scan_dataset(root), size, 2);
}

std::vector<size_t> all_indices(size_t n) {
  std::vector<size_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

}  // namespace

TEST_CASE("sample cache: resized images and masks, hashes of the originals") {
  TempDir dir;
  auto cache = small_cache(dir / "busi", 3, 16);
  CHECK(cache->count() == 6);
  Image img = cache->image(4);
  CHECK(img.height == 16);
  CHECK(img.channels == 3);
  CHECK(cache->mask(4).height == 16);
  CHECK(cache->mask(4).lesion_pixels() > 0);
  CHECK(cache->original_size(4) == ImageSize{20, 30});
  const Sample& s = cache->dataset().samples[4];
  CHECK(cache->hashes()[4] == perceptual_hash(load_image(s.image)));
  Image expected = resize_bilinear(load_image(s.image), 16, 16);
  for (size_t i = 0; i < img.pixels.size(); ++i) REQUIRE(std::abs(img.pixels[i] - expected.pixels[i]) <= 0.5f / 255 + 1e-6f);
  CHECK(cache->mask(4).values == resize_nearest(load_mask(s.masks), 16, 16).values);
}

TEST_CASE("sample cache reframe: each sample through the view, then resized to the new size") {
  TempDir dir;
  auto cache = small_cache(dir / "busi", 2, 64);
  std::vector<Image> before;
  std::vector<Mask> before_masks;
  for (size_t i = 0; i < cache->count(); ++i) before.push_back(cache->image(i)), before_masks.push_back(cache->mask(i));
  cache->reframe(16, [](Image& image, Mask& mask) { apply_lesion_view(image, mask, 0.5); }, 2);
  CHECK(cache->size() == 16);
  for (size_t i = 0; i < cache->count(); ++i) {
    CAPTURE(i);
    const Window w = lesion_window(before_masks[i], 0.5);
    CHECK(w.width < 64);  // every sample has a lesion, so the view is a crop
    const Image expected = resize_bilinear(crop(before[i], w), 16, 16);
    const Image image = cache->image(i);
    REQUIRE(image.height == 16);
    for (size_t p = 0; p < image.pixels.size(); ++p)
      REQUIRE(std::abs(image.pixels[p] - expected.pixels[p]) <= 0.5f / 255 + 1e-6f);
    CHECK(cache->mask(i).values == resize_nearest(crop(before_masks[i], w), 16, 16).values);
  }
}

TEST_CASE("loader: each sample once per epoch, seeded order, same batches for any worker count") {
  TempDir dir;
  auto cache = small_cache(dir / "busi", 5, 16);
  LoaderOptions o{.batch_size = 3, .workers = 3, .prefetch = 2, .seed = 11};
  Loader loader(cache, all_indices(10), o);
  CHECK(loader.batches_per_epoch() == 4);
  auto epoch = [](Loader& l, int e) {
    l.start_epoch(e);
    std::vector<Batch> out;
    while (auto b = l.next()) out.push_back(std::move(*b));
    return out;
  };
  std::vector<Batch> e0 = epoch(loader, 0);
  REQUIRE(e0.size() == 4);
  std::vector<size_t> order;
  for (const Batch& b : e0) order.insert(order.end(), b.samples.begin(), b.samples.end());
  CHECK(std::multiset<size_t>(order.begin(), order.end()) == std::multiset<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(order != all_indices(10));
  CHECK(e0[0].images.shape() == Shape{3, 16, 16, 3});
  CHECK(e0[0].masks.shape() == Shape{3, 16, 16, 1});
  CHECK(e0[3].images.shape() == Shape{1, 16, 16, 3});
  CHECK(e0[0].labels.dtype() == DType::i64);
  CHECK(e0[0].labels.to_labels()[0] == cache->label(e0[0].samples[0]));

  std::vector<Batch> e1 = epoch(loader, 1);
  CHECK(e1[0].samples != e0[0].samples);  // a new order each epoch

  LoaderOptions single = o;
  single.workers = 1;
  Loader other(cache, all_indices(10), single);
  std::vector<Batch> again = epoch(other, 0);
  for (size_t k = 0; k < 4; ++k) {
    CHECK(again[k].samples == e0[k].samples);
    CHECK(max_abs_diff(again[k].images, e0[k].images) == 0.0);
    CHECK(max_abs_diff(again[k].masks, e0[k].masks) == 0.0);
  }

  // Restarting mid-epoch is allowed; next() before any start_epoch is an error.
  loader.start_epoch(2);
  CHECK(loader.next().has_value());
  loader.start_epoch(2);
  CHECK(epoch(loader, 2).size() == 4);
  Loader fresh(cache, {0, 1}, o);
  CHECK(contains(error_of([&] { fresh.next(); }), "before start_epoch"));
}

TEST_CASE("loader inputs: ImageNet-normalised RGB, and RGB + 0/1 mask for classification") {
  TempDir dir;
  auto cache = small_cache(dir / "busi", 2, 8);
  LoaderOptions o{.batch_size = 4, .input = InputKind::rgb_mask, .shuffle = false, .augment = false};
  Loader loader(cache, {3, 0}, o);
  loader.start_epoch(0);
  Batch b = *loader.next();
  CHECK(b.samples == std::vector<size_t>{3, 0});
  REQUIRE(b.images.shape() == Shape{2, 8, 8, 4});
  std::vector<double> x = b.images.to_vector(), m = b.masks.to_vector();
  Image img = cache->image(3);
  const Mask& mask = cache->mask(3);
  for (size_t p = 0; p < 64; ++p) {
    for (int c = 0; c < 3; ++c)
      REQUIRE(x[p * 4 + c] == doctest::Approx((img.pixels[p * 3 + c] - kImagenet.mean[c]) / kImagenet.std[c]));
    REQUIRE(x[p * 4 + 3] == mask.values[p]);
    REQUIRE(m[p] == mask.values[p]);
  }
  CHECK_FALSE(loader.next().has_value());
}

TEST_CASE("predict helpers: one image as model input, logits back to a full-size mask") {
  Image img(10, 14, 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = float(i % 17) / 16;
  Mask m(10, 14);
  m.at(3, 4) = m.at(7, 9) = 1;
  Tensor x = model_input(img, m, 8, InputKind::rgb_mask, kImagenet);
  REQUIRE(x.shape() == Shape{1, 8, 8, 4});
  std::vector<float> expected(8 * 8 * 4);
  write_input(resize_bilinear(img, 8, 8), resize_nearest(m, 8, 8), InputKind::rgb_mask, kImagenet, expected.data());
  CHECK(x.to_vector() == std::vector<double>(expected.begin(), expected.end()));
  CHECK(model_input(img, Mask(), 8, InputKind::rgb, kImagenet).shape() == Shape{1, 8, 8, 3});
  // Another normalisation: (x - mean) / std with its own numbers.
  const Normalisation other{{0.5, 0.25, 0.0}, {0.5, 2.0, 1.0}};
  std::vector<double> y = model_input(img, m, 8, InputKind::rgb_mask, other).to_vector();
  Image small = resize_bilinear(img, 8, 8);
  for (size_t p = 0; p < 64; ++p)
    for (int c = 0; c < 3; ++c)
      REQUIRE(y[p * 4 + c] == doctest::Approx((small.pixels[p * 3 + c] - other.mean[c]) / other.std[c]));

  // The lesion probability channel: levels 0..255 read as level / 255; a mask's 1 is level 255.
  Image logits(1, 4, 1);
  logits.pixels = {0.0f, std::log(3.0f), -30.0f, 30.0f};
  const Mask levels = probability_levels(logits);
  CHECK(levels.values == std::vector<uint8_t>{128, 191, 0, 255});  // 127.5, 191.25 rounded
  // Every level is round(255 * sigmoid(logit)), on a sweep of logits dense enough to cross each step.
  Image sweep(1, 200001, 1);
  for (size_t p = 0; p < sweep.pixels.size(); ++p) sweep.pixels[p] = static_cast<float>(-8.0 + 16.0 * p / 200000.0);
  const Mask swept = probability_levels(sweep);
  for (size_t p = 0; p < sweep.pixels.size(); ++p)
    REQUIRE(swept.values[p] == std::lround(255.0 / (1.0 + std::exp(-double{sweep.pixels[p]}))));
  Image extremes(1, 3, 1);
  extremes.pixels = {-std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity(), 1e30f};
  CHECK(probability_levels(extremes).values == std::vector<uint8_t>{0, 255, 255});
  const std::vector<uint8_t> from_mask = probability_levels(m).values;
  CHECK(from_mask[3 * 14 + 4] == 255);
  CHECK(std::count(from_mask.begin(), from_mask.end(), 255) == 2);
  CHECK(std::count(from_mask.begin(), from_mask.end(), 0) == 138);
  std::vector<double> z = model_input(img, probability_levels(m), 8, InputKind::rgb_lesion_probability, kImagenet)
                              .to_vector();
  for (size_t p = 0; p < 64; ++p) REQUIRE(z[p * 4 + 3] == x.to_vector()[p * 4 + 3]);
  Image rgb(1, 4, 3);
  std::vector<float> four(4 * 4);
  write_input(rgb, levels, InputKind::rgb_lesion_probability, kImagenet, four.data());
  CHECK(four[3] == 128 / 255.0f);
  CHECK(four[7] == 191 / 255.0f);
  CHECK(four[11] == 0.0f);
  CHECK(four[15] == 1.0f);

  // A 2x2 checkerboard of logits enlarged to 4x4: bilinear values keep the sign per quadrant.
  Mask up = mask_from_logits(Tensor::from_vector({5, -5, -5, 5}, {1, 2, 2, 1}), 4, 4);
  CHECK(up.values == std::vector<uint8_t>{1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1});
  CHECK(contains(error_of([] { mask_from_logits(Tensor::zeros({2, 2, 2, 1}), 4, 4); }), "expected logits [1, H, W, 1]"));
}

namespace {

Mask box_mask(int height, int width, int x0, int y0, int box_width, int box_height) {
  Mask mask(height, width);
  for (int y = y0; y < y0 + box_height; ++y) std::fill_n(&mask.at(y, x0), box_width, uint8_t{1});
  return mask;
}

}  // namespace

TEST_CASE("lesion window: the lesion's box grown by the context, square in the square input, inside the scan") {
  // A box a fifth of each side of a 200 x 100 scan, in its middle: grown by half its side on
  // each side, 0.4 of each side, centred.
  const Mask wide = box_mask(100, 200, 80, 40, 40, 20);
  CHECK(lesion_window(wide, 0.5) == Window{60, 30, 80, 40});
  // The scan resized to a square (as training's copy is) gives the same window, in its pixels.
  CHECK(lesion_window(resize_nearest(wide, 50, 50), 0.5) == Window{15, 15, 20, 20});
  // The larger side of the box sets the window; one lesion pixel anywhere else widens the box.
  CHECK(lesion_window(box_mask(100, 100, 40, 45, 30, 20), 0) == Window{40, 40, 30, 30});
  Mask two = box_mask(100, 100, 40, 45, 30, 20);
  two.at(45, 79) = 1;
  CHECK(lesion_window(two, 0) == Window{40, 35, 40, 40});
  // A speck is zoomed in on by at most 4x; windows are moved inside the scan at its edges.
  CHECK(lesion_window(box_mask(100, 100, 0, 0, 10, 10), 0.5) == Window{0, 0, 25, 25});
  CHECK(lesion_window(box_mask(100, 100, 90, 90, 10, 10), 0.5) == Window{75, 75, 25, 25});
  // A large lesion, or none: the whole scan.
  CHECK(lesion_window(box_mask(100, 100, 20, 20, 60, 60), 0.5) == Window{0, 0, 100, 100});
  CHECK(lesion_window(Mask(30, 40), 0.5) == Window{0, 0, 40, 30});

  Image image(100, 200, 3);
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = float(i % 251) / 250;
  Image viewed = image;
  Mask viewed_mask = wide;
  apply_lesion_view(viewed, viewed_mask, 0.5);
  REQUIRE(viewed.height == 40);
  REQUIRE(viewed.width == 80);
  CHECK(viewed.at(0, 0, 2) == image.at(30, 60, 2));
  CHECK(viewed.at(39, 79, 1) == image.at(69, 139, 1));
  CHECK(viewed_mask.lesion_pixels() == wide.lesion_pixels());
  CHECK(viewed_mask.at(10, 20) == 1);
  Image whole = image;
  Mask whole_mask = wide;
  apply_lesion_view(whole, whole_mask, 0);  // off
  CHECK(whole.pixels == image.pixels);
  CHECK(contains(error_of([&] { crop(image, Window{150, 0, 60, 10}); }), "is outside the 200x100 image"));
}

TEST_CASE("progress: plain lines when not a terminal, a bar when it is") {
  std::ostringstream plain;
  Progress p("epoch 1 train", 8, plain, false);
  for (int i = 0; i < 8; ++i) p.step(1, i < 4 ? 1.0 : 3.0);
  p.finish("val dice 0.5");
  std::string text = plain.str();
  CHECK(std::count(text.begin(), text.end(), '\n') == 4);  // at 1/4, 2/4, 3/4, then the final line
  CHECK(contains(text, "epoch 1 train 2/8 loss 1.0000"));
  CHECK(contains(text, "epoch 1 train 8/8 loss 2.0000"));
  CHECK(contains(text, "img/s"));
  CHECK(contains(text, "ETA"));
  CHECK(contains(text, "val dice 0.5\n"));
  CHECK(p.mean_loss() == 2.0);

  std::ostringstream bar;
  Progress q("val", 2, bar, true);
  q.step(2, 0.5);
  q.finish();
  CHECK(contains(bar.str(), "\r[##############################] val 2/2"));
  CHECK(format_duration(3725) == "1:02:05");
  CHECK(format_duration(65) == "01:05");
}

TEST_CASE("training log: CSV and SVG curves written") {
  TempDir dir;
  TrainingLog log({"epoch", "train_loss", "val_loss", "val_dice"});
  log.add({1, 0.9, 0.8, 0.25});
  log.add({2, 0.5, std::nan(""), 0.5});
  log.add({3, 0.25, 0.375, 0.625});
  CHECK(log.csv() == "epoch,train_loss,val_loss,val_dice\n1,0.9,0.8,0.25\n2,0.5,nan,0.5\n3,0.25,0.375,0.625\n");
  log.write_csv(dir / "log.csv");
  std::ifstream in(dir / "log.csv");
  std::string csv((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(csv == log.csv());
  log.write_svg(dir / "curves.svg", "seg <mit_b2>", {"train_loss", "val_loss"}, {"val_dice"});
  std::ifstream svg_in(dir / "curves.svg");
  std::string svg((std::istreambuf_iterator<char>(svg_in)), std::istreambuf_iterator<char>());
  CHECK(svg.starts_with("<?xml"));
  CHECK(contains(svg, "seg &lt;mit_b2&gt;"));
  CHECK(contains(svg, ">val_dice</text>"));
  CHECK(contains(svg, "</svg>\n"));
  // val_loss has a NaN at epoch 2: its line breaks into two runs; 4 polylines in all.
  size_t polylines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) ++polylines;
  CHECK(polylines == 4);
  CHECK(contains(error_of([&] { log.add({1, 2}); }), "a row of 2 values for 4 columns"));

  // Columns too many for the panel's title line: the legend alone names them.
  TrainingLog wide({"epoch", "train_loss", "val_dice", "val_lesion_dice", "val_lesions_found", "val_found_dice",
                    "val_empty_kept"});
  wide.add({1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5});
  wide.write_svg(dir / "wide.svg", "seg", {"train_loss"}, {"val_dice", "val_lesion_dice", "val_lesions_found",
                                                           "val_found_dice", "val_empty_kept"});
  std::ifstream wide_in(dir / "wide.svg");
  std::string wide_svg((std::istreambuf_iterator<char>(wide_in)), std::istreambuf_iterator<char>());
  CHECK(contains(wide_svg, "font-weight=\"bold\">metrics</text>"));
  CHECK(contains(wide_svg, "font-weight=\"bold\">train_loss</text>"));
  CHECK(contains(wide_svg, ">val_empty_kept</text>"));
}

TEST_CASE("BUSI: near-duplicates grouped, benign (433) and malignant (145) on one side") {
  const char* env = std::getenv("SONO_BUSI_DIR");
  fs::path root = env ? fs::path(env) : fs::path(SONO_SOURCE_DIR) / ".." / "shared" / "busi";
  if (fs::exists(root / "Dataset_BUSI_with_GT")) root /= "Dataset_BUSI_with_GT";
  if (!fs::exists(root / "benign")) {
    MESSAGE("BUSI not found at " << root << ": skipped (set SONO_BUSI_DIR)");
    return;
  }
  Dataset d = scan_dataset(root);
  CHECK(d.layout == Layout::busi);
  CHECK(d.classes == std::vector<std::string>{"benign", "malignant", "normal"});
  SampleCache cache(d, 32, 2);  // small: only the hashes are needed here
  auto find = [&](const std::string& name) {
    for (size_t i = 0; i < d.samples.size(); ++i)
      if (d.samples[i].name == name) return i;
    FAIL("no sample " << name);
    return size_t(0);
  };
  size_t a = find("benign/benign (433)"), b = find("malignant/malignant (145)");
  CHECK(hamming_distance(cache.hashes()[a], cache.hashes()[b]) <= 2);
  for (uint64_t seed = 0; seed < 5; ++seed) {
    Split s = split_dataset(d, cache.hashes(), {.val_fraction = 0.2, .seed = seed});
    CHECK(s.group[a] == s.group[b]);
    bool a_val = std::binary_search(s.val.begin(), s.val.end(), a);
    CHECK(a_val == std::binary_search(s.val.begin(), s.val.end(), b));
    CHECK(double(s.val.size()) == doctest::Approx(0.2 * d.samples.size()).epsilon(0.05));
    if (seed == 0) MESSAGE(d.summary() << "\n" << s.summary(d));
  }
}
