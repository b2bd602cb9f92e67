#include "tools/app/checkpoint.h"

#include <nlohmann/json.hpp>

#include "layers/safetensors.h"

namespace sono::app {

using json = nlohmann::json;

std::map<std::string, std::string> ModelCard::to_metadata() const {
  std::map<std::string, std::string> m = extra;
  m["format"] = "sono-checkpoint-1";
  m["arch"] = arch;
  m["task"] = task;
  m["classes"] = json(classes).dump();
  m["in_channels"] = std::to_string(in_channels);
  m["num_classes"] = std::to_string(num_classes());
  m["img_size"] = std::to_string(img_size);
  m["normalisation"] = json{{"mean", mean}, {"std", std}}.dump();
  return m;
}

int64_t ModelCard::num_classes() const {
  return task == "segmentation" ? 1 : static_cast<int64_t>(classes.size());
}

ModelCard ModelCard::from_metadata(const std::string& path, const std::map<std::string, std::string>& meta) {
  auto get = [&](const char* key) {
    auto it = meta.find(key);
    SONO_CHECK(it != meta.end(), path, ": not a sono checkpoint (metadata has no '", key, "')");
    return it->second;
  };
  ModelCard c;
  try {
    c.arch = get("arch");
    c.task = get("task");
    c.classes = json::parse(get("classes")).get<std::vector<std::string>>();
    c.in_channels = std::stoll(get("in_channels"));
    c.img_size = std::stoll(get("img_size"));
    json norm = json::parse(get("normalisation"));
    c.mean = norm.at("mean").get<std::vector<double>>();
    c.std = norm.at("std").get<std::vector<double>>();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(path, ": malformed checkpoint metadata (", e.what(), ")");
  }
  for (auto& [k, v] : meta)
    if (!c.to_metadata().count(k)) c.extra[k] = v;
  return c;
}

std::shared_ptr<nn::UnaryModule> build_model(const ModelCard& card) {
  models::ModelOptions opt;
  opt.in_channels = card.in_channels;
  opt.num_classes = card.num_classes();
  return models::create_model(card.arch, opt);
}

void save_checkpoint(const std::string& path, const nn::Module& model, const ModelCard& card,
                     const nn::StateDict& extra_tensors) {
  nn::StateDict all = model.state_dict();
  for (auto& [k, v] : extra_tensors) all[k] = v;
  nn::save_safetensors(path, all, card.to_metadata());
}

LoadedModel load_checkpoint(const std::string& path, const std::string& expected_task) {
  nn::SafetensorsFile file = nn::load_safetensors(path);
  ModelCard card = ModelCard::from_metadata(path, file.metadata);
  SONO_CHECK(expected_task.empty() || card.task == expected_task, path, ": is a ", card.task, " checkpoint (", card.arch,
             "), expected a ", expected_task, " one");
  auto model = build_model(card);
  nn::StateDict weights;
  for (auto& [k, v] : file.tensors)
    if (k.rfind("optimizer.", 0) != 0) weights[k] = v;  // resume state is not part of the model
  try {
    model->load_state_dict(weights);
  } catch (const Error& e) {
    fail(path, ": does not match its own architecture ", card.arch, ": ", e.what());
  }
  model->eval();
  return {model, card};
}

}  // namespace sono::app
