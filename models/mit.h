#pragma once
// MiT, the Mix Transformer encoder of SegFormer, as segmentation_models_pytorch 0.6 builds it
// for mit_b0..mit_b5, on NHWC images. Parameter names and shapes equal smp's encoder state_dict
// keys. NHWC makes the token sequence of a stage a plain reshape of its feature map, and lets
// the Mix-FFN's depthwise conv run on the fc1 output as it is.
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "models/encoder.h"
#include "models/pretrained.h"

namespace sono::models {

struct MitConfig {
  std::array<int64_t, 4> dims{64, 128, 320, 512};
  std::array<int64_t, 4> heads{1, 2, 5, 8};
  std::array<int64_t, 4> depths{3, 4, 6, 3};
  std::array<int64_t, 4> sr_ratios{8, 4, 2, 1};  // K/V come from a conv of kernel = stride = sr
  int64_t mlp_ratio = 4;
  int64_t in_channels = 3;
  double drop_path_rate = 0.1;  // smp sets 0.1 for every variant
  // 32, or 16 / 8 as smp's make_dilated: each stage whose stride exceeds it gets stride 1 and
  // dilation (stage stride / output stride) in every one of its convs.
  int64_t output_stride = 32;
};

// "mit_b0" .. "mit_b5".
MitConfig mit_config(const std::string& variant);

// smp's ImageNet MiT checkpoints hold the encoder's keys (no "encoder." prefix) and the
// classification head that smp drops: load them with
// load_pretrained(model.encoder(), path, mit_pretrained_layout()).
inline PretrainedLayout mit_pretrained_layout() { return {"patch_embed1.proj.weight", {"head.weight", "head.bias"}, {}}; }

class MixVisionTransformer : public SegmentationEncoder {
 public:
  explicit MixVisionTransformer(const MitConfig& config);
  // x [N, H, W, in_channels] -> the four stage outputs [N, h_i, w_i, dims[i]] (strides 4, 8, 16,
  // 32 before dilation). smp also returns the input and an empty stride-2 map; nothing uses them.
  std::vector<Tensor> forward(const Tensor& x) override;
  std::vector<int64_t> stage_channels() const override { return {config_.dims.begin(), config_.dims.end()}; }
  int64_t output_stride() const override { return config_.output_stride; }
  const MitConfig& config() const { return config_; }

 private:
  MitConfig config_;
  std::array<std::shared_ptr<nn::UnaryModule>, 4> patch_embeds_, norms_;
  std::array<std::shared_ptr<nn::Sequential>, 4> blocks_;
};

}  // namespace sono::models
