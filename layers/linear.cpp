#include "layers/linear.h"

#include "layers/init.h"
#include "tensor/ops.h"

namespace sono::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias) {
  weight = register_parameter("weight", init::default_for_fan_in({out_features, in_features}, in_features));
  if (has_bias) bias = register_parameter("bias", init::default_for_fan_in({out_features}, in_features));
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

}  // namespace sono::nn
