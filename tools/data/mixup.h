#pragma once
// Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) for the classifier, as timm's Mixup
// in batch mode: one lambda ~ Beta(alpha, alpha) per batch, and row i mixed with row B-1-i (the
// batch reversed). Mixup blends whole inputs, the mask channel included; CutMix pastes the
// partner's box, whose area sets lambda. The loss is lambda * CE(own labels) +
// (1 - lambda) * CE(partner's labels). With both on, each batch draws one of the two.
#include "tensor/random.h"
#include "tools/data/loader.h"

namespace sono::data {

struct MixOptions {
  double mixup_alpha = 0;   // 0: off
  double cutmix_alpha = 0;  // 0: off
  bool enabled() const { return mixup_alpha > 0 || cutmix_alpha > 0; }
};

// Mixes a CPU batch in place: images, and `mix_labels` / `mix_weight` (the partner rows' labels
// and lambda). A batch of one image has no partner and stays as it is.
void mix_batch(Batch& batch, const MixOptions& options, Generator& gen);

// Cross-entropy (as sono::cross_entropy) of a batch that mix_batch may have mixed.
Tensor mixed_cross_entropy(const Tensor& logits, const Batch& batch, const Tensor& class_weights,
                           double label_smoothing);

}  // namespace sono::data
