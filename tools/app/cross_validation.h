#pragma once
// K-fold cross-validation (--folds K): K models, each trained with one fold (see
// data::make_folds) as its validation set; each fold's kept checkpoint (its last epoch unless
// --checkpoint best: an epoch picked on the fold itself flatters it) is scored on its fold,
// calibrated as its card says, and the figures are reported as mean, spread (sample standard
// deviation) and range over the folds. One split of 125 images moves macro-F1 by several
// points from seed to seed; the spread says how much a difference between recipes means.
#include <functional>
#include <string>
#include <vector>

#include "tools/app/checkpoint.h"
#include "tools/app/training.h"

namespace sono::app {

// "X.safetensors", fold 0 -> "X.fold1.safetensors"; "seg_{fold}.safetensors" -> "seg_1.safetensors".
std::string fold_path(const std::string& path, int fold);

// A checkpoint's logits over a loader's samples (in order), as `forward` gives them. With
// `across_ranks`, a collective: each MPI rank computes its share of every batch, and every rank
// gets all the logits (distributed::map_rows).
std::vector<std::pair<Tensor, data::Batch>> checkpoint_outputs(LoadedModel& model, data::Loader& loader,
                                                               Device device, bool flip, bool across_ranks = false);

struct FoldSummary {
  double mean = 0, std = 0, min = 0, max = 0;
};
FoldSummary summarise(const std::vector<double>& values);

// `prepare(cache, fold)` may change a fold's samples before training (cls_train --seg-model
// puts the fold's predicted masks there). Writes per-fold checkpoints X.foldK.safetensors,
// logs under LOG/foldK, and LOG/cross_validation.csv. With --only-fold N only fold N is trained
// and scored (LOG/cross_validation.foldN.csv), so the folds can run as separate jobs. Returns the
// exit status.
int run_cross_validation(const TrainSettings& settings, TrainingTask& task, const data::Dataset& dataset,
                         const std::function<void(data::SampleCache&, int fold)>& prepare = {});

}  // namespace sono::app
