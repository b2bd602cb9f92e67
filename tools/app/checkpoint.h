#pragma once
// Checkpoints are safetensors files whose __metadata__ describes the model (the "card"), so
// predict rebuilds the network from the path alone.
#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers/module.h"
#include "models/registry.h"
#include "tools/data/model_input.h"
#include "tools/data/stacking.h"

namespace sono::app {

// The largest --img-size, and the largest a card may give: the activations of a model at this
// side already take gigabytes.
inline constexpr int64_t kMaxImgSize = 2048;
// The most classes a classification card may list (ImageNet's 1000).
inline constexpr int64_t kMaxClasses = 1000;

// "12,24,36" (seg_train's --atrous-rates and the card's atrous_rates): kAtrousRatesExpected, or
// nothing.
inline constexpr const char* kAtrousRatesExpected = "expected three whole numbers from 1 to 64, as 12,24,36";
std::optional<std::array<int64_t, 3>> parse_atrous_rates(const std::string& text);
std::string atrous_rates_text(const std::array<int64_t, 3>& rates);
// "128,64,32,16" (seg_train's --decoder-channels and a U-Net card's decoder_channels):
// kDecoderChannelsExpected, or nothing.
inline constexpr const char* kDecoderChannelsExpected =
    "expected one whole number from 1 to 4096 per encoder stage (--encoder-depth of them), as 128,64,32,16";
std::optional<std::vector<int64_t>> parse_decoder_channels(const std::string& text, int64_t encoder_depth);
std::string decoder_channels_text(const std::vector<int64_t>& channels);

// A classification card's "stacking" (evaluate --fit-stacking writes it, cls_train --stacking
// puts it on the card): {"classes": [...], "scores": ["malignancy"], "weights": [[...] per class],
// "bias": [...]}, each weight row a weight per class log-probability, then one for the malignancy
// score's logit. The classes are named so that a stacking is never applied to another order.
inline constexpr const char* kStackingExpected =
    "expected {\"classes\": [the classifier's classes], \"scores\": [\"malignancy\"], \"weights\": [one row per "
    "class of (classes + 1) finite numbers], \"bias\": [one finite number per class]}";
std::optional<data::Stacking> parse_stacking(const std::string& text, const std::vector<std::string>& classes);
std::string stacking_text(const data::Stacking& stacking, const std::vector<std::string>& classes);

struct ModelCard {
  static constexpr const char* kLesionOutput = "lesion";
  static constexpr const char* kMalignancyOutput = "malignancy";
  static constexpr const char* kLesionProbabilityChannel = "probability";  // "mask_channel"
  // The class of scans without a lesion (BUSI's folder name): every other class has one.
  static constexpr const char* kLesionFreeClass = "normal";
  std::string arch;                 // registry name, e.g. mit_b2, convnext_base
  models::Task task = models::Task::classification;
  // Class names (classification) or a segmenter's output channels: kLesionOutput, then
  // kMalignancyOutput where seg_train --malignancy-map trained one.
  std::vector<std::string> classes;
  int64_t in_channels = 3;
  // A classifier trained by cls_train --mask-channel probability (card key "mask_channel"): it
  // reads the segmenter's lesion probability where other classifiers read its mask.
  bool reads_lesion_probability = false;
  int64_t img_size = 256;
  // A segmenter's smp encoder_depth; cards without the key (before it existed) are depth 5.
  int64_t encoder_depth = 5;
  // A segmenter's ASPP rates; cards without the key (before it existed) have smp's.
  std::array<int64_t, 3> atrous_rates = models::kSmpAtrousRates;
  // A U-Net's decoder channels (written for U-Nets only).
  std::vector<int64_t> decoder_channels;
  data::Normalisation normalisation = data::kImagenet;  // what the model's inputs were
  // A classifier whose probabilities are stacked with the segmenter's malignancy score.
  std::optional<data::Stacking> stacking;
  std::map<std::string, std::string> extra;  // epoch, best metric, ...

  std::map<std::string, std::string> to_metadata() const;
  // Throws naming the file and the key when a value is missing, malformed or outside what
  // the architecture and the tools accept: nothing on the card is trusted before the model
  // is built from it.
  static ModelCard from_metadata(const std::string& path, const std::map<std::string, std::string>& meta);
  int64_t num_classes() const;
  // A segmenter trained with seg_train --malignancy-map: its output has the malignancy channel.
  bool has_malignancy_channel() const;
  // What the model reads: RGB (a segmenter), RGB and a mask, or RGB and the lesion probability.
  data::InputKind input() const;
};

struct LoadedModel {
  std::shared_ptr<nn::UnaryModule> model;
  ModelCard card;
};

std::shared_ptr<nn::UnaryModule> build_model(const ModelCard& card);
// Atomic and exclusive (see tensor/atomic_file.h).
void save_checkpoint(const std::string& path, const nn::Module& model, const ModelCard& card,
                     const nn::StateDict& extra_tensors = {});
// Refuses a file of the other task with a message naming the file; no task accepts either.
LoadedModel load_checkpoint(const std::string& path, std::optional<models::Task> expected_task = std::nullopt);
// load_checkpoint, then the model on `device` with its BatchNorms folded into their convs
// (nn::Module::fuse_for_inference) and its parameters frozen: for predicting only, never for
// training or saving.
LoadedModel load_for_inference(const std::string& path, models::Task task, Device device);

}  // namespace sono::app
