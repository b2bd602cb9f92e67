#pragma once
// Models by name: "mit_b0".."mit_b5" build DeepLabV3+ on a MiT encoder (as
// segmentation_models_pytorch), "convnext_atto".."convnext_large" build timm's ConvNeXt.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"

namespace sono::models {

enum class Task { segmentation, classification };

struct ModelOptions {
  int64_t in_channels = 3;
  int64_t num_classes = 1;
  double drop_path_rate = 0.0;  // stochastic depth (ConvNeXt, MiT)
};

struct ModelEntry {
  std::string name;
  Task task;
  std::function<std::shared_ptr<nn::UnaryModule>(const ModelOptions&)> build;
};

// Each family lists its variants (defined beside the family's code).
std::vector<ModelEntry> convnext_variants();
std::vector<ModelEntry> deeplab_mit_variants();

const std::vector<ModelEntry>& all_models();
const ModelEntry& find_model(const std::string& name);  // clear error listing known names
std::shared_ptr<nn::UnaryModule> create_model(const std::string& name, const ModelOptions& options);

}  // namespace sono::models
