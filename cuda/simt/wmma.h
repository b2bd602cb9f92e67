#pragma once
// nvcuda::wmma for the SIMT emulator: the subset our kernels use, bfloat16 x bfloat16 -> float32
// on 16x16x16 tiles (sm_80's bf16 WMMA shape).
//
// CUDA keeps a fragment's layout across the warp's lanes opaque, so the emulator may hold it as
// it likes: every lane keeps the whole a and b tiles (loaded after the warp's barrier), and owns
// the accumulator elements e = row * 16 + col with e % 32 == its lane, which are all it loads,
// computes and stores. Every operation is a warp-collective: it starts with a warp barrier
// (__syncwarp at the kernel's call site, so lanes that diverge or skip it raise simt::Fault, as
// they would hang or be undefined on the device). mma_sync computes, per element,
// d = c + sum over k = 0..15 of a[i][k] * b[k][j] in float, k ascending: the products of bf16
// values are exact in float, so only the order of the float additions can differ from the
// tensor cores' (within 16 roundings of 2^-24 relative to c + sum |a b|).
// The device's requirements are checked: 256-bit aligned pointers, ldm a multiple of 16 bytes.
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda/simt/emulator.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

constexpr int kTile = 16;  // M = N = K = 16

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment;

// An a or b operand: T is a 16-bit bfloat16 (cuda_bf16.h's or our own bits), held widened.
template <typename Use, typename T, typename Layout>
class fragment<Use, kTile, kTile, kTile, T, Layout> {
  static_assert(sizeof(T) == 2, "emulated WMMA takes bfloat16 operands only");
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>,
                "an a or b fragment has a row_major or col_major layout");

 public:
  float v[kTile][kTile];  // [row][col] of the tile, whatever its layout in memory
};

// The accumulator: float32, only the lane's own elements (see above) meaningful.
template <>
class fragment<accumulator, kTile, kTile, kTile, float, void> {
 public:
  float v[kTile * kTile];
};

namespace detail {

inline unsigned lane() {
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  return thread % warpSize;
}
inline bool owns(int element) { return static_cast<unsigned>(element) % warpSize == lane(); }

inline void check_memory(const void* p, unsigned ldm, size_t element_bytes, const char* op,
                         const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || ldm * element_bytes % 16 != 0)
    throw simt::Fault(std::string(op) + " at " + file + ":" + std::to_string(line) +
                      ": the pointer must be 256-bit aligned and ldm a multiple of 16 bytes (ldm " +
                      std::to_string(ldm) + ")");
}

// A warp-collective entry: the warp's barrier, then the memory check.
inline void enter(const void* p, unsigned ldm, size_t element_bytes, const char* op,
                  const char* file, int line) {
  __syncwarp(0xffffffffu, file, line);
  check_memory(p, ldm, element_bytes, op, file, line);
}

template <typename T>
float bf16_bits_to_float(const T& x) {
  uint16_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

// Offset of element (row, col) of a tile stored with leading dimension ldm.
inline size_t offset(int row, int col, unsigned ldm, bool row_major_memory) {
  return row_major_memory ? static_cast<size_t>(row) * ldm + col
                          : static_cast<size_t>(col) * ldm + row;
}

}  // namespace detail

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, kTile, kTile, kTile, T, Layout>& f, const T* p, unsigned ldm,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::enter(p, ldm, sizeof(T), "wmma::load_matrix_sync", file, line);
  for (int r = 0; r < kTile; ++r)
    for (int c = 0; c < kTile; ++c)
      f.v[r][c] = detail::bf16_bits_to_float(p[detail::offset(r, c, ldm, std::is_same_v<Layout, row_major>)]);
}

using accumulator_fragment = fragment<accumulator, kTile, kTile, kTile, float, void>;

inline void fill_fragment(accumulator_fragment& f, float value) {
  for (float& x : f.v) x = value;
}

inline void load_matrix_sync(accumulator_fragment& f, const float* p, unsigned ldm, layout_t layout,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::enter(p, ldm, sizeof(float), "wmma::load_matrix_sync", file, line);
  for (int e = 0; e < kTile * kTile; ++e)
    if (detail::owns(e)) f.v[e] = p[detail::offset(e / kTile, e % kTile, ldm, layout == mem_row_major)];
}

inline void store_matrix_sync(float* p, const accumulator_fragment& f, unsigned ldm,
                              layout_t layout, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  detail::enter(p, ldm, sizeof(float), "wmma::store_matrix_sync", file, line);
  for (int e = 0; e < kTile * kTile; ++e)
    if (detail::owns(e)) p[detail::offset(e / kTile, e % kTile, ldm, layout == mem_row_major)] = f.v[e];
}

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(accumulator_fragment& d, const fragment<matrix_a, kTile, kTile, kTile, T, LayoutA>& a,
              const fragment<matrix_b, kTile, kTile, kTile, T, LayoutB>& b,
              const accumulator_fragment& c, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  __syncwarp(0xffffffffu, file, line);
  for (int e = 0; e < kTile * kTile; ++e) {
    if (!detail::owns(e)) continue;
    const int i = e / kTile, j = e % kTile;
    float sum = c.v[e];
    for (int k = 0; k < kTile; ++k) sum += a.v[i][k] * b.v[k][j];
    d.v[e] = sum;
  }
}

}  // namespace nvcuda::wmma
