#include "layers/norm.h"

#include "autograd/node.h"
#include "layers/conv.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono::nn {

LayerNorm::LayerNorm(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", Tensor::ones({dim}));
  bias = register_parameter("bias", Tensor::zeros({dim}));
}

Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, weight, bias, eps); }

BatchNorm2d::BatchNorm2d(int64_t channels, double eps_, double momentum_) : eps(eps_), momentum(momentum_) {
  weight = register_parameter("weight", Tensor::ones({channels}));
  bias = register_parameter("bias", Tensor::zeros({channels}));
  running_mean = register_buffer("running_mean", Tensor::zeros({channels}));
  running_var = register_buffer("running_var", Tensor::ones({channels}));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::i64));
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  if (folded_) {
    SONO_CHECK(!is_training(), "BatchNorm2d: folded into its conv for inference, it cannot train");
    return x;
  }
  if (is_training()) {
    // num_batches_tracked lives on the CPU side of the count; a scalar int64 add.
    Tensor host = num_batches_tracked.to(Device::cpu);
    Tensor next = Tensor::full({}, static_cast<double>(host.to_labels()[0] + 1), DType::i64);
    backend_of(num_batches_tracked).copy(next.to(num_batches_tracked.device()), num_batches_tracked);
  }
  if (is_training() && sum_over_ranks) return synced_forward(x);
  return batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum, eps);
}

void BatchNorm2d::fold_into(Conv2d& conv) {
  SONO_CHECK(!is_training() && running_mean.defined(), "BatchNorm2d: only eval mode with running statistics folds");
  SONO_CHECK(!folded_, "BatchNorm2d: folded already");
  autograd::NoGradGuard no_grad;
  // In float64: the fold itself adds no rounding beyond the conv's parameters' own.
  const Tensor scale = div(weight.to(DType::f64), sqrt(add(running_var.to(DType::f64), eps)));
  conv.fold_scale_shift(scale, sub(bias.to(DType::f64), mul(running_mean.to(DType::f64), scale)));
  folded_ = true;
}

// batch_norm's training formulas with every sum over the batch taken over all ranks' batches;
// two passes (mean, then squared deviations) as batch_norm, not E[x^2] - E[x]^2.
Tensor BatchNorm2d::synced_forward(const Tensor& x) {
  const int64_t channels = x.size(-1);
  Tensor rows = x.reshape({-1, channels});
  const double count =
      sum_over_ranks(Tensor::full({1}, static_cast<double>(rows.size(0)), x.dtype(), x.device())).item();
  SONO_CHECK(count > 1, "BatchNorm2d: ", count, " value per channel over all ranks; training needs more");
  Tensor mean = mul(sum_over_ranks(sum(rows, {0})), 1.0 / count);
  Tensor deviation = sub(rows, mean);
  Tensor var = mul(sum_over_ranks(sum(mul(deviation, deviation), {0})), 1.0 / count);
  Tensor y = add(mul(div(deviation, sqrt(add(var, eps))), weight), bias);
  {
    autograd::NoGradGuard no_grad;  // running statistics as batch_norm keeps them (unbiased variance)
    Tensor new_mean = add(mul(running_mean, 1 - momentum), mul(mean.detach(), momentum));
    Tensor new_var = add(mul(running_var, 1 - momentum), mul(var.detach(), momentum * count / (count - 1)));
    backend_of(running_mean).copy(new_mean, running_mean);
    backend_of(running_var).copy(new_var, running_var);
  }
  return y.reshape(x.shape());
}

}  // namespace sono::nn
