#include "layers/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string_view>

#include "tensor/atomic_file.h"

#ifdef __F16C__
#include <immintrin.h>
#endif

namespace sono::nn {

namespace {

using json = nlohmann::json;

struct DTypeInfo {
  const char* tag;
  size_t size;
};

DTypeInfo stored_dtype(const std::string& path, const std::string& key, const std::string& tag) {
  for (DTypeInfo d : {DTypeInfo{"F32", 4}, {"F64", 8}, {"I64", 8}, {"F16", 2}, {"BF16", 2}})
    if (tag == d.tag) return d;
  fail(path, ": tensor '", key, "' has dtype ", tag, ", which is not supported (F32, F64, I64, F16, BF16)");
}

float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0 && mant == 0) bits = sign;
  else if (exp == 0) {  // subnormal: renormalise
    int e = -1;
    do { ++e; mant <<= 1; } while (!(mant & 0x400));
    bits = sign | ((112 - e) << 23) | ((mant & 0x3ff) << 13);
  } else if (exp == 31) bits = sign | 0x7f800000u | (mant << 13);
  else bits = sign | ((exp + 112) << 23) | (mant << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// n F16 values at bytes (any alignment) as floats; with F16C eight at a time, since predict
// decodes every weight of both checkpoints before its first scan.
void halves_to_floats(const char* bytes, int64_t n, float* out) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 2 * i))));
#endif
  for (; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, bytes + 2 * i, 2);
    out[i] = half_to_float(v);
  }
}

// Round to nearest even; overflow to infinity, underflow through subnormals to zero.
uint16_t float_to_half(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u, abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  int exp = static_cast<int>(abs >> 23) - 112;
  uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  if (exp <= 0) {  // subnormal half
    if (exp < -10) return static_cast<uint16_t>(sign);
    uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift, rest = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(exp) << 10) | ((mant >> 13) & 0x3ffu), rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1))) ++half;  // may carry into the exponent
  return static_cast<uint16_t>(sign | half);
}

Tensor decode(const DTypeInfo& d, const Shape& shape, const char* bytes) {
  const int64_t n = shape_numel(shape);
  const std::string tag = d.tag;
  if (tag == "F32" || tag == "F64" || tag == "I64") {
    Tensor t = Tensor::empty(shape, tag == "F32" ? DType::f32 : tag == "F64" ? DType::f64 : DType::i64);
    std::memcpy(t.raw_data(), bytes, n * d.size);
    return t;
  }
  Tensor t = Tensor::empty(shape, DType::f32);
  float* out = t.data<float>();
  if (tag == "F16") halves_to_floats(bytes, n, out);
  else
    for (int64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, bytes + 2 * i, 2);
      const uint32_t bits = static_cast<uint32_t>(v) << 16;
      std::memcpy(&out[i], &bits, 4);
    }
  return t;
}

// In one read of the file's size (a stream iterator goes a character at a time); a folder or
// device is refused before any allocation.
std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SONO_CHECK(in, path, ": cannot open for reading (", std::strerror(errno), ")");
  std::error_code error;
  SONO_CHECK(std::filesystem::is_regular_file(path, error), path, ": is not a regular file");
  std::string bytes(std::filesystem::file_size(path), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  SONO_CHECK(in.gcount() == static_cast<std::streamsize>(bytes.size()), path, ": read ", in.gcount(), " of its ",
             bytes.size(), " bytes");
  return bytes;
}

// Limits a hostile header cannot exceed, far above any real checkpoint (convnext_large with
// its optimizer state: about 1,400 tensors of rank <= 4 in a 200 KB header). The header
// limit is the safetensors reference implementation's.
constexpr uint64_t kMaxHeaderBytes = 100 << 20;
constexpr size_t kMaxTensors = 65536;
constexpr size_t kMaxRank = 8;
constexpr int kMaxDepth = 8;  // a header has 3: the entries, their fields, shape and offset lists

struct TensorEntry {
  std::string key;
  DTypeInfo dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // in the data section
};

uint64_t whole_number(const std::string& path, const std::string& key, const char* field, const json& v) {
  SONO_CHECK(v.is_number_unsigned(), path, ": tensor '", key, "' has ", field, " ", v.dump(),
             ", expected whole numbers >= 0");
  return v.get<uint64_t>();
}

// The byte count of `shape`, refusing any shape whose element count, or the span of its
// non-zero dims (which contiguous strides reach even when another dim is 0), overflows int64.
uint64_t shape_bytes(const std::string& path, const std::string& key, const Shape& shape, size_t element_size) {
  int64_t numel = 1, span = 1, bytes = 0;
  bool overflow = false;
  for (int64_t d : shape) {
    overflow |= __builtin_mul_overflow(numel, d, &numel);
    overflow |= __builtin_mul_overflow(span, std::max<int64_t>(d, 1), &span);
  }
  overflow |= __builtin_mul_overflow(numel, static_cast<int64_t>(element_size), &bytes);
  SONO_CHECK(!overflow, path, ": tensor '", key, "' has shape ", shape_str(shape), ", too large to address");
  return static_cast<uint64_t>(bytes);
}

TensorEntry parse_entry(const std::string& path, const std::string& key, const json& entry, uint64_t data_size) {
  SONO_CHECK(entry.is_object(), path, ": header entry '", key, "' is not an object");
  TensorEntry e{key, stored_dtype(path, key, entry.at("dtype").get<std::string>()), {}, 0, 0};
  const json& shape = entry.at("shape");
  SONO_CHECK(shape.is_array() && shape.size() <= kMaxRank, path, ": tensor '", key, "' has shape ", shape.dump(),
             ", expected a list of at most ", kMaxRank, " dims");
  for (const json& d : shape) {
    const uint64_t dim = whole_number(path, key, "a dim", d);
    SONO_CHECK(dim <= static_cast<uint64_t>(INT64_MAX), path, ": tensor '", key, "' has dim ", dim, ", too large");
    e.shape.push_back(static_cast<int64_t>(dim));
  }
  const json& offsets = entry.at("data_offsets");
  SONO_CHECK(offsets.is_array() && offsets.size() == 2, path, ": tensor '", key, "' has data_offsets ",
             offsets.dump(), ", expected [begin, end]");
  e.begin = whole_number(path, key, "a data offset", offsets[0]);
  e.end = whole_number(path, key, "a data offset", offsets[1]);
  SONO_CHECK(e.begin <= e.end && e.end <= data_size, path, ": tensor '", key,
             "' has data offsets outside the file (truncated?)");
  SONO_CHECK(e.end - e.begin == shape_bytes(path, key, e.shape, e.dtype.size), path, ": tensor '", key, "' has ",
             e.end - e.begin, " bytes for shape ", shape_str(e.shape));
  return e;
}

// Two tensors may not share bytes: a file that aliases them is corrupt or crafted.
void check_disjoint(const std::string& path, std::vector<TensorEntry> entries) {
  std::sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < entries.size(); ++i)
    SONO_CHECK(entries[i].begin >= entries[i - 1].end, path, ": tensors '", entries[i - 1].key, "' and '",
               entries[i].key, "' overlap in the data (offsets ", entries[i - 1].begin, "..", entries[i - 1].end,
               " and ", entries[i].begin, "..", entries[i].end, ")");
}

// nlohmann parses and frees any depth, but dump() (metadata values, error messages)
// recurses: a header nested deeper than any safetensors header is refused before parsing.
// (nlohmann's depth callback would do it, but makes parsing quadratic in the entries.)
void check_nesting(const std::string& path, std::string_view text) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    in_string = c == '"';
    depth += (c == '[' || c == '{') - (c == ']' || c == '}');
    SONO_CHECK(depth <= kMaxDepth, path, ": header nests deeper than ", kMaxDepth, " levels");
  }
}

struct Header {
  json entries;
  size_t data_begin = 0;  // the data section starts after the length and the JSON
};

Header parse_header(const std::string& path, const std::string& bytes) {
  SONO_CHECK(bytes.size() >= 8, path, ": truncated safetensors file (", bytes.size(), " bytes, no header length)");
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  SONO_CHECK(header_len <= kMaxHeaderBytes, path, ": header length ", header_len, " exceeds the limit of ",
             kMaxHeaderBytes, " bytes (not a safetensors file?)");
  SONO_CHECK(header_len <= bytes.size() - 8, path, ": header length ", header_len,
             " exceeds the file size ", bytes.size(), " (truncated or not a safetensors file)");
  check_nesting(path, std::string_view(bytes).substr(8, header_len));
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(header_len));
  } catch (const json::exception& e) {
    fail(path, ": header is not valid JSON (", e.what(), ")");
  }
  SONO_CHECK(header.is_object(), path, ": header is not a JSON object");
  const size_t tensors = header.size() - header.count("__metadata__");
  SONO_CHECK(tensors <= kMaxTensors, path, ": header lists ", tensors, " tensors, more than the limit of ", kMaxTensors);
  return {std::move(header), 8 + static_cast<size_t>(header_len)};
}

}  // namespace

// Every entry is checked (dtype, shape, offsets, overlaps) before the first tensor is
// allocated, so a crafted header cannot make the reader allocate more than the file holds.
SafetensorsFile load_safetensors(const std::string& path) {
  const std::string bytes = read_all(path);
  const Header header = parse_header(path, bytes);
  SafetensorsFile file;
  std::vector<TensorEntry> entries;
  for (auto& [key, entry] : header.entries.items()) {
    if (key == "__metadata__") {
      SONO_CHECK(entry.is_object(), path, ": __metadata__ is not an object");
      for (auto& [k, v] : entry.items()) file.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    try {
      entries.push_back(parse_entry(path, key, entry, bytes.size() - header.data_begin));
    } catch (const json::exception& e) {
      fail(path, ": malformed header entry '", key, "' (", e.what(), ")");
    }
  }
  check_disjoint(path, entries);
  for (const TensorEntry& e : entries)
    file.tensors[e.key] = decode(e.dtype, e.shape, bytes.data() + header.data_begin + e.begin);
  return file;
}

void save_safetensors(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata, bool float32_as_f16) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::string> payloads;
  uint64_t offset = 0;
  for (auto& [key, t] : tensors) {
    Tensor h = t.detach().to(Device::cpu).contiguous();
    const char* tag = h.dtype() == DType::f32    ? "F32"
                      : h.dtype() == DType::f64  ? "F64"
                      : h.dtype() == DType::bf16 ? "BF16"
                                                 : "I64";
    std::string bytes(static_cast<const char*>(h.raw_data()), h.numel() * dtype_size(h.dtype()));
    if (float32_as_f16 && h.dtype() == DType::f32) {
      tag = "F16";
      bytes.resize(h.numel() * 2);
      const float* src = h.data<float>();
      for (int64_t i = 0; i < h.numel(); ++i) {
        uint16_t v = float_to_half(src[i]);
        std::memcpy(bytes.data() + 2 * i, &v, 2);
      }
    }
    header[key] = {{"dtype", tag}, {"shape", h.shape()}, {"data_offsets", {offset, offset + bytes.size()}}};
    offset += bytes.size();
    payloads.push_back(std::move(bytes));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  const uint64_t header_len = text.size();

  AtomicFile out(path);
  out.write(std::string_view(reinterpret_cast<const char*>(&header_len), 8));
  out.write(text);
  for (const std::string& bytes : payloads) out.write(bytes);
  out.commit();
}

}  // namespace sono::nn
