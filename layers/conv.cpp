#include "layers/conv.h"

#include "autograd/node.h"
#include "layers/init.h"
#include "tensor/backend.h"

namespace sono::nn {

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Conv2dOptions opt,
               bool has_bias)
    : options(opt) {
  SONO_CHECK(in_channels % opt.groups == 0 && out_channels % opt.groups == 0, "Conv2d: channels ",
             in_channels, " -> ", out_channels, " not divisible by groups ", opt.groups);
  const int64_t fan_in = in_channels / opt.groups * kernel_size * kernel_size;
  weight = register_parameter(
      "weight", init::default_for_fan_in({out_channels, in_channels / opt.groups, kernel_size, kernel_size}, fan_in));
  if (has_bias) bias = register_parameter("bias", init::default_for_fan_in({out_channels}, fan_in));
}

Tensor Conv2d::forward(const Tensor& x) {
  return relu_after ? conv2d_relu(x, weight, bias, options) : conv2d(x, weight, bias, options);
}

void Conv2d::fold_scale_shift(const Tensor& scale, const Tensor& shift) {
  autograd::NoGradGuard no_grad;
  const int64_t out = weight.size(0);
  SONO_CHECK(scale.numel() == out && shift.numel() == out, "Conv2d: folding ", scale.numel(), " channels into ",
             out, " outputs");
  auto assign = [](const Tensor& param, const Tensor& values) {
    backend_of(param).copy(values.to(param.device()).to(param.dtype()), param);
  };
  assign(weight, mul(weight.to(scale.dtype()), scale.reshape({out, 1, 1, 1})));
  if (bias.defined()) return assign(bias, add(mul(bias.to(scale.dtype()), scale), shift));
  bias = register_parameter("bias", shift.to(weight.device()).to(weight.dtype()));
}

}  // namespace sono::nn
