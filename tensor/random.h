#pragma once
#include <cstdint>
#include <random>

#include "tensor/tensor.h"

namespace sono {

// Seeded source of randomness for initialisation, dropout and data order.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : engine_(seed) {}
  void seed(uint64_t s) { engine_.seed(s); }
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(engine_); }
  double normal() { return std::normal_distribution<double>(0.0, 1.0)(engine_); }
  uint64_t next() { return engine_(); }
  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
};

Generator& default_generator();
void manual_seed(uint64_t seed);

// Random tensors are drawn on the CPU (reproducible across backends) then moved.
Tensor randn(const Shape& shape, Generator& gen = default_generator(), DType dtype = DType::f32);
Tensor rand(const Shape& shape, Generator& gen = default_generator(), DType dtype = DType::f32);
// Normal(mean, std) truncated to [lo, hi] by resampling, as torch.nn.init.trunc_normal_.
Tensor trunc_normal(const Shape& shape, double std, double lo, double hi,
                    Generator& gen = default_generator());

// While one lives on this thread, randn, rand and trunc_normal return zeros without drawing
// (the generator does not move): for building a model whose every parameter and buffer is then
// loaded, as from a checkpoint, where the draws were 40% of a one-image predict.
class SkipRandomFill {
 public:
  // Whether one lives on this thread: initialisers that scale or copy their draws skip that too.
  static bool active();
  SkipRandomFill();
  ~SkipRandomFill();
  SkipRandomFill(const SkipRandomFill&) = delete;
  SkipRandomFill& operator=(const SkipRandomFill&) = delete;

 private:
  bool previous_;
};

}  // namespace sono
