#include "layers/norm.h"

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
  if (is_training()) {
    // num_batches_tracked lives on the CPU side of the count; a scalar int64 add.
    Tensor host = num_batches_tracked.to(Device::cpu);
    Tensor next = Tensor::full({}, static_cast<double>(host.to_labels()[0] + 1), DType::i64);
    backend_of(num_batches_tracked).copy(next.to(num_batches_tracked.device()), num_batches_tracked);
  }
  return batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum, eps);
}

}  // namespace sono::nn
