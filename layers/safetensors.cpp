#include "layers/safetensors.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tensor/atomic_file.h"

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

Tensor decode(const std::string& path, const std::string& key, const DTypeInfo& d,
              const Shape& shape, const char* bytes) {
  const int64_t n = shape_numel(shape);
  const std::string tag = d.tag;
  if (tag == "F32" || tag == "F64" || tag == "I64") {
    Tensor t = Tensor::empty(shape, tag == "F32" ? DType::f32 : tag == "F64" ? DType::f64 : DType::i64);
    std::memcpy(t.raw_data(), bytes, n * d.size);
    return t;
  }
  Tensor t = Tensor::empty(shape, DType::f32);
  float* out = t.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, bytes + 2 * i, 2);
    if (tag == "F16") out[i] = half_to_float(v);
    else {
      uint32_t bits = static_cast<uint32_t>(v) << 16;
      std::memcpy(&out[i], &bits, 4);
    }
  }
  return t;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SONO_CHECK(in, path, ": cannot open for reading (", std::strerror(errno), ")");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

SafetensorsFile load_safetensors(const std::string& path) {
  const std::string bytes = read_all(path);
  SONO_CHECK(bytes.size() >= 8, path, ": truncated safetensors file (", bytes.size(),
             " bytes, no header length)");
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  SONO_CHECK(header_len <= bytes.size() - 8, path, ": header length ", header_len,
             " exceeds the file size ", bytes.size(), " (truncated or not a safetensors file)");
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(header_len));
  } catch (const json::exception& e) {
    fail(path, ": header is not valid JSON (", e.what(), ")");
  }
  SONO_CHECK(header.is_object(), path, ": header is not a JSON object");
  const size_t data_begin = 8 + header_len, data_size = bytes.size() - data_begin;

  SafetensorsFile file;
  for (auto& [key, entry] : header.items()) {
    if (key == "__metadata__") {
      for (auto& [k, v] : entry.items())
        file.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    try {
      DTypeInfo d = stored_dtype(path, key, entry.at("dtype").get<std::string>());
      Shape shape = entry.at("shape").get<Shape>();
      auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      SONO_CHECK(offsets.size() == 2 && offsets[0] <= offsets[1] && offsets[1] <= data_size, path,
                 ": tensor '", key, "' has data offsets outside the file (truncated?)");
      SONO_CHECK(offsets[1] - offsets[0] == shape_numel(shape) * d.size, path, ": tensor '", key,
                 "' has ", offsets[1] - offsets[0], " bytes for shape ", shape_str(shape));
      file.tensors[key] = decode(path, key, d, shape, bytes.data() + data_begin + offsets[0]);
    } catch (const json::exception& e) {
      fail(path, ": malformed header entry '", key, "' (", e.what(), ")");
    }
  }
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
