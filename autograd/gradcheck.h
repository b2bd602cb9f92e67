#pragma once
// Gradient check: analytic gradients from the tape against central differences, in float64.
// A non-scalar output is reduced to sum(out * R) with a fixed random R, so every output
// element's gradient path is exercised with a distinct weight.
#include <functional>
#include <vector>

#include "tensor/tensor.h"

namespace sono::autograd {

struct GradcheckResult {
  std::vector<double> max_rel_error;  // per input: max |analytic - numeric| / max(|numeric|_inf, 1e-3)
  double worst() const;
};

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          std::vector<Tensor> inputs, double eps = 1e-6, uint64_t seed = 1234);

}  // namespace sono::autograd
