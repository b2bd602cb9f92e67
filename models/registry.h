#pragma once
// Models by task and name. Segmentation: "mit_b0".."mit_b5" and "resnet18".."resnet152" build
// DeepLabV3+ on that encoder, "unet_resnet18".."unet_resnet152" U-Net on it (as
// segmentation_models_pytorch). Classification:
// "convnext_atto".."convnext_large" and "resnet18".."resnet152" build timm's model of that name.
#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "layers/module.h"
#include "models/pretrained.h"

namespace sono::models {

enum class Task { segmentation, classification };
const char* task_name(Task task);  // "segmentation", "classification": the checkpoint card's words
std::optional<Task> task_from_name(const std::string& name);  // task_name's inverse; nullopt otherwise
// A --task flag's value: nullopt when empty, else task_from_name's task; any other word fails.
std::optional<Task> task_from_flag(const std::string& value);

// smp's decoder_atrous_rates, made for a 32x32 feature map (512 px at output stride 16): on a
// smaller map the taps of the larger rates fall in the padding.
inline constexpr std::array<int64_t, 3> kSmpAtrousRates{12, 24, 36};

struct ModelOptions {
  int64_t in_channels = 3;
  int64_t num_classes = 1;
  double drop_path_rate = 0.0;  // stochastic depth (ConvNeXt, MiT)
  int64_t encoder_depth = 5;    // DeepLabV3+ on a ResNet: smp's encoder_depth (3..5)
  std::array<int64_t, 3> atrous_rates = kSmpAtrousRates;  // DeepLabV3+'s ASPP dilations
  // U-Net's decoder_channels, one per encoder stage, deepest first; empty: smp's default.
  // (An explicit empty default: GCC 12 asks aggregate initialisers for members without one.)
  std::vector<int64_t> decoder_channels = {};
};

// U-Nets are named by their encoder after this prefix ("unet_resnet18"); DeepLabV3+ by the encoder alone.
inline constexpr std::string_view kUnetPrefix = "unet_";
inline bool is_unet(const std::string& arch) { return arch.starts_with(kUnetPrefix); }
// The encoder a segmentation --arch names: "unet_resnet18" -> "resnet18"; DeepLabV3+'s as given.
inline std::string segmentation_encoder(const std::string& arch) {
  return is_unet(arch) ? arch.substr(kUnetPrefix.size()) : arch;
}

// Where backbone weights (timm's or smp's ImageNet checkpoints, or `pretrain`'s output) load.
struct BackboneWeights {
  std::string module;       // the child module they fill ("" = the whole model), e.g. "encoder"
  PretrainedLayout layout;  // its keys, relative to that module
};

struct ModelEntry {
  std::string name;
  Task task;
  std::function<std::shared_ptr<nn::UnaryModule>(const ModelOptions&)> build;
  BackboneWeights backbone;
};

// Each family lists its variants (defined beside the family's code).
std::vector<ModelEntry> convnext_variants();
std::vector<ModelEntry> deeplab_variants();
std::vector<ModelEntry> unet_variants();
std::vector<ModelEntry> resnet_classifier_variants();

const std::vector<ModelEntry>& all_models();
// The model called `name` for `task`; without a task the name must be one task's only (a name
// both tasks use, e.g. resnet18, is an error asking for the task). Unknown names fail listing
// the known ones.
const ModelEntry& find_model(const std::string& name, std::optional<Task> task = std::nullopt);
std::shared_ptr<nn::UnaryModule> create_model(const std::string& name, const ModelOptions& options,
                                              std::optional<Task> task = std::nullopt);
// Fills `model`, built from `entry`, with the backbone checkpoint at `path` (load_pretrained).
void load_backbone(nn::Module& model, const ModelEntry& entry, const std::string& path);
void load_backbone(nn::Module& model, const ModelEntry& entry, nn::StateDict weights);

}  // namespace sono::models
