// cls_train: trains a 4-channel classifier (ConvNeXt on RGB + lesion mask) on the classes
// named by the data's folders; cross-entropy loss, best checkpoint by validation macro-F1.
// The mask channel is the ground truth, or with --seg-model the masks a segmentation
// checkpoint predicts, as the classifier will see them in predict.
#include <iomanip>
#include <iostream>

#include "models/registry.h"
#include "tensor/ops.h"
#include "tools/app/cross_validation.h"
#include "tools/app/inference.h"
#include "tools/app/post_training.h"
#include "tools/app/runtime.h"
#include "tools/app/distributed.h"
#include "tools/app/training.h"
#include "tools/data/dataset.h"
#include "tensor/atomic_file.h"
#include "tools/data/calibration.h"
#include "tools/data/metrics.h"

namespace {

using namespace sono;

class ClassificationTask : public app::TrainingTask {
 public:
  ClassificationTask(std::vector<std::string> classes, Tensor class_weights, double label_smoothing)
      : classes_(std::move(classes)), class_weights_(std::move(class_weights)),
        label_smoothing_(label_smoothing), metrics_(static_cast<int>(classes_.size())),
        malignant_(static_cast<int>(std::find(classes_.begin(), classes_.end(), "malignant") - classes_.begin())) {}

  models::Task task() const override { return models::Task::classification; }
  data::InputKind input() const override { return data::InputKind::rgb_mask; }
  std::vector<std::string> class_names(const data::Dataset&) const override { return classes_; }
  Tensor loss(const Tensor& logits, const data::Batch& batch) const override {
    if (class_weights_.defined() && class_weights_.device() != logits.device())
      class_weights_ = class_weights_.to(logits.device());
    return cross_entropy(logits, batch.labels, class_weights_, label_smoothing_);
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
  void add_out_of_fold(const Tensor& logits, const data::Batch& batch) override {
    out_of_fold_.add_batch(softmax(logits, -1), batch.labels);
    out_of_fold_metrics_.add_batch(logits, batch.labels);
  }
  void write_out_of_fold(const std::string& log_dir) const override {
    auto path = std::filesystem::path(log_dir) / "reliability.svg";
    std::ostringstream title;
    title << std::fixed << std::setprecision(3) << "out-of-fold calibration, " << out_of_fold_.count()
          << " images: ECE " << out_of_fold_.ece();
    write_file_atomic(path, data::reliability_svg(out_of_fold_.bins(), title.str()));
    std::cout << title.str() << " (" << path.string() << ")\n" << out_of_fold_metrics_.confusion_table(classes_);
  }

 private:
  bool has_malignant() const { return malignant_ < static_cast<int>(classes_.size()); }

  std::vector<std::string> classes_;
  mutable Tensor class_weights_;  // moved to the logits' device on first use
  double label_smoothing_;
  data::ClassificationMetrics metrics_;
  int malignant_;
  data::ProbabilityRecord probabilities_, out_of_fold_;
  data::ClassificationMetrics out_of_fold_metrics_{static_cast<int>(classes_.size())};
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

// Replaces every cached mask by the segmentation checkpoint's prediction on the cached image.
void use_predicted_masks(data::SampleCache& cache, const std::string& seg_model, Device device) {
  app::LoadedModel seg = app::load_checkpoint(seg_model, models::Task::segmentation);
  seg.model->to(device);
  data::SegmentationMetrics agreement;
  for (size_t i = 0; i < cache.count(); ++i) {
    data::Mask predicted = app::segment(seg, cache.image(i), cache.size(), cache.size(), device);
    agreement.add(predicted, cache.mask(i));
    cache.set_mask(i, std::move(predicted));
  }
  std::cout << std::fixed << std::setprecision(4) << "masks: predicted by " << seg_model << " ("
            << seg.card.arch << "); Dice against the ground truth " << agreement.dice() << " (lesion images "
            << agreement.lesion_dice() << ")\n" << std::defaultfloat;
}

int cls_train(int argc, char** argv) {
  app::Cli cli("cls_train", "Train a lesion classifier on image + lesion mask (ConvNeXt, 4 input channels).");
  app::add_training_options(cli, {.arch = "convnext_base", .batch_size = 16, .weight_decay = 5e-2, .drop_path = 0.1});
  cli.option("seg-model", "", "train on the masks this segmentation checkpoint predicts (default: ground truth);"
                              " with --folds, {fold} in the name stands for the fold's number")
      .option("label-smoothing", "0.1", "cross-entropy label smoothing")
      .option("class-weights", "none", "none, or balanced: loss weights n / (classes * n_class)");
  if (!cli.parse(argc, argv)) return 0;
  app::TrainSettings settings = app::read_training_options(cli);
  SONO_CHECK(models::find_model(settings.arch).task == models::Task::classification, "--arch ",
             settings.arch, ": not a classification model (convnext_atto .. convnext_large)");
  std::string seg_model = cli.str("seg-model");
  const int folds = settings.recipe_options.folds;
  SONO_CHECK(folds || seg_model.find("{fold}") == std::string::npos, "--seg-model ", seg_model,
             ": {fold} stands for a fold's number, which needs --folds");
  // A fold's classifier sees the masks of the segmenter that did not train on the fold.
  auto fold_seg_model = [&](int fold) {
    return seg_model.find("{fold}") == std::string::npos ? seg_model : app::fold_path(seg_model, fold);
  };
  for (int fold = 0; fold < std::max(folds, 1) && !seg_model.empty(); ++fold) {
    SONO_CHECK(std::filesystem::is_regular_file(fold_seg_model(fold)), fold_seg_model(fold),
               ": --seg-model file not found");
    app::check_outputs({{fold_seg_model(fold), "--seg-model"}},
                       {{settings.save_path, "--save-path"},
                        {app::resume_state_path(settings.save_path), "the resume state of --save-path"}},
                       true);
  }
  const double label_smoothing = cli.real("label-smoothing");
  SONO_CHECK(label_smoothing >= 0 && label_smoothing <= 1, "--label-smoothing ", cli.str("label-smoothing"),
             ": must be from 0 to 1");
  data::Dataset dataset = data::scan_dataset(settings.images_dir, settings.masks_dir);
  SONO_CHECK(dataset.classes.size() >= 2, settings.images_dir,
             ": classification needs class subfolders (images/CLASS/ or BUSI's CLASS/), found ",
             dataset.classes.size() == 1 ? "one class" : "no class folders");
  settings.tool_arguments = {{"--seg-model", seg_model.empty() ? "ground truth" : seg_model},
                             {"--label-smoothing", app::run_argument_number(label_smoothing)},
                             {"--class-weights", cli.str("class-weights")}};
  Tensor weights = class_weights(cli.str("class-weights"), dataset);
  ClassificationTask task(dataset.classes, weights, label_smoothing);
  if (folds) {
    std::function<void(data::SampleCache&, int)> prepare_fold;
    if (!seg_model.empty())
      prepare_fold = [&](data::SampleCache& cache, int fold) {
        use_predicted_masks(cache, fold_seg_model(fold), settings.device);
      };
    return app::run_cross_validation(settings, task, dataset, prepare_fold);
  }
  std::function<void(data::SampleCache&)> prepare;
  if (!seg_model.empty())
    prepare = [&](data::SampleCache& cache) { use_predicted_masks(cache, seg_model, settings.device); };
  return app::run_training(settings, task, dataset, prepare);
}

}  // namespace

int main(int argc, char** argv) {
  sono::app::distributed::Session mpi;  // joins the job when mpirun started this process
  return mpi.exit(sono::app::run_tool("cls_train", [&] { return cls_train(argc, argv); }));
}
