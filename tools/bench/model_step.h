#pragma once
// One training step (forward, loss, backward, optimiser step) or one inference (eval, no_grad)
// of a registry model on synthetic data: what model_bench times and launch_audit records.
#include <memory>
#include <string>
#include <vector>

#include "layers/optim.h"
#include "models/registry.h"
#include "tools/app/cli.h"

namespace sono::bench {

struct StepConfig {
  std::string model;
  std::optional<models::Task> task;  // for a name both tasks use
  int64_t size = 0, batch = 1, in_channels = 3, classes = 1;
  bool train = true;
  bool fused = false;  // inference as predict runs it (Module::fuse_for_inference, frozen)
  Device device = Device::cpu;
};

// --model, --task, --size, --batch, --mode, --fused, --in-channels, --classes; and the config they give.
void add_step_options(app::Cli& cli);
StepConfig parse_step_config(const app::Cli& cli, Device device);

class ModelStep {
 public:
  explicit ModelStep(const StepConfig& config);
  // Seconds spent in each of phases() during one step, each once the device has finished it.
  std::vector<double> run();
  const std::vector<std::string>& phases() const;
  int64_t num_parameters() const { return model_->num_parameters(); }

 private:
  StepConfig config_;
  const models::ModelEntry& entry_;
  std::shared_ptr<nn::UnaryModule> model_;
  Tensor images_;  // [N, S, S, in_channels]
  Tensor target_;  // segmentation: mask [N, S, S, 1] of 0/1; classification: int64 labels [N]
  std::unique_ptr<nn::AdamW> optimizer_;
};

}  // namespace sono::bench
