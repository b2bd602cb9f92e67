#include "layers/init.h"

#include <cmath>

#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono::nn::init {

// Under SkipRandomFill the values are about to be overwritten by a load: zeros, without the
// arithmetic (each step a fresh tensor whose pages the OS must clear).
Tensor uniform(const Shape& shape, double bound, Generator& gen) {
  if (SkipRandomFill::active()) return Tensor::zeros(shape);
  return add(mul(rand(shape, gen), 2.0 * bound), -bound);
}

Tensor default_for_fan_in(const Shape& shape, int64_t fan_in, Generator& gen) {
  return uniform(shape, 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1))), gen);
}

void fan_out_normal_(const Tensor& conv_weight, int64_t groups, Generator& gen) {
  if (SkipRandomFill::active()) return;
  const Shape& w = conv_weight.shape();
  const double fan_out = static_cast<double>(w[0] * w[2] * w[3] / groups);
  assign(conv_weight, mul(randn(w, gen), std::sqrt(2.0 / fan_out)));
}

void assign(const Tensor& param, const Tensor& values) {
  SONO_CHECK(param.shape() == values.shape(), "init::assign: shape ", shape_str(values.shape()),
             " for parameter of shape ", shape_str(param.shape()));
  if (SkipRandomFill::active()) return;
  backend_of(param).copy(values.to(param.device()).to(param.dtype()), param);
}

}  // namespace sono::nn::init
