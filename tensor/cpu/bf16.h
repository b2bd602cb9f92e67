#pragma once
// bfloat16 on the CPU: the bits of DType::bf16 (the top half of a float32), and float32 values
// rounded to it, which is what a bf16 product reads (the GEMM's and the convolutions' operands
// under bf16 autocast).
#include <bit>
#include <cstdint>

namespace sono::cpu {

// The CPU reference of the CUDA cast kernel (cuda/kernels/bf16.cuh): float32 -> bfloat16 rounds
// to nearest even; a NaN stays a NaN (quiet, sign and top payload kept) instead of rounding to
// inf.
inline uint16_t bf16_bits(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  const uint32_t round_half_even = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + round_half_even) >> 16);
}

inline float bf16_value(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

// x rounded to the nearest bfloat16, as a float32.
inline float round_to_bf16(float x) { return bf16_value(bf16_bits(x)); }

}  // namespace sono::cpu
