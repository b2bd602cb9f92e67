#include "models/registry.h"

namespace sono::models {

const char* task_name(Task task) {
  return task == Task::segmentation ? "segmentation" : "classification";
}

const std::vector<ModelEntry>& all_models() {
  static const std::vector<ModelEntry> entries = [] {
    std::vector<ModelEntry> all = deeplab_variants();
    for (auto& e : convnext_variants()) all.push_back(e);
    return all;
  }();
  return entries;
}

const ModelEntry& find_model(const std::string& name) {
  std::string known;
  for (const ModelEntry& e : all_models()) {
    if (e.name == name) return e;
    known += (known.empty() ? "" : ", ") + e.name;
  }
  fail("unknown architecture '", name, "' (known: ", known, ")");
}

std::shared_ptr<nn::UnaryModule> create_model(const std::string& name, const ModelOptions& options) {
  return find_model(name).build(options);
}

void load_backbone(nn::Module& model, const ModelEntry& entry, const std::string& path) {
  nn::Module& target = entry.backbone.module.empty() ? model : model.child(entry.backbone.module);
  load_pretrained(target, path, entry.backbone.layout);
}

}  // namespace sono::models
