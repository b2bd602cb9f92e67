#pragma once
// Inference fusion (Module::fuse_for_inference): conv -> BatchNorm -> ReLU as one conv.
#include "layers/conv.h"
#include "layers/norm.h"

namespace sono::nn {

// Folds bn into conv and moves the ReLU after them into conv's epilogue.
void fuse_conv_bn_relu(Conv2d& conv, BatchNorm2d& bn);
// relu(bn(conv(x))), as a module whose forward is code writes it: fused or not, the same.
Tensor conv_bn_relu(Conv2d& conv, BatchNorm2d& bn, const Tensor& x);

}  // namespace sono::nn
