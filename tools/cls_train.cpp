// cls_train: trains a 4-channel classifier (ConvNeXt or ResNet on RGB + lesion mask) on the classes
// named by the data's folders; cross-entropy loss (optionally on mixed batches), the best
// epoch picked by validation macro-F1 unless the last is kept.
// The mask channel is the ground truth, or with --seg-model the masks a segmentation
// checkpoint predicts, as the classifier will see them in predict.
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "models/registry.h"
#include "tensor/ops.h"
#include "tools/app/cross_validation.h"
#include "tools/app/csv_table.h"
#include "tools/app/inference.h"
#include "tools/app/post_training.h"
#include "tools/app/runtime.h"
#include "tools/app/distributed.h"
#include "tools/app/training.h"
#include "tools/data/dataset.h"
#include "tools/data/folds.h"
#include "tensor/atomic_file.h"
#include "tools/data/calibration.h"
#include "tools/data/metrics.h"

namespace {

using namespace sono;

class ClassificationTask : public app::TrainingTask {
 public:
  ClassificationTask(std::vector<std::string> classes, Tensor class_weights, double label_smoothing,
                     data::InputKind input)
      : input_(input), classes_(std::move(classes)), class_weights_(std::move(class_weights)),
        label_smoothing_(label_smoothing), metrics_(static_cast<int>(classes_.size())),
        malignant_(static_cast<int>(std::find(classes_.begin(), classes_.end(), "malignant") - classes_.begin())) {}

  models::Task task() const override { return models::Task::classification; }
  data::InputKind input() const override { return input_; }
  std::vector<std::string> class_names(const data::Dataset&) const override { return classes_; }
  Tensor loss(const Tensor& logits, const data::Batch& batch) const override {
    if (class_weights_.defined() && class_weights_.device() != logits.device())
      class_weights_ = class_weights_.to(logits.device());
    return data::mixed_cross_entropy(logits, batch, class_weights_, label_smoothing_);
  }
  void reset_metrics() override {
    metrics_ = data::ClassificationMetrics(static_cast<int>(classes_.size()));
    probabilities_ = {};
  }
  void add_metrics(const Tensor& logits, const data::Batch& batch) override {
    metrics_.add_batch(logits, batch.labels);
    probabilities_.add_batch(softmax(logits, -1), batch.labels);
  }
  // AUROC of malignant against the rest where the data has that class; ECE of the top class.
  std::vector<std::string> metric_columns() const override {
    std::vector<std::string> columns = {"val_accuracy", "val_macro_f1"};
    for (auto& c : classes_) columns.push_back("val_recall_" + c);
    if (has_malignant()) columns.push_back("val_auroc_malignant");
    columns.push_back("val_ece");
    return columns;
  }
  std::vector<double> metric_values() const override {
    std::vector<double> values = {metrics_.accuracy(), metrics_.macro_f1()};
    for (size_t c = 0; c < classes_.size(); ++c) values.push_back(metrics_.recall(static_cast<int>(c)));
    if (has_malignant()) values.push_back(probabilities_.auroc(malignant_));
    values.push_back(probabilities_.ece());
    return values;
  }
  std::string best_metric() const override { return "val_macro_f1"; }
  std::string report() const override { return metrics_.confusion_table(classes_); }
  void after_training(const app::TrainSettings& settings, data::Loader& val) override {
    app::fit_temperature(settings, val);
  }
  void add_out_of_fold(const Tensor& logits, const Tensor& /*uncalibrated*/, const data::Batch& batch) override {
    out_of_fold_.add_batch(softmax(logits, -1), batch.labels);
    out_of_fold_metrics_.add_batch(logits, batch.labels);
    out_of_fold_samples_.insert(out_of_fold_samples_.end(), batch.samples.begin(), batch.samples.end());
  }
  void write_out_of_fold(const std::string& log_dir, const data::Dataset& dataset) const override {
    auto path = std::filesystem::path(log_dir) / "reliability.svg";
    std::ostringstream title;
    title << std::fixed << std::setprecision(3) << "out-of-fold calibration, " << out_of_fold_.count()
          << " images: ECE " << out_of_fold_.ece();
    write_file_atomic(path, data::reliability_svg(out_of_fold_.bins(), title.str()));
    const auto per_image = std::filesystem::path(log_dir) / "out_of_fold.csv";
    write_file_atomic(per_image, out_of_fold_csv(dataset));
    std::cout << title.str() << " (" << path.string() << "; per image: " << per_image.string() << ")\n"
              << out_of_fold_metrics_.confusion_table(classes_);
  }

 private:
  bool has_malignant() const { return malignant_ < static_cast<int>(classes_.size()); }

  // Each image's calibrated probabilities from the fold that validated it, so the errors behind
  // the pooled confusion matrix can be looked at one by one.
  std::string out_of_fold_csv(const data::Dataset& dataset) const {
    std::vector<std::string> header = {"image", "class", "predicted"};
    for (auto& c : classes_) header.push_back("p_" + c);
    std::string csv = app::csv_row(header);
    for (size_t i = 0; i < out_of_fold_samples_.size(); ++i) {
      const size_t sample = out_of_fold_samples_[i];
      const std::vector<double>& probabilities = out_of_fold_.rows()[i];
      const size_t predicted = std::max_element(probabilities.begin(), probabilities.end()) - probabilities.begin();
      std::vector<std::string> row = {dataset.samples[sample].name, classes_[dataset.samples[sample].label],
                                      classes_[predicted]};
      for (double p : probabilities) row.push_back(app::csv_number(p));
      csv += app::csv_row(row);
    }
    return csv;
  }

  data::InputKind input_;
  std::vector<std::string> classes_;
  mutable Tensor class_weights_;  // moved to the logits' device on first use
  double label_smoothing_;
  data::ClassificationMetrics metrics_;
  int malignant_;
  data::ProbabilityRecord probabilities_, out_of_fold_;
  data::ClassificationMetrics out_of_fold_metrics_{static_cast<int>(classes_.size())};
  std::vector<size_t> out_of_fold_samples_;  // dataset index of each row of out_of_fold_
};

// --class-weights balanced: as sklearn's compute_class_weight("balanced"), n / (classes * n_c),
// so a rare class (BUSI's normal: 17%) weighs as much in the loss as a common one.
Tensor class_weights(const std::string& mode, const data::Dataset& dataset) {
  if (mode == "none") return {};
  SONO_CHECK(mode == "balanced", "--class-weights ", mode, ": expected none or balanced");
  std::vector<size_t> counts = dataset.class_counts();
  std::vector<double> weights;
  for (size_t n : counts)
    weights.push_back(static_cast<double>(dataset.samples.size()) / (counts.size() * std::max<size_t>(n, 1)));
  return Tensor::from_vector(weights, {static_cast<int64_t>(weights.size())});
}

// The classifier's fourth channel (app::classifier_mask) from seg for the cached samples `samples`
// lists, one row each. Across MPI ranks each predicts its share and all get every row
// (distributed::map_rows).
Tensor predicted_masks(app::LoadedModel& seg, const data::SampleCache& cache, const std::vector<size_t>& samples,
                       data::InputKind input, Device device) {
  std::vector<double> indices(samples.begin(), samples.end());
  const auto predict_share = [&](const Tensor& rows) {
    const int64_t n = rows.size(0), side = cache.size();
    Tensor masks = Tensor::empty({n, side * side});
    float* out = masks.data<float>();
    for (double index : rows.to_vector()) {
      const data::Mask mask = app::classifier_mask(
          input, app::segment_scan(seg, cache.image(static_cast<size_t>(index)), side, side, device));
      out = std::copy(mask.values.begin(), mask.values.end(), out);
    }
    return masks;
  };
  return app::distributed::map_rows(predict_share,
                                    Tensor::from_vector(indices, {static_cast<int64_t>(indices.size()), 1}));
}

// A classifier channel as the mask it stands for: probability levels over one half are lesion,
// as the segmenter's logit over 0 (before empty_below) is.
data::Mask as_mask(data::Mask channel, data::InputKind input) {
  if (input == data::InputKind::rgb_lesion_probability)
    for (uint8_t& v : channel.values) v = v >= data::kLesionLevel;
  return channel;
}

// Replaces the cached masks of the samples `segmenter_of` maps to segmenter k by the
// prediction of seg_models[k] on the cached image, as `input` reads it.
void use_predicted_masks(data::SampleCache& cache, const std::vector<std::string>& seg_models,
                         const std::function<size_t(size_t sample)>& segmenter_of, data::InputKind input,
                         Device device) {
  data::SegmentationMetrics agreement;
  for (size_t k = 0; k < seg_models.size(); ++k) {
    app::LoadedModel seg = app::load_for_inference(seg_models[k], models::Task::segmentation, device);
    std::vector<size_t> samples;
    for (size_t i = 0; i < cache.count(); ++i)
      if (segmenter_of(i) == k) samples.push_back(i);
    const Tensor masks = predicted_masks(seg, cache, samples, input, device);
    const float* row = masks.data<float>();
    for (size_t i : samples) {
      data::Mask predicted(cache.size(), cache.size());
      std::copy_n(row, predicted.values.size(), predicted.values.begin());
      row += predicted.values.size();
      agreement.add(as_mask(predicted, input), cache.mask(i));
      cache.set_mask(i, std::move(predicted));
    }
  }
  std::cout << std::fixed << std::setprecision(4) << "masks: predicted by " << seg_models.front()
            << (seg_models.size() > 1 ? " ... (each image's out-of-fold segmenter)" : "")
            << "; Dice against the ground truth " << agreement.dice() << " (lesion images "
            << agreement.lesion_dice() << ", " << agreement.lesions_found() << " of their lesions found)";
  if (agreement.images() > agreement.lesion_images())
    std::cout << ", " << agreement.empty_kept_empty() << " of lesion-free images left empty";
  std::cout << "\n" << std::defaultfloat;
}

// --seg-model with {fold}: the K segmenters (seg_models[k] is fold k's) of `seg_train --folds K`
// on the same images and seed. Each image's mask comes from the segmenter that did not train
// on it, so the classifier trains on masks as good (and as wrong) as those it is given in use,
// not on masks of images the segmenter has fitted. A classifier fold's training masks come
// from segmenters that saw that fold's masks (not its class labels).
void use_out_of_fold_masks(data::SampleCache& cache, const std::vector<std::string>& seg_models, uint64_t seed,
                           data::InputKind input, Device device) {
  const int k = static_cast<int>(seg_models.size());
  const data::Folds folds = data::make_folds(cache.dataset(), cache.hashes(), k, seed);
  use_predicted_masks(cache, seg_models, [&](size_t i) { return static_cast<size_t>(folds.fold[i]); }, input, device);
}

// --stacking's file onto the card, checked against the classes before training rather than at the
// first load of the checkpoint.
void read_stacking(const std::string& path, const std::vector<std::string>& classes, app::TrainSettings& s) {
  SONO_CHECK(!s.has_validation(), "--stacking: only with --val-split 0; on a --folds run, evaluate --folds K "
             "--fit-stacking fits it");
  SONO_CHECK(std::filesystem::is_regular_file(path), "--stacking ", path, ": no such file");
  // Far above a stacking's few hundred bytes: a wrong file is refused before it is read whole.
  SONO_CHECK(std::filesystem::file_size(path) <= 65536, "--stacking ", path, ": not a stacking file (over 64 KiB)");
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::optional<data::Stacking> stacking = app::parse_stacking(text, classes);
  std::string names;
  for (const std::string& c : classes) names += (names.empty() ? "" : ", ") + c;
  SONO_CHECK(stacking, "--stacking ", path, ": ", app::kStackingExpected, " for the classes ", names);
  s.card_extra["stacking"] = app::stacking_text(*stacking, classes);
}

int cls_train(int argc, char** argv) {
  app::Cli cli("cls_train", "Train a lesion classifier on image + lesion mask (timm's ConvNeXt or ResNet, 4 input channels).");
  app::add_training_options(cli, {.arch = "convnext_base", .batch_size = 16, .weight_decay = 5e-2, .drop_path = 0.1});
  cli.option("seg-model", "", "train on the masks this segmentation checkpoint predicts (default: ground truth);"
                              " {fold} in the name stands for the fold's number of a seg_train --folds run on the"
                              " same images and seed, and each image gets the mask of the segmenter that did"
                              " not train on it")
      .option("seg-folds", "0", "with {fold} in --seg-model: the segmenters' fold count (0: as --folds)")
      .option("mask-channel", "mask", "the fourth input channel: mask (the segmenter's, or the ground truth), or"
                                      " probability (with --seg-model: its lesion probability before empty_below,"
                                      " so the classifier sees what the segmenter was unsure of). The checkpoint"
                                      " records it and predict feeds the same")
      .option("label-smoothing", "0.1", "cross-entropy label smoothing")
      .option("class-weights", "none", "none, or balanced: loss weights n / (classes * n_class)")
      .option("lesion-view", "0", "classify the window around the mask's lesion instead of the whole scan: its"
                                  " bounding box grown by this times its side on each side (e.g. 0.5), at least a"
                                  " quarter of the scan; a scan without lesion stays whole. The checkpoint records"
                                  " it and predict crops alike (0: the whole scan)")
      .option("mixup", "0", "mixup: blend each training batch with itself reversed by lambda ~ Beta(A, A), labels"
                            " alike (timm's --mixup; e.g. 0.2; 0: off)")
      .option("cutmix", "0", "CutMix: paste a box of the reversed batch, lambda ~ Beta(A, A) setting its area"
                             " (timm's --cutmix; e.g. 1; 0: off); with --mixup each batch draws one of the two")
      .option("temperature", "", "with --val-split 0: the card's softmax temperature, fitted elsewhere (e.g. the"
                                 " mean of a --folds run's); a validation split fits it itself")
      .option("stacking", "", "with --val-split 0: a JSON file from evaluate --fit-stacking; the card then stacks"
                              " the classifier's probabilities with the malignancy score of the segmenter predict"
                              " is given (seg_train --malignancy-map)");
  if (!cli.parse(argc, argv)) return 0;
  app::TrainSettings settings = app::read_training_options(cli, models::Task::classification);
  app::read_given_calibration(cli, "temperature", "temperature", 0.05, 20, settings);
  std::string seg_model = cli.str("seg-model");
  const int folds = settings.recipe_options.folds;
  const bool out_of_fold = seg_model.find("{fold}") != std::string::npos;
  const int seg_folds_given = static_cast<int>(cli.integer("seg-folds"));
  SONO_CHECK(seg_folds_given >= 0, "--seg-folds ", cli.str("seg-folds"), ": must be 0 or more");
  const int seg_folds = seg_folds_given ? seg_folds_given : folds;
  SONO_CHECK(!out_of_fold || seg_folds >= 2, "--seg-model ", seg_model,
             ": {fold} stands for a fold's number; give the segmenters' fold count by --seg-folds or --folds");
  std::vector<std::string> seg_models;  // the checkpoints read: one, or each fold's
  if (out_of_fold)
    for (int fold = 0; fold < seg_folds; ++fold) seg_models.push_back(app::fold_path(seg_model, fold));
  else if (!seg_model.empty())
    seg_models.push_back(seg_model);
  for (const std::string& path : seg_models) {
    SONO_CHECK(std::filesystem::is_regular_file(path), path, ": --seg-model file not found");
    app::check_outputs({{path, "--seg-model"}},
                       {{settings.save_path, "--save-path"},
                        {app::resume_state_path(settings.save_path), "the resume state of --save-path"}},
                       true);
  }
  const std::string mask_channel = cli.str("mask-channel");
  SONO_CHECK(mask_channel == "mask" || mask_channel == app::ModelCard::kLesionProbabilityChannel, "--mask-channel ",
             mask_channel, ": expected mask or probability");
  const data::InputKind input = mask_channel == "mask" ? data::InputKind::rgb_mask
                                                       : data::InputKind::rgb_lesion_probability;
  SONO_CHECK(input == data::InputKind::rgb_mask || !seg_models.empty(),
             "--mask-channel probability: needs --seg-model (a ground-truth mask has no probability)");
  settings.mix = {cli.real("mixup"), cli.real("cutmix")};
  SONO_CHECK(settings.mix.mixup_alpha >= 0, "--mixup ", cli.str("mixup"), ": must be 0 (off) or more");
  SONO_CHECK(settings.mix.cutmix_alpha >= 0, "--cutmix ", cli.str("cutmix"), ": must be 0 (off) or more");
  const double label_smoothing = cli.real("label-smoothing");
  SONO_CHECK(label_smoothing >= 0 && label_smoothing <= 1, "--label-smoothing ", cli.str("label-smoothing"),
             ": must be from 0 to 1");
  const double lesion_view = app::read_lesion_view(cli, settings);
  SONO_CHECK(lesion_view == 0 || input == data::InputKind::rgb_mask,
             "--lesion-view: frames a mask's lesion; not with --mask-channel probability");
  data::Dataset dataset = data::scan_dataset(settings.images_dir, settings.masks_dir);
  SONO_CHECK(dataset.classes.size() >= 2, settings.images_dir,
             ": classification needs class subfolders (images/CLASS/ or BUSI's CLASS/), found ",
             dataset.classes.size() == 1 ? "one class" : "no class folders");
  settings.tool_arguments = {{"--seg-model", seg_model.empty() ? "ground truth" : seg_model},
                             {"--seg-folds", out_of_fold ? std::to_string(seg_folds) : "0"},
                             {"--label-smoothing", app::run_argument_number(label_smoothing)},
                             {"--class-weights", cli.str("class-weights")},
                             {"--lesion-view", app::run_argument_number(lesion_view)},
                             {"--mask-channel", mask_channel},
                             {"--mixup", app::run_argument_number(settings.mix.mixup_alpha)},
                             {"--cutmix", app::run_argument_number(settings.mix.cutmix_alpha)}};
  if (!cli.str("stacking").empty()) read_stacking(cli.str("stacking"), dataset.classes, settings);
  Tensor weights = class_weights(cli.str("class-weights"), dataset);
  ClassificationTask task(dataset.classes, weights, label_smoothing, input);
  std::function<void(data::SampleCache&)> predict_masks;
  if (out_of_fold)
    predict_masks = [&](data::SampleCache& cache) {
      use_out_of_fold_masks(cache, seg_models, settings.seed, input, settings.device);
    };
  else if (!seg_model.empty())
    predict_masks = [&](data::SampleCache& cache) {
      use_predicted_masks(cache, seg_models, [](size_t) { return size_t{0}; }, input, settings.device);
    };
  // After the masks: the window follows the mask the classifier is given.
  auto to_training_view = [&](data::SampleCache& cache) { app::frame_lesions(cache, settings, lesion_view); };
  if (folds) {
    // The predicted masks do not depend on the classifier's fold: made once, copied into each
    // fold's cache.
    std::vector<data::Mask> predicted;
    return app::run_cross_validation(settings, task, dataset, [&](data::SampleCache& cache, int) {
      if (predict_masks && !predicted.empty()) {
        for (size_t i = 0; i < cache.count(); ++i) cache.set_mask(i, predicted[i]);
      } else if (predict_masks) {
        predict_masks(cache);
        for (size_t i = 0; i < cache.count(); ++i) predicted.push_back(cache.mask(i));
      }
      to_training_view(cache);
    });
  }
  return app::run_training(settings, task, dataset, [&](data::SampleCache& cache) {
    if (predict_masks) predict_masks(cache);
    to_training_view(cache);
  });
}

}  // namespace

int main(int argc, char** argv) {
  sono::app::distributed::Session mpi;  // joins the job when mpirun started this process
  return mpi.exit(sono::app::run_tool("cls_train", [&] { return cls_train(argc, argv); }));
}
