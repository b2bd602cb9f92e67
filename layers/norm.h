#pragma once
#include <functional>

#include "layers/module.h"

namespace sono::nn {

// torch.nn.LayerNorm over the last dim. On NHWC maps this is also timm's LayerNorm2d.
class LayerNorm : public UnaryModule {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;
  double eps;
};

class Conv2d;

// torch.nn.BatchNorm2d on channels-last input, with the same buffers (running_mean,
// running_var, num_batches_tracked).
class BatchNorm2d : public UnaryModule {
 public:
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1);
  Tensor forward(const Tensor& x) override;
  // Folds this eval-mode BatchNorm into the conv whose output it normalises; the forward then
  // passes its input through (Module::fuse_for_inference).
  void fold_into(Conv2d& conv);
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  double eps, momentum;

  // SyncBatchNorm for data-parallel training (seg_train --sync-bn, tools/app/distributed.h):
  // while set, training normalises with the statistics of the whole global batch, which this
  // sums over the ranks (a differentiable sum of a per-channel tensor).
  static inline std::function<Tensor(const Tensor&)> sum_over_ranks;

 private:
  Tensor synced_forward(const Tensor& x);
  bool folded_ = false;
};

}  // namespace sono::nn
