#pragma once
// What is fitted on the validation images once training is done, and written into the kept
// checkpoint's card for predict: the classifier's temperature and the segmenter's
// empty-image threshold. Both leave the weights alone. They are fitted on the images they are
// then scored on, so ECE and the Dice over all images after them are slightly optimistic; the
// cross-validation scores each fold with its own fitted values in the same way.
#include "tools/app/training.h"

namespace sono::app {

// Card "temperature": the T minimising the validation NLL of softmax(logits / T).
void fit_temperature(const TrainSettings& settings, data::Loader& val);

// Card "empty_below": the highest lesion probability under which a whole map is called empty,
// chosen among 0.5 (off) .. 0.95 for the best validation Dice over all images (normal scans
// score 1 only when predicted empty). Ties go to the lower threshold.
void fit_empty_threshold(const TrainSettings& settings, data::Loader& val);

// A run without validation images (--val-split 0) fits neither value; its tool's flag (cls_train
// --temperature, seg_train --empty-below) writes one fitted elsewhere, e.g. by the --folds run
// that chose the recipe, into the card's `card_key`. The flag is refused where a validation
// split would fit the value, and outside [min, max].
void read_given_calibration(const Cli& cli, const std::string& flag, const std::string& card_key, double min,
                            double max, TrainSettings& settings);

}  // namespace sono::app
