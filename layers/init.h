#pragma once
// Parameter initialisers with torch.nn.init semantics; all draw from a Generator.
#include "tensor/random.h"

namespace sono::nn::init {

// U(-bound, bound)
Tensor uniform(const Shape& shape, double bound, Generator& gen = default_generator());
// torch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
Tensor default_for_fan_in(const Shape& shape, int64_t fan_in, Generator& gen = default_generator());
// In-place overwrite of an existing parameter's values (keeps its handle).
void assign(const Tensor& param, const Tensor& values);

}  // namespace sono::nn::init
