#pragma once
// DeepLabV3+ as segmentation_models_pytorch 0.6's DeepLabV3Plus(encoder_name=..., encoder_weights=
// None, in_channels=K, classes=C) with its defaults (output stride 16, 256 decoder channels,
// separable ASPP at rates 12/24/36, dropout 0.5, final x4 upsampling), on a MiT ("mit_b0".."mit_b5")
// or ResNet ("resnet18".."resnet152") encoder; a ResNet may stop at encoder_depth 4 or 3, when the
// ASPP reads layer3 (or layer2) and the upsampling before the skip join is x4 (x2). Parameter and
// buffer names equal smp's state_dict keys: encoder.*, decoder.aspp.*, decoder.block1.*,
// decoder.block2.*, segmentation_head.0.*.
#include <array>
#include <memory>
#include <string>
#include <variant>

#include "models/mit.h"
#include "models/registry.h"
#include "models/resnet.h"

namespace sono::models {

using EncoderConfig = std::variant<MitConfig, ResNetConfig>;  // its output_stride is the decoder's

struct DeepLabV3PlusConfig {
  EncoderConfig encoder;
  int64_t num_classes = 1;
  int64_t decoder_channels = 256;
  std::array<int64_t, 3> atrous_rates = kSmpAtrousRates;
  double aspp_dropout = 0.5;
  int64_t upsampling = 4;
};

// smp's model for encoder_name "mit_b0".."mit_b5" or "resnet18".."resnet152" with our options
// (in_channels, classes, drop path rate: MiT only, encoder depth: ResNet only).
DeepLabV3PlusConfig deeplabv3plus_config(const std::string& encoder_name, const ModelOptions& options);
// Whether a segmentation --arch's encoder may stop before its last stage (ModelOptions::encoder_depth
// below 5): ResNets, under DeepLabV3+ or U-Net.
inline bool encoder_can_stop_early(const std::string& arch) { return is_resnet(segmentation_encoder(arch)); }

class DeepLabV3PlusDecoder;

class DeepLabV3Plus : public nn::UnaryModule {
 public:
  explicit DeepLabV3Plus(const DeepLabV3PlusConfig& config);
  // x [N, H, W, in_channels], H and W multiples of the output stride -> logits [N, H, W, classes].
  Tensor forward(const Tensor& x) override;
  const DeepLabV3PlusConfig& config() const { return config_; }
  SegmentationEncoder& encoder() { return *encoder_; }

 private:
  DeepLabV3PlusConfig config_;
  std::shared_ptr<SegmentationEncoder> encoder_;
  std::shared_ptr<DeepLabV3PlusDecoder> decoder_;
  std::shared_ptr<nn::Sequential> head_;
};

}  // namespace sono::models
