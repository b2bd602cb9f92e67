#pragma once
// Winograd's minimal filtering F(4x4, 3x3) for the dense 3x3 stride-1 convs of ResNet-style
// models (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 4x4
// block of outputs comes from a 6x6 input tile with 36 products per channel pair instead of 144,
// as 36 GEMMs [tiles, Cin] x [Cin, Cout]. The CPU conv takes it wherever it applies, forward
// and input gradient; bf16 products keep the GEMM paths (rounding transformed operands to
// bfloat16 would lose more than the products do).
#include <memory>

#include "tensor/backend.h"
#include "tensor/cpu/conv_epilogue.h"

namespace sono::cpu {

// Float32 products, 3x3, stride 1, no dilation, one group, at least 16 channels in and out, and
// at least 8x8 output pixels per image: below that the weight transform (4x the weights) costs
// more than the products it saves. Decided per image, never per batch, so that an image gets
// the same rounding in any batch.
bool winograd_applies(const Conv2dGeometry& g);

// out [N, OH, OW, Cout] = conv(x [N, H, W, Cin], w [Cout, Cin, 3, 3]), any zero padding, with
// the epilogue. frozen: w's storage where it is frozen (Storage::frozen), else null; its
// transformed weights then serve every later call without checking w against the copy they
// were made from.
void winograd_conv_forward(const Conv2dGeometry& g, const float* x, const float* w, float* out,
                           const std::shared_ptr<Storage>& frozen = nullptr, const Epilogue<float>& e = {});

// The same for weights used once (an input gradient's turned kernel, new with every step):
// transformed into this thread's scratch instead of the cache.
void winograd_conv_forward_once(const Conv2dGeometry& g, const float* x, const float* w, float* out);

}  // namespace sono::cpu
