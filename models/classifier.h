#pragma once
// What the tools need of an image classifier beyond its logits: the last feature map and the head
// that pools it into logits (timm's forward_features / forward_head), so Grad-CAM can take the
// gradient of a class score with respect to that map, whichever family the model is.
#include "layers/module.h"

namespace sono::models {

class Classifier : public nn::UnaryModule {
 public:
  virtual Tensor forward_features(const Tensor& x) = 0;         // [N, H, W, C_in] -> [N, h, w, C]
  virtual Tensor forward_head(const Tensor& features) = 0;      // -> [N, num_classes]
  Tensor forward(const Tensor& x) override { return forward_head(forward_features(x)); }
};

}  // namespace sono::models
