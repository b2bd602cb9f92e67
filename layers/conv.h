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
  // weight[o] *= scale[o], bias = bias * scale + shift (registered where there was none): an
  // eval-mode BatchNorm after the conv, folded in (fuse_for_inference).
  void fold_scale_shift(const Tensor& scale, const Tensor& shift);
  Tensor weight, bias;
  Conv2dOptions options;
  bool relu_after = false;  // the forward ends with ReLU, in the conv's epilogue without gradients
};

}  // namespace sono::nn
