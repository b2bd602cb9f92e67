#pragma once
// Models by name: "mit_b0".."mit_b5" and "resnet18".."resnet152" build DeepLabV3+ on that
// encoder (as segmentation_models_pytorch), "convnext_atto".."convnext_large" build timm's ConvNeXt.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"
#include "models/pretrained.h"

namespace sono::models {

enum class Task { segmentation, classification };
const char* task_name(Task task);  // "segmentation", "classification": the checkpoint card's words

struct ModelOptions {
  int64_t in_channels = 3;
  int64_t num_classes = 1;
  double drop_path_rate = 0.0;  // stochastic depth (ConvNeXt, MiT)
};

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

const std::vector<ModelEntry>& all_models();
const ModelEntry& find_model(const std::string& name);  // clear error listing known names
std::shared_ptr<nn::UnaryModule> create_model(const std::string& name, const ModelOptions& options);
// Fills `model`, built from `entry`, with the backbone checkpoint at `path` (load_pretrained).
void load_backbone(nn::Module& model, const ModelEntry& entry, const std::string& path);

}  // namespace sono::models
