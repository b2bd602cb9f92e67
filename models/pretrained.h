#pragma once
// Loading ImageNet-pretrained backbone weights (safetensors exported from timm or
// segmentation_models_pytorch) into a model whose input channels or classes differ.
#include <string>
#include <vector>

#include "layers/module.h"

namespace sono::models {

// Which state-dict entries may differ from the checkpoint, by key.
struct PretrainedLayout {
  std::string input_conv;               // the first conv's weight, e.g. "stem.0.weight"
  std::vector<std::string> classifier;  // e.g. {"head.fc.weight", "head.fc.bias"}; may be empty
  // Key prefixes of stages a shorter model leaves out (a ResNet at smp's encoder_depth 4 has no
  // "layer4."): dropped when the model has no key under them, as smp loads but never runs them.
  std::vector<std::string> optional_stages;
};

// timm's adapt_input_conv: a conv weight [O, B, kh, kw] trained on B channels becomes
// [O, in_channels, kh, kw]. One channel: the sum over B. Otherwise channel i copies source
// channel i % B, and the whole weight is scaled by B / in_channels.
Tensor adapt_input_conv(const Tensor& weight, int64_t in_channels);

// Loads the checkpoint at `path` into `model`:
// - the input conv is adapted to the model's input channels (read from the model's shape);
// - classifier entries are dropped when the model has none or their shape differs (the model's
//   freshly initialised head stays), and so are the entries of optional stages it does not build;
// - everything else loads strictly: a missing or unexpected key, or a shape mismatch, is an
//   error naming the file, the key and both shapes.
void load_pretrained(nn::Module& model, const std::string& path, const PretrainedLayout& layout);

// The same on a state dict already in memory.
void load_pretrained(nn::Module& model, nn::StateDict checkpoint, const PretrainedLayout& layout);

}  // namespace sono::models
