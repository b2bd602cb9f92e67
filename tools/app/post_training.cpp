#include "tools/app/post_training.h"

#include <iomanip>
#include <iostream>
#include <sstream>

#include "tensor/ops.h"
#include "tools/app/cross_validation.h"
#include "tools/app/inference.h"
#include "tools/data/calibration.h"
#include "tools/data/metrics.h"

namespace sono::app {

namespace {

LoadedModel load_best(const TrainSettings& s, models::Task task) {
  LoadedModel best = load_checkpoint(s.save_path, task);  // saved again with its calibration: unfused
  best.model->to(s.device);
  return best;
}

std::string number(double v) {
  std::ostringstream os;
  os << std::setprecision(6) << v;
  return os.str();
}

}  // namespace

void fit_temperature(const TrainSettings& s, data::Loader& val) {
  LoadedModel best = load_best(s, models::Task::classification);
  data::Rows logits;
  std::vector<int> labels;
  data::ProbabilityRecord before, after;
  auto outputs = checkpoint_outputs(best, val, s.device, s.recipe_options.flip_tta);
  for (auto& [l, batch] : outputs) {
    std::vector<double> values = l.to_vector();
    const size_t c = static_cast<size_t>(l.size(1));
    for (size_t i = 0; i * c < values.size(); ++i) logits.emplace_back(values.begin() + i * c, values.begin() + (i + 1) * c);
    for (int64_t y : batch.labels.to_labels()) labels.push_back(static_cast<int>(y));
  }
  double t = data::fit_temperature(logits, labels);
  best.card.extra["temperature"] = number(t);
  for (auto& [l, batch] : outputs) {
    before.add_batch(softmax(l, -1), batch.labels);
    after.add_batch(softmax(calibrate(best.card, l), -1), batch.labels);
  }
  save_checkpoint(s.save_path, *best.model, best.card);
  if (data::every_row_right(logits, labels)) {
    std::cout << "temperature 1: the model gets all " << labels.size() << " validation images right, so they "
              << "cannot say how far to sharpen its probabilities; " << s.save_path << "\n";
    return;
  }
  std::cout << std::fixed << std::setprecision(4) << "temperature " << t << " fitted on the " << labels.size()
            << " validation images: NLL " << data::mean_nll(logits, labels, 1) << " -> "
            << data::mean_nll(logits, labels, t) << ", ECE " << before.ece() << " -> " << after.ece() << "; "
            << s.save_path << "\n" << std::defaultfloat;
}

void fit_empty_threshold(const TrainSettings& s, data::Loader& val) {
  LoadedModel best = load_best(s, models::Task::segmentation);
  auto outputs = checkpoint_outputs(best, val, s.device, s.recipe_options.flip_tta);
  double best_threshold = 0.5, best_dice = -1, dice_at_half = 0;
  for (double threshold : {0.5, 0.6, 0.7, 0.8, 0.9, 0.95}) {
    best.card.extra["empty_below"] = number(threshold);
    data::SegmentationMetrics metrics;
    for (auto& [logits, batch] : outputs) metrics.add_batch(lesion_channel(calibrate(best.card, logits)), batch.masks);
    if (threshold == 0.5) dice_at_half = metrics.dice();
    if (metrics.dice() > best_dice) best_dice = metrics.dice(), best_threshold = threshold;
  }
  best.card.extra["empty_below"] = number(best_threshold);
  save_checkpoint(s.save_path, *best.model, best.card);
  std::cout << std::fixed << std::setprecision(4) << "empty below " << best_threshold
            << " (a map whose highest lesion probability is lower predicts no lesion): validation Dice "
            << dice_at_half << " -> " << best_dice << "; " << s.save_path << "\n" << std::defaultfloat;
}

void read_given_calibration(const Cli& cli, const std::string& flag, const std::string& card_key, double min,
                            double max, TrainSettings& s) {
  if (cli.str(flag).empty()) {
    if (!s.has_validation())
      std::cout << "note: no validation images to fit the card's " << card_key << " on; --" << flag
                << " gives one (e.g. the mean of a --folds run's)\n";
    return;
  }
  SONO_CHECK(!s.has_validation(), "--", flag, ": only with --val-split 0; a validation split fits it");
  const double value = cli.real(flag);
  SONO_CHECK(value >= min && value <= max, "--", flag, " ", cli.str(flag), ": must be from ", min, " to ", max);
  s.card_extra[card_key] = run_argument_number(value);
}

}  // namespace sono::app
