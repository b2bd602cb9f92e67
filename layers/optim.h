#pragma once
// Optimisers with torch.optim semantics (Adam, AdamW), timm's weight-decay parameter groups,
// a cosine learning-rate schedule with linear warmup, and clipping by global gradient norm.
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "layers/module.h"
#include "tensor/backend.h"

namespace sono::nn {

// Parameters that share a weight decay. Unset: the optimiser's default.
struct ParamGroup {
  NamedTensors params;
  std::optional<double> weight_decay;
};

// As timm's param_groups_weight_decay: 1-D parameters (biases, norm weights), names ending in
// ".bias" and names in `no_weight_decay` get no decay; everything else gets `weight_decay`.
// Returns {no-decay group, decay group} in that order (timm's), skipping frozen parameters.
std::vector<ParamGroup> param_groups_weight_decay(const Module& model, double weight_decay,
                                                  const std::vector<std::string>& no_weight_decay = {});

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// Per-parameter moments; `step` counts this parameter's updates (torch keeps it per parameter
// too, so a parameter that had no grad for a while is bias-corrected by its own count).
struct AdamState {
  Tensor exp_avg, exp_avg_sq;
  int64_t step = 0;
};

// The Adam-family optimiser base over named parameter groups (the only family the tools use). Parameters without a grad are skipped and
// get no state, as in torch. Updates run under NoGradGuard, one backend adamw_multi_step per
// parameter group (one kernel launch on the CUDA backend).
class Optimizer {
 public:
  Optimizer(std::vector<ParamGroup> groups, AdamOptions options);
  virtual ~Optimizer() = default;

  void step();
  void zero_grad();
  double lr() const { return options_.lr; }
  void set_lr(double lr) { options_.lr = lr; }
  int64_t steps() const { return steps_; }  // step() calls so far
  const std::vector<ParamGroup>& groups() const { return groups_; }

  // For an exact --resume: "steps" (int64 scalar) and per parameter with state
  // "<name>.step" (int64 scalar), "<name>.exp_avg", "<name>.exp_avg_sq". Hyperparameters are not
  // saved: they come from the command line and the LR schedule (a function of steps()).
  // The moments alias the live state, as Module::state_dict does; save them before stepping.
  StateDict state_dict() const;
  // Strict: keys must name parameters of this optimiser with matching shapes; moments are
  // copied to each parameter's device and dtype.
  void load_state_dict(const StateDict& state);

  // ZeRO-1 (tools/app/distributed.h, --shard-optimizer): step() updates, and keeps moments for,
  // only the parameters `owns` names; the other processes update the rest. state_dict() then
  // holds the owned parameters' state, and load_state_dict() takes a whole optimizer's state
  // and keeps theirs. Frees the moments of the parameters no longer owned.
  void keep_only(std::function<bool(const std::string&)> owns);

 protected:
  // Applies one update to every parameter of a group that has a grad (steps already counted).
  virtual void update(const std::vector<Backend::AdamWParam>& params, double weight_decay) = 0;
  const AdamOptions& options() const { return options_; }

 private:
  bool owns(const std::string& name) const;
  std::vector<ParamGroup> groups_;
  std::map<std::string, AdamState> state_;
  std::function<bool(const std::string&)> owns_;  // unset: every parameter
  AdamOptions options_;
  int64_t steps_ = 0;
};

// torch.optim.AdamW (amsgrad=False): decoupled weight decay p *= 1 - lr * wd.
class AdamW : public Optimizer {
 public:
  explicit AdamW(std::vector<ParamGroup> groups, AdamOptions options = {.weight_decay = 1e-2})
      : Optimizer(std::move(groups), options) {}

 protected:
  void update(const std::vector<Backend::AdamWParam>& params, double weight_decay) override;
};

// torch.optim.Adam (amsgrad=False): L2 decay added to the gradient, g + wd * p.
class Adam : public Optimizer {
 public:
  explicit Adam(std::vector<ParamGroup> groups, AdamOptions options = {})
      : Optimizer(std::move(groups), options) {}

 protected:
  void update(const std::vector<Backend::AdamWParam>& params, double weight_decay) override;
};

// One group holding all of a module's trainable parameters, with the optimiser's weight decay.
std::vector<ParamGroup> single_group(const Module& model);

// Per-update learning rate, t = number of optimiser updates already done (0 for the first):
//   t < warmup:  warmup_lr_init + (base_lr - warmup_lr_init) * t / warmup
//   otherwise:   min_lr + (base_lr - min_lr) * (1 + cos(pi * min(t - warmup, T) / T)) / 2,
//                T = total - warmup
// This is timm's CosineLRScheduler(t_initial=T, warmup_t=warmup, warmup_lr_init, lr_min=min_lr,
// warmup_prefix=True, t_in_epochs=False) after step_update(t).
struct CosineWarmupSchedule {
  double base_lr;
  int64_t warmup_steps;
  int64_t total_steps;
  double min_lr = 0.0;
  double warmup_lr_init = 0.0;

  double operator()(int64_t t) const;
};

// As torch.nn.utils.clip_grad_norm_ (norm_type 2): the L2 norm of all grads taken together;
// when it exceeds max_norm every grad is scaled by max_norm / (norm + 1e-6). Parameters without
// grad are ignored. Returns the norm before clipping; a nan norm leaves the grads as they are.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace sono::nn
