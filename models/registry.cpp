#include "models/registry.h"

#include <algorithm>

namespace sono::models {

const char* task_name(Task task) {
  return task == Task::segmentation ? "segmentation" : "classification";
}

std::optional<Task> task_from_name(const std::string& name) {
  for (Task task : {Task::segmentation, Task::classification})
    if (name == task_name(task)) return task;
  return std::nullopt;
}

std::optional<Task> task_from_flag(const std::string& value) {
  const std::optional<Task> task = task_from_name(value);
  SONO_CHECK(value.empty() || task, "--task ", value, ": expected segmentation or classification");
  return task;
}

const std::vector<ModelEntry>& all_models() {
  static const std::vector<ModelEntry> entries = [] {
    std::vector<ModelEntry> all = deeplab_variants();
    for (auto& family : {unet_variants(), convnext_variants(), resnet_classifier_variants()})
      all.insert(all.end(), family.begin(), family.end());
    return all;
  }();
  return entries;
}

const ModelEntry& find_model(const std::string& name, std::optional<Task> task) {
  std::vector<std::string> names;  // known for the task, each once
  std::vector<const ModelEntry*> found;
  for (const ModelEntry& e : all_models()) {
    if (task && e.task != *task) continue;
    if (e.name == name) found.push_back(&e);
    if (std::find(names.begin(), names.end(), e.name) == names.end()) names.push_back(e.name);
  }
  const std::string which = task ? std::string(" for ") + task_name(*task) : "";
  std::string known;
  for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
  if (found.empty()) fail("unknown architecture '", name, "'", which, " (known: ", known, ")");
  SONO_CHECK(found.size() == 1, "architecture '", name, "' is both a segmentation and a classification model: give the task");
  return *found.front();
}

std::shared_ptr<nn::UnaryModule> create_model(const std::string& name, const ModelOptions& options,
                                              std::optional<Task> task) {
  return find_model(name, task).build(options);
}

namespace {

nn::Module& backbone_of(nn::Module& model, const ModelEntry& entry) {
  return entry.backbone.module.empty() ? model : model.child(entry.backbone.module);
}

}  // namespace

void load_backbone(nn::Module& model, const ModelEntry& entry, const std::string& path) {
  load_pretrained(backbone_of(model, entry), path, entry.backbone.layout);
}

void load_backbone(nn::Module& model, const ModelEntry& entry, nn::StateDict weights) {
  load_pretrained(backbone_of(model, entry), std::move(weights), entry.backbone.layout);
}

}  // namespace sono::models
