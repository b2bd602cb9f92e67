#pragma once
#include "layers/module.h"

namespace sono::nn {

// torch.nn.Linear: weight [out, in], bias [out]; acts on the last dim.
class Linear : public UnaryModule {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;
};

}  // namespace sono::nn
