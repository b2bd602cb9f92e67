#pragma once
// Checkpoints are safetensors files whose __metadata__ describes the model (the "card"), so
// predict rebuilds the network from the path alone.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"
#include "models/registry.h"

namespace sono::app {

struct ModelCard {
  std::string arch;                 // registry name, e.g. mit_b2, convnext_base
  std::string task;                 // "segmentation" or "classification"
  std::vector<std::string> classes; // class names (classification) or {"lesion"}
  int64_t in_channels = 3;
  int64_t img_size = 256;
  std::vector<double> mean{0.485, 0.456, 0.406}, std{0.229, 0.224, 0.225};
  std::map<std::string, std::string> extra;  // epoch, best metric, ...

  std::map<std::string, std::string> to_metadata() const;
  static ModelCard from_metadata(const std::string& path, const std::map<std::string, std::string>& meta);
  int64_t num_classes() const;
};

struct LoadedModel {
  std::shared_ptr<nn::UnaryModule> model;
  ModelCard card;
};

std::shared_ptr<nn::UnaryModule> build_model(const ModelCard& card);
// Atomic and exclusive (see tensor/atomic_file.h).
void save_checkpoint(const std::string& path, const nn::Module& model, const ModelCard& card,
                     const nn::StateDict& extra_tensors = {});
// Refuses a file of the other task with a message naming the file; "" accepts either task.
LoadedModel load_checkpoint(const std::string& path, const std::string& expected_task);

}  // namespace sono::app
