#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sono {

enum class DType : uint8_t { f32, f64, i64 };
enum class Device : uint8_t { cpu, cuda };

inline size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 8; }
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    default: return "int64";
  }
}
inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

}  // namespace sono
