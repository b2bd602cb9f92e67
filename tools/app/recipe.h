#pragma once
// Training-recipe choices beyond the optimiser, shared by seg_train and cls_train: the
// augmentation chain, class-balanced sampling, an exponential moving average of the weights,
// test-time flips, and K-fold cross-validation in place of one split.
#include <string>

#include "tools/app/cli.h"
#include "tools/data/augment.h"

namespace sono::app {

struct RecipeOptions {
  std::string augment = "standard";  // standard or ultrasound (see data::AugmentOptions)
  double elastic = 0;                // data::AugmentOptions::elastic; 0: off
  // No vertical flips or quarter turns: a scan always has the probe at the top, and what lies
  // under a lesion (posterior shadowing or enhancement) tells malignant from benign. The default:
  // ahead of the turning chain for both models on five folds (models/weights/README.md, rows 28-30).
  bool keep_upright = true;
  bool balanced_sampling = false;
  double ema_decay = 0;  // 0: off
  bool flip_tta = false;
  int folds = 0;      // 0: one split by --val-split
  int only_fold = 0;  // 1..folds: train that fold alone; 0: every fold

  data::AugmentOptions augment_options() const;
};

void add_recipe_options(Cli& cli);
RecipeOptions read_recipe_options(const Cli& cli);

}  // namespace sono::app
