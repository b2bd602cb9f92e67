#include "tools/app/cross_validation.h"

#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "autograd/node.h"
#include "tools/app/distributed.h"
#include "tools/app/inference.h"
#include "tensor/atomic_file.h"
#include "tools/data/folds.h"

namespace sono::app {

namespace fs = std::filesystem;

std::string fold_path(const std::string& path, int fold) {
  const std::string number = std::to_string(fold + 1);
  if (auto at = path.find("{fold}"); at != std::string::npos) return std::string(path).replace(at, 6, number);
  fs::path p(path);
  return (p.parent_path() / (p.stem().string() + ".fold" + number + p.extension().string())).string();
}

std::vector<std::pair<Tensor, data::Batch>> checkpoint_outputs(LoadedModel& model, data::Loader& loader,
                                                               Device device, bool flip, bool across_ranks) {
  autograd::NoGradGuard no_grad;
  model.model->eval();
  std::vector<std::pair<Tensor, data::Batch>> outputs;
  loader.start_epoch(0);
  auto model_forward = [&](const Tensor& images) { return forward(*model.model, images, flip); };
  while (auto batch = loader.next()) {
    Tensor images = batch->images.to(device);
    Tensor logits = across_ranks ? distributed::map_rows(model_forward, images) : model_forward(images);
    outputs.emplace_back(logits, std::move(*batch));
  }
  return outputs;
}

FoldSummary summarise(const std::vector<double>& v) {
  SONO_CHECK(!v.empty(), "summarise: no values");
  FoldSummary s{0, 0, v[0], v[0]};
  for (double x : v) s.mean += x / static_cast<double>(v.size()), s.min = std::min(s.min, x), s.max = std::max(s.max, x);
  if (v.size() > 1) {
    double squares = 0;
    for (double x : v) squares += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(squares / static_cast<double>(v.size() - 1));
  }
  return s;
}

namespace {

TrainSettings fold_settings(const TrainSettings& s, int fold) {
  TrainSettings f = s;
  f.save_path = fold_path(s.save_path, fold);
  if (s.pretrained.find("{fold}") != std::string::npos) f.pretrained = fold_path(s.pretrained, fold);
  if (!s.log_dir.empty()) f.log_dir = (fs::path(s.log_dir) / ("fold" + std::to_string(fold + 1))).string();
  return f;
}

// The fold's kept checkpoint on the fold's images, calibrated as its card says; every rank
// computes its share of each batch and scores them all (the same figures on every rank).
std::vector<double> score_fold(const TrainSettings& s, TrainingTask& task, std::shared_ptr<data::SampleCache> cache,
                               const std::vector<size_t>& val) {
  LoadedModel best = load_for_inference(s.save_path, task.task(), s.device);
  data::LoaderOptions options;
  options.batch_size = s.batch_size;
  options.input = task.input();
  options.shuffle = options.augment = false;
  options.workers = static_cast<int>(s.workers);
  data::Loader loader(std::move(cache), val, options);
  task.reset_metrics();
  for (auto& [logits, batch] : checkpoint_outputs(best, loader, s.device, s.recipe_options.flip_tta, true)) {
    Tensor calibrated = calibrate(best.card, logits);
    data::Batch on_device = batch;
    on_device.masks = batch.masks.to(s.device);
    on_device.labels = batch.labels.to(s.device);
    task.add_metrics(calibrated, on_device);
    task.add_out_of_fold(calibrated, logits, on_device);
  }
  return task.metric_values();
}

// `numbers[k]` is the fold number (from 1) of `folds[k]`'s scores.
std::string summary_table(const std::vector<std::string>& columns, const std::vector<int>& numbers,
                          const std::vector<std::vector<double>>& folds, std::string& csv) {
  std::ostringstream table, rows;
  table << std::fixed << std::setprecision(4) << std::left << std::setw(24) << "metric" << std::right;
  rows << "metric";
  for (int number : numbers) {
    table << std::setw(9) << ("fold" + std::to_string(number));
    rows << ",fold" << number;
  }
  table << std::setw(9) << "mean" << std::setw(9) << "std" << std::setw(9) << "min" << std::setw(9) << "max" << "\n";
  rows << ",mean,std,min,max\n" << std::setprecision(6);
  for (size_t m = 0; m < columns.size(); ++m) {
    std::vector<double> values;
    for (const auto& fold : folds) values.push_back(fold[m]);
    FoldSummary s = summarise(values);
    table << std::left << std::setw(24) << columns[m] << std::right;
    rows << columns[m];
    for (double v : values) table << std::setw(9) << v, rows << "," << v;
    table << std::setw(9) << s.mean << std::setw(9) << s.std << std::setw(9) << s.min << std::setw(9) << s.max << "\n";
    rows << "," << s.mean << "," << s.std << "," << s.min << "," << s.max << "\n";
  }
  csv = rows.str();
  return table.str();
}

}  // namespace

int run_cross_validation(const TrainSettings& s, TrainingTask& task, const data::Dataset& dataset,
                         const std::function<void(data::SampleCache&, int fold)>& prepare) {
  const int k = s.recipe_options.folds, only = s.recipe_options.only_fold;
  data::Folds folds;
  std::vector<int> numbers;
  std::vector<std::vector<double>> scores;
  for (int fold = 0; fold < k; ++fold) {
    if (only && fold + 1 != only) continue;
    auto cache = decode_samples(s, dataset);
    if (prepare) prepare(*cache, fold);
    check_prepared(s, *cache);
    if (folds.fold.empty()) folds = data::make_folds(dataset, cache->hashes(), k, s.seed);
    data::Split split = folds.split(fold);
    std::cout << "fold " << fold + 1 << "/" << k << ": " << split.summary(dataset) << "\n";
    TrainSettings fold_s = fold_settings(s, fold);
    if (int status = run_training(fold_s, task, cache, split)) return status;
    // Rank 0 saved and calibrated the fold's checkpoint alone.
    distributed::wait_for_all_ranks("waiting for rank 0's checkpoint of the fold");
    numbers.push_back(fold + 1);
    scores.push_back(score_fold(fold_s, task, cache, split.val));
  }
  std::string csv;
  std::cout << "cross-validation, " << (only ? "fold " + std::to_string(only) + " of " : "") << k
            << " folds (the " << (s.keep_last_epoch ? "last" : "best") << " epoch of each, calibrated; std over folds"
            << (s.keep_last_epoch ? "" : "; picked on the fold's own images, so optimistic") << "):\n"
            << summary_table(task.metric_columns(), numbers, scores, csv);
  if (s.log_dir.empty() || !distributed::is_root()) return 0;
  // One fold's job writes its own scores; the out-of-fold table needs every fold's images.
  const std::string name = only ? "cross_validation.fold" + std::to_string(only) + ".csv" : "cross_validation.csv";
  write_file_atomic(fs::path(s.log_dir) / name, csv);
  if (!only) task.write_out_of_fold(s.log_dir, dataset);
  return 0;
}

}  // namespace sono::app
