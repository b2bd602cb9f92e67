#pragma once
// torchvision's ResNet on NHWC images, in two roles:
// - ResNet: the encoder segmentation_models_pytorch 0.6 builds for "resnet18".."resnet152" (no
//   avgpool and fc; names and shapes equal smp's encoder state_dict keys, and so torchvision's
//   ImageNet checkpoints less fc.*);
// - ResNetClassifier: timm's "resnet18".."resnet152" classifier (global average pool + fc), whose
//   keys are the same trunk's plus fc.weight / fc.bias.
#include <algorithm>
#include <array>
#include <memory>
#include <string>

#include "models/classifier.h"
#include "models/encoder.h"
#include "models/pretrained.h"

namespace sono::nn {
class BatchNorm2d;
class Conv2d;
}  // namespace sono::nn

namespace sono::models {

struct ResNetConfig {
  bool bottleneck = false;  // BasicBlock (two 3x3 convs) or Bottleneck (1x1, 3x3, 1x1 x4)
  std::array<int64_t, 4> layers{2, 2, 2, 2};
  int64_t in_channels = 3;
  // 32, or 16 / 8: layer4 (and for 8 layer3) get stride 1 and dilation in all their convs.
  int64_t output_stride = 32;
  // smp's encoder_depth (3..5): the stem is stage 1, so layer1..layer(depth - 1) are built. smp
  // keeps the unused layers' weights but never runs them; they are not built here.
  int64_t depth = 5;
  // timm's classifier init: every conv fan-out normal, the stem too whatever its channels (smp
  // re-creates a non-RGB stem with torch's default), and each block's last BatchNorm weight 0, so
  // every residual branch starts as the identity (torchvision and smp leave it at 1).
  bool timm_init = false;
  // Stochastic depth on each block's residual branch, rising linearly to this over the blocks (timm).
  double drop_path_rate = 0.0;
  int64_t num_classes = 0;  // ResNetClassifier's fc outputs
};

// "resnet18", "resnet34", "resnet50", "resnet101", "resnet152".
ResNetConfig resnet_config(const std::string& variant);
// Whether an --arch names one of them (smp's encoder or timm's classifier, by task).
inline bool is_resnet(const std::string& arch) { return arch.starts_with("resnet"); }

// torchvision's checkpoints hold the classifier smp drops.
inline PretrainedLayout resnet_pretrained_layout() {
  return {"conv1.weight", {"fc.weight", "fc.bias"}, {"layer3.", "layer4."}};
}

// conv1, bn1, maxpool, layer1..layer4, registered into whichever module owns them (Base: the
// encoder interface or a one-output module), so both roles keep torchvision's flat names.
template <class Base>
class ResNetTrunk : public Base {
 protected:
  explicit ResNetTrunk(const ResNetConfig& config);
  // x [N, H, W, in_channels] -> the outputs of layer1..layer(depth - 1) (strides 4, 8, 16, 32
  // before dilation), after the stem's stride-2 map (relu(bn1(conv1))) where with_stem.
  std::vector<Tensor> stages(const Tensor& x, bool with_stem = false);
  void fuse_for_inference() override;
  // Output channels of layer s + 1 (0..3).
  int64_t stage_width(int s) const { return (config_.bottleneck ? 4 : 1) * (int64_t{64} << s); }

  ResNetConfig config_;

 private:
  std::shared_ptr<nn::Conv2d> conv1_;
  std::shared_ptr<nn::BatchNorm2d> bn1_;
  std::vector<std::shared_ptr<nn::Sequential>> layers_;
};

class ResNet : public ResNetTrunk<SegmentationEncoder> {
 public:
  explicit ResNet(const ResNetConfig& config) : ResNetTrunk(config) {}
  std::vector<Tensor> forward(const Tensor& x) override { return stages(x); }
  // The stem's stride-2 map, then forward's (what a U-Net joins).
  std::vector<Tensor> forward_from_stride2(const Tensor& x) { return stages(x, true); }
  std::vector<int64_t> stage_channels() const override;
  int64_t output_stride() const override { return std::min(config_.output_stride, int64_t{1} << config_.depth); }
};

class ResNetClassifier : public ResNetTrunk<Classifier> {
 public:
  explicit ResNetClassifier(const ResNetConfig& config);
  // forward: [N, H, W, in_channels] -> [N, num_classes]
  Tensor forward_features(const Tensor& x) override { return stages(x).back(); }  // [N, H/32, W/32, C]
  Tensor forward_head(const Tensor& features) override;  // global average pool, fc

 private:
  std::shared_ptr<nn::UnaryModule> fc_;
};

}  // namespace sono::models
