#pragma once
// Parameter initialisers with torch.nn.init semantics; all draw from a Generator.
#include "tensor/random.h"

namespace sono::nn::init {

// U(-bound, bound)
Tensor uniform(const Shape& shape, double bound, Generator& gen = default_generator());
// torch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
Tensor default_for_fan_in(const Shape& shape, int64_t fan_in, Generator& gen = default_generator());
// Fills a conv weight [out, in/groups, kh, kw] from normal(0, sqrt(2 / fan_out)), fan_out = out *
// kh * kw / groups: torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu") for groups
// 1, and MiT's _init_weights (which divides by the groups). In place, as torch's: under
// SkipRandomFill it then draws and allocates nothing.
void fan_out_normal_(const Tensor& conv_weight, int64_t groups = 1, Generator& gen = default_generator());
// In-place overwrite of an existing parameter's values (keeps its handle). Nothing under
// SkipRandomFill, where a load overwrites every parameter.
void assign(const Tensor& param, const Tensor& values);

}  // namespace sono::nn::init
