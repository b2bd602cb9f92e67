// seg_train: trains DeepLabV3+ (MiT or ResNet encoder) to segment lesions; loss BCE + soft Dice,
// the best epoch picked by validation Dice over all images (an empty mask predicted empty
// counts 1) unless the last is kept.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <optional>

#include "models/deeplabv3plus.h"
#include "models/unet.h"
#include "models/registry.h"
#include "tensor/atomic_file.h"
#include "tensor/ops.h"
#include "tools/app/checkpoint.h"
#include "tools/app/csv_table.h"
#include "tools/app/cross_validation.h"
#include "tools/app/post_training.h"
#include "tools/app/runtime.h"
#include "tools/app/distributed.h"
#include "tools/app/inference.h"
#include "tools/app/training.h"
#include "tools/data/calibration.h"
#include "tools/data/dataset.h"
#include "tools/data/metrics.h"

namespace {

using namespace sono;

// The malignancy channel's loss (--malignancy-map): binary cross-entropy of each lesion pixel
// against its scan's class (1: malignant), averaged over the batch's lesion pixels, so that
// scans without a lesion teach it nothing.
Tensor malignancy_loss(const Tensor& logits, const Tensor& masks, const Tensor& malignant) {
  Tensor per_pixel = sub(softplus(logits), mul(logits, malignant));  // BCE with logits, stable form
  return div(sum(mul(per_pixel, masks)), add(sum(masks), 1.0));
}

// --malignancy-map: the second output channel learns to tell the lesions of the dataset's
// malignant class from the others', its loss weighted beside the lesion channel's.
struct MalignancyChannel {
  int64_t malignant_label = 0;
  double weight = 1;
};

class SegmentationTask : public app::TrainingTask {
 public:
  // Without a malignancy channel: the lesion channel alone.
  explicit SegmentationTask(std::optional<MalignancyChannel> malignancy) : malignancy_(malignancy) {}

  models::Task task() const override { return models::Task::segmentation; }
  data::InputKind input() const override { return data::InputKind::rgb; }
  std::vector<std::string> class_names(const data::Dataset&) const override {
    if (malignancy_) return {app::ModelCard::kLesionOutput, app::ModelCard::kMalignancyOutput};
    return {app::ModelCard::kLesionOutput};
  }
  Tensor loss(const Tensor& logits, const data::Batch& batch) const override {
    Tensor lesion = app::lesion_channel(logits);
    Tensor loss = add(bce_with_logits(lesion, batch.masks), soft_dice_loss(lesion, batch.masks));
    if (!malignancy_) return loss;
    Tensor malignancy = malignancy_loss(logits.slice(3, 1, 2), batch.masks, malignant(batch).to(logits.device()));
    return add(loss, mul(malignancy, malignancy_->weight));
  }
  void reset_metrics() override {
    metrics_ = {};
    malignancy_scores_.clear();
    malignant_truth_.clear();
  }
  void add_metrics(const Tensor& logits, const data::Batch& batch) override {
    metrics_.add_batch(app::lesion_channel(logits), batch.masks);
    if (malignancy_) add_malignancy_scores(logits, batch);
  }
  std::vector<std::string> metric_columns() const override {
    std::vector<std::string> columns{"val_dice",        "val_iou",           "val_lesion_dice", "val_lesion_iou",
                                     "val_lesions_found", "val_found_dice", "val_empty_kept"};
    if (malignancy_) columns.push_back("val_malignancy_auroc");
    return columns;
  }
  std::vector<double> metric_values() const override {
    std::vector<double> values{metrics_.dice(),          metrics_.iou(),          metrics_.lesion_dice(),
                               metrics_.lesion_iou(),    metrics_.lesions_found(), metrics_.found_lesion_dice(),
                               metrics_.empty_kept_empty()};
    if (malignancy_) values.push_back(data::auroc(malignancy_scores_, malignant_truth_));
    return values;
  }
  std::string best_metric() const override { return "val_dice"; }
  void after_training(const app::TrainSettings& settings, data::Loader& val) override {
    if (settings.card_extra.count("lesion_view")) return;  // a refiner: see --empty-below
    app::fit_empty_threshold(settings, val);
  }
  void add_out_of_fold(const Tensor& logits, const Tensor& uncalibrated, const data::Batch& batch) override {
    const std::vector<data::ImageSegmentation> images = data::image_segmentations(
        app::lesion_channel(logits), app::lesion_channel(uncalibrated), batch.masks);
    std::vector<std::optional<double>> malignancy(images.size());
    if (malignancy_) malignancy = malignancy_over_lesion(logits, batch);
    for (size_t i = 0; i < images.size(); ++i) out_of_fold_.push_back({batch.samples[i], images[i], malignancy[i]});
  }
  // Which scans the cross-validation's figures come from, one row each, so that the lesions
  // missed and the scans marked wrongly can be found and looked at.
  void write_out_of_fold(const std::string& log_dir, const data::Dataset& dataset) const override {
    const auto path = std::filesystem::path(log_dir) / "out_of_fold.csv";
    std::vector<std::string> header = {"image",           "class",      "dice",           "iou",
                                       "lesion_found",    "predicted_share", "true_share", "peak_probability"};
    if (malignancy_) header.push_back("malignancy");
    std::string csv = app::csv_row(header);
    for (const auto& [sample, image, malignancy] : out_of_fold_) {
      const char* found = image.target_share == 0 ? "" : image.overlap.dice > 0 ? "1" : "0";  // lesion-free: blank
      std::vector<std::string> row = {dataset.samples[sample].name,
                                      dataset.classes[dataset.samples[sample].label],
                                      app::csv_number(image.overlap.dice),
                                      app::csv_number(image.overlap.iou),
                                      found,
                                      app::csv_number(image.predicted_share),
                                      app::csv_number(image.target_share),
                                      app::csv_number(image.peak_probability)};
      if (malignancy_) row.push_back(malignancy ? app::csv_number(*malignancy) : "");
      csv += app::csv_row(row);
    }
    write_file_atomic(path, csv);
    std::cout << "per image, out of fold: " << path.string() << "\n";
  }

 private:
  // [B, 1, 1, 1]: 1 for the batch's malignant scans.
  Tensor malignant(const data::Batch& batch) const {
    std::vector<double> values;
    for (int64_t label : batch.labels.to_labels()) values.push_back(label == malignancy_->malignant_label ? 1 : 0);
    return Tensor::from_vector(values, {static_cast<int64_t>(values.size()), 1, 1, 1});
  }
  // Each scan's mean malignancy probability over its true lesion (none for a lesion-free scan):
  // what the channel knows, apart from where the lesion channel puts the outline.
  static std::vector<std::optional<double>> malignancy_over_lesion(const Tensor& logits, const data::Batch& batch) {
    const std::vector<double> p = sigmoid(logits.slice(3, 1, 2)).to_vector(), mask = batch.masks.to_vector();
    const auto images = static_cast<size_t>(logits.size(0));
    const size_t pixels = p.size() / images;
    std::vector<std::optional<double>> scores(images);
    for (size_t i = 0; i < images; ++i) {
      double inside = 0, area = 0;
      for (size_t j = i * pixels; j < (i + 1) * pixels; ++j) inside += p[j] * mask[j], area += mask[j];
      if (area > 0) scores[i] = inside / area;
    }
    return scores;
  }
  void add_malignancy_scores(const Tensor& logits, const data::Batch& batch) {
    const std::vector<std::optional<double>> scores = malignancy_over_lesion(logits, batch);
    const std::vector<int64_t> labels = batch.labels.to_labels();
    for (size_t i = 0; i < labels.size(); ++i) {
      if (!scores[i]) continue;
      malignancy_scores_.push_back(*scores[i]);
      malignant_truth_.push_back(labels[i] == malignancy_->malignant_label);
    }
  }

  struct OutOfFoldRow {
    size_t sample;  // index in the dataset
    data::ImageSegmentation figures;
    std::optional<double> malignancy;  // over the true lesion, with --malignancy-map
  };

  std::optional<MalignancyChannel> malignancy_;
  data::SegmentationMetrics metrics_;
  std::vector<OutOfFoldRow> out_of_fold_;
  std::vector<double> malignancy_scores_;
  std::vector<bool> malignant_truth_;
};

// --malignancy-map and --malignancy-weight: the malignant class is the dataset's "malignant"
// folder (BUSI's); the weight is recorded for --resume.
std::optional<MalignancyChannel> read_malignancy_channel(const app::Cli& cli, const data::Dataset& dataset,
                                                         app::TrainSettings& settings) {
  const double weight = cli.real("malignancy-weight");
  SONO_CHECK(weight > 0 && weight <= 100, "--malignancy-weight ", cli.str("malignancy-weight"),
             ": must be above 0 and at most 100");
  if (!cli.is_set("malignancy-map")) {
    SONO_CHECK(!cli.is_set("malignancy-weight"), "--malignancy-weight: only with --malignancy-map");
    return std::nullopt;
  }
  auto it = std::find(dataset.classes.begin(), dataset.classes.end(), "malignant");
  SONO_CHECK(it != dataset.classes.end(), "--malignancy-map: ", cli.str("images-dir"),
             " has no \"malignant\" class folder to learn the malignancy of lesions from");
  settings.tool_arguments["--malignancy-map"] = cli.str("malignancy-weight");
  return MalignancyChannel{static_cast<int64_t>(it - dataset.classes.begin()), weight};
}

// --decoder-channels: a U-Net's, smp's default cut to the encoder depth when not given.
void read_decoder_channels(const app::Cli& cli, app::TrainSettings& settings) {
  const std::string text = cli.str("decoder-channels");
  if (!models::is_unet(settings.arch)) {
    SONO_CHECK(text.empty(), "--decoder-channels: only a U-Net (--arch unet_resnet18 ...) has them; ", settings.arch,
               " is DeepLabV3+");
    return;
  }
  const auto channels = text.empty() ? models::smp_unet_decoder_channels(settings.encoder_depth)
                                     : app::parse_decoder_channels(text, settings.encoder_depth);
  SONO_CHECK(channels, "--decoder-channels '", text, "': ", app::kDecoderChannelsExpected);
  settings.decoder_channels = *channels;
  settings.tool_arguments["--decoder-channels"] = app::decoder_channels_text(settings.decoder_channels);
}

int seg_train(int argc, char** argv) {
  app::Cli cli("seg_train", "Train a lesion segmentation model (DeepLabV3+ on a MiT or ResNet encoder, or U-Net "
                            "on a ResNet: --arch unet_resnet18 ...).");
  app::add_training_options(cli, {.arch = "mit_b2", .batch_size = 4, .weight_decay = 1e-2, .drop_path = 0.1});
  cli.option("encoder-depth", "5",
             "ResNet encoders: stages built (smp's encoder_depth): 5 all; 4 ends at layer3, which the ASPP "
             "then reads (a ResNet-18 segmenter of 3.6 M parameters instead of 12.3 M); 3 ends at layer2");
  cli.option("atrous-rates", app::atrous_rates_text(models::kSmpAtrousRates),
             "the ASPP's three dilations (smp's decoder_atrous_rates), made for a 32x32 feature map (512 px at "
             "output stride 16); at 128 px the map is 8x8, where rates as 2,4,6 still see beyond the centre");
  cli.option("decoder-channels", "",
             "U-Net (--arch unet_resnet18 ...): each decoder block's channels, deepest first, one per encoder "
             "stage (smp's decoder_channels); default smp's 256,128,64,32,16, the first --encoder-depth of them");
  cli.option("empty-below", "", "with --val-split 0: the card's empty-image threshold (a map whose highest lesion "
                                "probability is lower predicts no lesion), fitted elsewhere (e.g. a --folds run's); "
                                "a validation split fits it itself");
  cli.flag("malignancy-map",
           "a second output channel: how malignant each lesion pixel looks, trained on the lesions of the benign "
           "and malignant scans (the encoder learns what tells them apart, e.g. for cls_train --pretrained); "
           "predict and the classifier's masks use the lesion channel");
  cli.option("malignancy-weight", "1", "with --malignancy-map: the weight of its loss beside the lesion channel's");
  cli.option("lesion-view", "0",
             "a refining segmenter: train on the window around each mask's lesion (its bounding box grown by this "
             "times its side on each side, at least a quarter of the scan; a lesion-free scan stays whole), so "
             "that it outlines at several times the whole-scan resolution the lesion a first segmenter found. "
             "The checkpoint records it (0: the whole scan)");
  if (!cli.parse(argc, argv)) return 0;
  app::TrainSettings settings = app::read_training_options(cli, models::Task::segmentation);
  settings.encoder_depth = cli.integer("encoder-depth");
  SONO_CHECK(settings.encoder_depth >= 3 && settings.encoder_depth <= 5, "--encoder-depth ",
             settings.encoder_depth, ": must be 3, 4 or 5");
  SONO_CHECK(settings.encoder_depth == 5 || models::encoder_can_stop_early(settings.arch), "--encoder-depth ",
             settings.encoder_depth, ": only a ResNet encoder (--arch resnet18 ...) stops early; ", settings.arch,
             " is built whole");
  settings.tool_arguments["--encoder-depth"] = std::to_string(settings.encoder_depth);
  const std::string rates = cli.str("atrous-rates");
  const auto parsed_rates = app::parse_atrous_rates(rates);
  SONO_CHECK(parsed_rates, "--atrous-rates '", rates, "': ", app::kAtrousRatesExpected);
  settings.atrous_rates = *parsed_rates;
  settings.tool_arguments["--atrous-rates"] = app::atrous_rates_text(settings.atrous_rates);
  read_decoder_channels(cli, settings);
  const double lesion_view = app::read_lesion_view(cli, settings);
  if (lesion_view > 0) settings.tool_arguments["--lesion-view"] = app::run_argument_number(lesion_view);
  // A refiner's map is pasted as it comes (refine_lesions): whether there is a lesion is the first
  // segmenter's call, so an empty-image threshold would be dead weight on its card.
  SONO_CHECK(lesion_view == 0 || cli.str("empty-below").empty(),
             "--empty-below: a refiner (--lesion-view) has no empty-image threshold; the first segmenter's decides");
  if (lesion_view == 0) app::read_given_calibration(cli, "empty-below", "empty_below", 0.5, 0.999, settings);
  data::Dataset dataset = data::scan_dataset(settings.images_dir, settings.masks_dir);
  SegmentationTask task(read_malignancy_channel(cli, dataset, settings));
  if (settings.recipe_options.folds)
    return app::run_cross_validation(settings, task, dataset, [&](data::SampleCache& cache, int) {
      app::frame_lesions(cache, settings, lesion_view);
    });
  return app::run_training(settings, task, dataset,
                           [&](data::SampleCache& cache) { app::frame_lesions(cache, settings, lesion_view); });
}

}  // namespace

int main(int argc, char** argv) {
  sono::app::distributed::Session mpi;  // joins the job when mpirun started this process
  return mpi.exit(sono::app::run_tool("seg_train", [&] { return seg_train(argc, argv); }));
}
