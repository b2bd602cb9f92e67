#include "autograd/gradcheck.h"

#include <algorithm>
#include <cmath>

#include "autograd/node.h"
#include "tensor/ops.h"

namespace sono::autograd {

double GradcheckResult::worst() const {
  double w = 0;
  for (double e : max_rel_error) w = std::max(w, e);
  return w;
}

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          std::vector<Tensor> inputs, double eps, uint64_t seed) {
  for (Tensor& t : inputs)
    SONO_CHECK(t.dtype() == DType::f64, "gradcheck needs float64 inputs (float32 differences are noise)");
  Tensor projection;
  auto objective = [&](const std::vector<Tensor>& xs) {
    Tensor out = fn(xs);
    if (!projection.defined()) {
      Generator gen(seed);
      projection = randn(out.shape(), gen, DType::f64).to(out.device());
    }
    return sum(mul(out, projection));
  };

  std::vector<Tensor> leaves;
  for (Tensor& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  objective(leaves).backward();

  GradcheckResult result;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor analytic = leaves[i].grad();
    std::vector<double> a = analytic.defined() ? analytic.to_vector()
                                               : std::vector<double>(inputs[i].numel(), 0.0);
    Tensor probe = inputs[i].detach().clone().contiguous();
    double* p = probe.data<double>();
    std::vector<double> numeric(probe.numel());
    NoGradGuard no_grad;
    std::vector<Tensor> xs = inputs;
    xs[i] = probe;
    for (int64_t j = 0; j < probe.numel(); ++j) {
      const double saved = p[j];
      p[j] = saved + eps;
      const double up = objective(xs).item();
      p[j] = saved - eps;
      const double down = objective(xs).item();
      p[j] = saved;
      numeric[j] = (up - down) / (2 * eps);
    }
    double scale = 1e-3, err = 0;
    for (double v : numeric) scale = std::max(scale, std::abs(v));
    for (size_t j = 0; j < numeric.size(); ++j) err = std::max(err, std::abs(a[j] - numeric[j]));
    result.max_rel_error.push_back(err / scale);
  }
  return result;
}

}  // namespace sono::autograd
