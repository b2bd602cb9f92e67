#pragma once
// timm's ConvNeXt (convnext_atto .. convnext_large), on NHWC images. Parameter names and shapes
// equal timm's state_dict keys, so timm checkpoints load by name and ours load back into timm.
// NHWC makes timm's LayerNorm2d a LayerNorm over the last dim and the block's permutes vanish.
#include <array>
#include <memory>
#include <string>

#include "layers/module.h"
#include "models/classifier.h"
#include "models/pretrained.h"

namespace sono::models {

struct ConvNeXtConfig {
  std::array<int64_t, 4> depths{3, 3, 9, 3};
  std::array<int64_t, 4> dims{96, 192, 384, 768};
  // timm's small variants (atto..nano) run the MLP as 1x1 convs: the same maths here, but
  // the weights are stored [out, in, 1, 1] and the names stay mlp.fc1 / mlp.fc2.
  bool conv_mlp = false;
  int64_t in_channels = 3;
  int64_t num_classes = 1000;  // 0: no classifier, forward returns the normalised pooled features
  double drop_path_rate = 0.0;  // stochastic depth, rising linearly from 0 over all blocks
  double drop_rate = 0.0;       // dropout before the classifier
  double ls_init_value = 1e-6;  // layer scale (gamma) initial value
  double head_init_scale = 1.0;
};

// timm's named variants: "atto", "femto", "pico", "nano", "tiny", "small", "base", "large".
ConvNeXtConfig convnext_config(const std::string& variant);

// Where timm's ConvNeXt checkpoints differ from a model with other input channels or classes.
inline PretrainedLayout convnext_pretrained_layout() { return {"stem.0.weight", {"head.fc.weight", "head.fc.bias"}, {}}; }

class ConvNeXt : public Classifier {
 public:
  explicit ConvNeXt(const ConvNeXtConfig& config);
  // forward: [N, H, W, in_channels] -> [N, num_classes]
  Tensor forward_features(const Tensor& x) override;  // -> [N, H/32, W/32, dims[3]]
  Tensor forward_head(const Tensor& features) override;
  const ConvNeXtConfig& config() const { return config_; }

 private:
  void init_weights();
  ConvNeXtConfig config_;
  std::shared_ptr<nn::Sequential> stem_, stages_;
  std::shared_ptr<nn::UnaryModule> head_;
};

}  // namespace sono::models
