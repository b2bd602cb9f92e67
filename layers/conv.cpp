#include "layers/conv.h"

#include "layers/init.h"

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

Tensor Conv2d::forward(const Tensor& x) { return conv2d(x, weight, bias, options); }

}  // namespace sono::nn
