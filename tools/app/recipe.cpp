#include "tools/app/recipe.h"

#include "tensor/error.h"

namespace sono::app {

void add_recipe_options(Cli& cli) {
  cli.option("augment", "standard", "augmentation: standard (flips, rotations, affine, brightness/contrast) or"
                                    " ultrasound (also gamma, speckle noise and, half the time, a zoom of up to 1.5x"
                                    " on a window holding the whole lesion)")
      .option("elastic", "0", "also a smooth random deformation in the augmentation: displacements N(0, this x side)"
                              " at a 5 x 5 lattice of points, bilinear between them (e.g. 0.02; 0: off)")
      .flag("keep-upright", "no vertical flips or 90-degree turns in the augmentation: the probe stays at the top"
                            " and what lies under a lesion stays under it (the default)")
      .flag("any-orientation", "also vertical flips and 90-degree turns in the augmentation (off by default:"
                               " see --keep-upright)")
      .flag("balanced-sampling", "draw every class equally often (with replacement) instead of each image once")
      .option("ema", "0", "keep an exponential moving average of the weights with this decay (e.g. 0.999),"
                          " validate and save it (0: off)")
      .flag("flip-tta", "validate on the average of the image's and its mirror image's outputs")
      .option("folds", "0", "K-fold cross-validation: train K models on duplicate-grouped, class-stratified"
                            " folds and report mean and spread (0: one split by --val-split)")
      .option("only-fold", "0", "with --folds K: train and score fold N alone (1..K), so that the folds can run"
                                " as separate jobs (0: every fold)");
}

RecipeOptions read_recipe_options(const Cli& cli) {
  RecipeOptions r;
  r.augment = cli.str("augment");
  r.elastic = cli.real("elastic");
  SONO_CHECK(!(cli.is_set("keep-upright") && cli.is_set("any-orientation")),
             "--keep-upright and --any-orientation: give one or the other");
  r.keep_upright = !cli.is_set("any-orientation");
  r.balanced_sampling = cli.is_set("balanced-sampling");
  r.ema_decay = cli.real("ema");
  r.flip_tta = cli.is_set("flip-tta");
  r.folds = static_cast<int>(cli.integer("folds"));
  r.only_fold = static_cast<int>(cli.integer("only-fold"));
  SONO_CHECK(r.augment == "standard" || r.augment == "ultrasound", "--augment ", r.augment,
             ": expected standard or ultrasound");
  SONO_CHECK(r.elastic >= 0 && r.elastic <= 0.1, "--elastic ", cli.str("elastic"),
             ": must be from 0 (off) to 0.1 (a tenth of the side)");
  SONO_CHECK(r.ema_decay == 0 || (r.ema_decay > 0 && r.ema_decay < 1), "--ema ", r.ema_decay,
             ": must be 0 (off) or between 0 and 1");
  SONO_CHECK(r.folds == 0 || (r.folds >= 2 && r.folds <= 20), "--folds ", r.folds, ": must be 0 (off) or 2..20");
  SONO_CHECK(r.only_fold == 0 || (r.folds && r.only_fold >= 1 && r.only_fold <= r.folds), "--only-fold ",
             r.only_fold, r.folds ? ": must be 0 (every fold) or 1.." + std::to_string(r.folds) : ": it needs --folds");
  return r;
}

data::AugmentOptions RecipeOptions::augment_options() const {
  data::AugmentOptions options = augment == "ultrasound" ? data::AugmentOptions::ultrasound() : data::AugmentOptions{};
  if (keep_upright) options.vflip = 0, options.rotate90 = false;
  options.elastic = elastic;
  return options;
}

}  // namespace sono::app
