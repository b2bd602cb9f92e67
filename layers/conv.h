#pragma once
#include "layers/module.h"
#include "tensor/ops.h"

namespace sono::nn {

// torch.nn.Conv2d on NHWC input; weight keeps torch's [out, in/groups, kh, kw].
class Conv2d : public UnaryModule {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Conv2dOptions options = {},
         bool bias = true);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;
  Conv2dOptions options;
};

}  // namespace sono::nn
