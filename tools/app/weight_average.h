#pragma once
// An exponential moving average of a model's weights (Polyak averaging, as timm's ModelEmaV2):
// after every optimiser step shadow = decay * shadow + (1 - decay) * weights, over parameters
// and floating buffers (BatchNorm statistics). The average of the last ~1/(1-decay) steps is
// smoother than the last step's weights and usually validates better on small data sets.
#include "layers/module.h"

namespace sono::app {

class WeightAverage {
 public:
  WeightAverage(const nn::Module& model, double decay);
  void update(const nn::Module& model);
  // Exchanges the model's weights with the average (twice restores both).
  void swap(nn::Module& model);

 private:
  double decay_;
  nn::StateDict shadow_;
};

}  // namespace sono::app
