#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sono {

// bf16 holds autocast's activations (tensor/autocast.h): the CUDA backend's GEMMs,
// convolutions, BatchNorm, GELU and ReLU read and write it, casts (Tensor::to) make and read it
// on every device, and every other op reads it as float32 (float_operand). Its gradient is
// float32.
enum class DType : uint8_t { f32, f64, i64, bf16 };
enum class Device : uint8_t { cpu, cuda };

inline size_t dtype_size(DType t) {
  return t == DType::f32 ? 4 : t == DType::bf16 ? 2 : 8;
}
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::bf16: return "bfloat16";
    default: return "int64";
  }
}
// The dtype of a result computed from operands of dtype t: bfloat16 operands give float32.
inline DType compute_dtype(DType t) { return t == DType::bf16 ? DType::f32 : t; }
inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

}  // namespace sono
