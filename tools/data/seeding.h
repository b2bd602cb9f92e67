#pragma once
// Seeded randomness for data order and augmentation that is the same on every platform
// (std::shuffle and std distributions are implementation-defined).
#include <cstdint>
#include <utility>
#include <vector>

#include "tensor/random.h"

namespace sono::data {

// SplitMix64 finaliser over the parts: independent streams per (seed, epoch, sample).
inline uint64_t mix_seed(std::initializer_list<uint64_t> parts) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  for (uint64_t p : parts) {
    h ^= p + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h ^= h >> 30, h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 27, h *= 0x94D049BB133111EBull;
    h ^= h >> 31;
  }
  return h;
}

// Uniform in [lo, hi) from 53 random bits.
inline double uniform(Generator& gen, double lo, double hi) {
  return lo + (hi - lo) * static_cast<double>(gen.next() >> 11) * 0x1.0p-53;
}

// Fisher-Yates with 64-bit draws (the modulo bias is below 1e-15 for any real size).
template <typename T>
void seeded_shuffle(std::vector<T>& v, Generator& gen) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[gen.next() % i]);
}

}  // namespace sono::data
