#pragma once
// What DeepLabV3+ needs of an encoder, whichever family it is (MiT, ResNet): the stage outputs at
// strides 4, 8, 16 and 32, the deeper ones dilated down to the output stride, as smp's encoders
// return them (less the input and the stride-2 map, which DeepLabV3+ never reads). A ResNet built
// to a smaller smp encoder_depth stops earlier: 4 ends at stride 16, 3 at stride 8.
#include <algorithm>
#include <array>
#include <vector>

#include "layers/module.h"
#include "tensor/ops.h"

namespace sono::models {

class SegmentationEncoder : public nn::Module {
 public:
  // x [N, H, W, in_channels] -> one map per stage built [N, h_i, w_i, stage_channels()[i]].
  virtual std::vector<Tensor> forward(const Tensor& x) = 0;
  virtual std::vector<int64_t> stage_channels() const = 0;
  virtual int64_t output_stride() const = 0;  // of the last stage's map
};

// The dilation of stage s (0..3, stride 4 << s) when the encoder stops at `output_stride`: each
// stage past it keeps its resolution and dilates its convs instead (smp's make_dilated).
inline int64_t stage_dilation(int s, int64_t output_stride) {
  return std::max<int64_t>(1, (int64_t{4} << s) / output_stride);
}

// What smp's replace_strides_with_dilation makes of a conv in a dilated stage: stride 1,
// dilation d and padding (k / 2) * d, whatever the conv had before.
inline Conv2dOptions in_stage(int64_t kernel, Conv2dOptions opt, int64_t dilation) {
  if (dilation == 1) return opt;
  return {1, kernel / 2 * dilation, dilation, opt.groups};
}

}  // namespace sono::models
