#pragma once
// U-Net as segmentation_models_pytorch 0.6's Unet(encoder_name="resnet18".."resnet152",
// encoder_weights=None, encoder_depth=D, decoder_channels=..., in_channels=K, classes=C) with its
// other defaults (BatchNorm in the decoder, no attention, no centre block, nearest upsampling, a
// 3x3 head at the input's resolution). Each decoder block doubles the map, joins the encoder's
// map of that stride (the stem's at stride 2; nothing at stride 1) and runs two 3x3 conv + BN +
// ReLU. Parameter and buffer names equal smp's state_dict keys: encoder.*,
// decoder.blocks.I.conv1.{0,1}.*, decoder.blocks.I.conv2.{0,1}.*, segmentation_head.0.*.
// Named "unet_" + the encoder ("unet_resnet18"); the plain encoder names build DeepLabV3+.
#include <memory>
#include <string>
#include <vector>

#include "models/registry.h"
#include "models/resnet.h"

namespace sono::models {

// smp's default decoder_channels; a shallower encoder takes the first encoder_depth of them.
inline const std::vector<int64_t> kSmpUnetDecoderChannels{256, 128, 64, 32, 16};

struct UnetConfig {
  ResNetConfig encoder;  // output stride 32 (no dilation): the decoder joins every stride
  int64_t num_classes = 1;
  std::vector<int64_t> decoder_channels;  // one per encoder stage (encoder.depth), deepest first
};

// smp's default for an encoder of `depth` stages.
inline std::vector<int64_t> smp_unet_decoder_channels(int64_t depth) {
  return {kSmpUnetDecoderChannels.begin(), kSmpUnetDecoderChannels.begin() + depth};
}

UnetConfig unet_config(const std::string& encoder_name, const ModelOptions& options);

class UnetDecoder;

class Unet : public nn::UnaryModule {
 public:
  explicit Unet(const UnetConfig& config);
  // x [N, H, W, in_channels], H and W multiples of 2^encoder_depth -> logits [N, H, W, classes].
  Tensor forward(const Tensor& x) override;
  const UnetConfig& config() const { return config_; }

 private:
  UnetConfig config_;
  std::shared_ptr<ResNet> encoder_;
  std::shared_ptr<UnetDecoder> decoder_;
  std::shared_ptr<nn::Sequential> head_;
};

}  // namespace sono::models
