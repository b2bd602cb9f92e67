#pragma once
// ResNet as segmentation_models_pytorch 0.6 builds it for the encoders "resnet18".."resnet152":
// torchvision's ResNet without avgpool and fc, on NHWC images. Parameter names and shapes equal
// smp's encoder state_dict keys, and so torchvision's ImageNet checkpoints (less fc.*).
#include <array>
#include <memory>
#include <string>

#include "models/encoder.h"
#include "models/pretrained.h"

namespace sono::models {

struct ResNetConfig {
  bool bottleneck = false;  // BasicBlock (two 3x3 convs) or Bottleneck (1x1, 3x3, 1x1 x4)
  std::array<int64_t, 4> layers{2, 2, 2, 2};
  int64_t in_channels = 3;
  // 32, or 16 / 8: layer4 (and for 8 layer3) get stride 1 and dilation in all their convs.
  int64_t output_stride = 32;
};

// "resnet18", "resnet34", "resnet50", "resnet101", "resnet152".
ResNetConfig resnet_config(const std::string& variant);

// torchvision's checkpoints hold the classifier smp drops.
inline PretrainedLayout resnet_pretrained_layout() { return {"conv1.weight", {"fc.weight", "fc.bias"}}; }

class ResNet : public SegmentationEncoder {
 public:
  explicit ResNet(const ResNetConfig& config);
  // x [N, H, W, in_channels] -> layer1..layer4 outputs (strides 4, 8, 16, 32 before dilation).
  std::vector<Tensor> forward(const Tensor& x) override;
  std::array<int64_t, 4> stage_channels() const override;
  int64_t output_stride() const override { return config_.output_stride; }

 private:
  ResNetConfig config_;
  std::shared_ptr<nn::UnaryModule> conv1_, bn1_;
  std::array<std::shared_ptr<nn::Sequential>, 4> layers_;
};

}  // namespace sono::models
