#include "layers/optim.h"

#include <cmath>
#include <set>

#include "autograd/node.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono::nn {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Tensor int_scalar(int64_t v) { return Tensor::from_labels({v}).reshape({}); }

int64_t int_scalar_value(const StateDict& state, const std::string& key) {
  auto it = state.find(key);
  SONO_CHECK(it != state.end(), "optimizer state is missing key '", key, "'");
  SONO_CHECK(it->second.numel() == 1, "optimizer state key '", key, "' must be a scalar, got shape ",
             shape_str(it->second.shape()));
  return static_cast<int64_t>(it->second.item());
}

// A copy of a saved moment on the parameter's device and dtype, shape-checked.
Tensor moment_like(const StateDict& state, const std::string& key, const Tensor& param) {
  auto it = state.find(key);
  SONO_CHECK(it != state.end(), "optimizer state is missing key '", key, "'");
  SONO_CHECK(it->second.shape() == param.shape(), "optimizer state key '", key, "' has shape ",
             shape_str(it->second.shape()), " but the parameter has shape ", shape_str(param.shape()));
  return it->second.to(param.dtype()).to(param.device()).clone();
}

}  // namespace

std::vector<ParamGroup> param_groups_weight_decay(const Module& model, double weight_decay,
                                                  const std::vector<std::string>& no_weight_decay) {
  const std::set<std::string> skip(no_weight_decay.begin(), no_weight_decay.end());
  ParamGroup no_decay{{}, 0.0}, decay{{}, weight_decay};
  for (auto& [name, p] : model.named_parameters()) {
    if (!p.requires_grad()) continue;
    bool exempt = p.dim() <= 1 || ends_with(name, ".bias") || skip.count(name);
    (exempt ? no_decay : decay).params.emplace_back(name, p);
  }
  return {no_decay, decay};
}

std::vector<ParamGroup> single_group(const Module& model) {
  ParamGroup group;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) group.params.emplace_back(name, p);
  return {group};
}

Optimizer::Optimizer(std::vector<ParamGroup> groups, AdamOptions options)
    : groups_(std::move(groups)), options_(options) {
  std::set<std::string> seen;
  for (auto& group : groups_) {
    if (!group.weight_decay) group.weight_decay = options_.weight_decay;
    for (auto& [name, p] : group.params)
      SONO_CHECK(seen.insert(name).second, "optimizer: parameter '", name,
                 "' appears twice in the parameter groups");
  }
  SONO_CHECK(!seen.empty(), "optimizer got no parameters");
}

void Optimizer::step() {
  autograd::NoGradGuard no_grad;
  for (auto& group : groups_) {
    std::vector<Backend::AdamWParam> batch;
    for (auto& [name, p] : group.params) {
      Tensor g = p.grad();
      if (!g.defined() || !owns(name)) continue;
      SONO_CHECK(g.dtype() == p.dtype() && g.device() == p.device(), "optimizer: grad of '", name,
                 "' is ", dtype_name(g.dtype()), " on ", device_name(g.device()),
                 " but the parameter is ", dtype_name(p.dtype()), " on ", device_name(p.device()));
      SONO_CHECK(p.is_contiguous(), "optimizer: parameter '", name, "' is not contiguous");
      SONO_CHECK(batch.empty() || p.device() == batch[0].param.device(), "optimizer: parameter '",
                 name, "' is on ", device_name(p.device()), ", others of its group on ",
                 device_name(batch[0].param.device()));
      AdamState& s = state_[name];
      if (!s.exp_avg.defined()) {
        s.exp_avg = Tensor::zeros(p.shape(), p.dtype(), p.device());
        s.exp_avg_sq = Tensor::zeros(p.shape(), p.dtype(), p.device());
      }
      batch.push_back({p, g.contiguous(), s.exp_avg, s.exp_avg_sq, ++s.step});
    }
    if (!batch.empty()) update(batch, *group.weight_decay);
  }
  ++steps_;
}

void Optimizer::zero_grad() {
  for (auto& group : groups_)
    for (auto& [name, p] : group.params) p.zero_grad();
}

StateDict Optimizer::state_dict() const {
  StateDict out{{"steps", int_scalar(steps_)}};
  for (auto& [name, s] : state_) {
    out[name + ".step"] = int_scalar(s.step);
    out[name + ".exp_avg"] = s.exp_avg;
    out[name + ".exp_avg_sq"] = s.exp_avg_sq;
  }
  return out;
}

void Optimizer::load_state_dict(const StateDict& state) {
  std::map<std::string, AdamState> loaded;
  std::set<std::string> known{"steps"};
  for (auto& group : groups_)
    for (auto& [name, p] : group.params) {
      for (const char* field : {".step", ".exp_avg", ".exp_avg_sq"}) known.insert(name + field);
      // No grad yet when saved: no state, as torch. Not owned: another process keeps it.
      if (!state.count(name + ".step") || !owns(name)) continue;
      loaded[name] = {moment_like(state, name + ".exp_avg", p),
                      moment_like(state, name + ".exp_avg_sq", p),
                      int_scalar_value(state, name + ".step")};
    }
  for (auto& [key, t] : state)
    SONO_CHECK(known.count(key), "optimizer state has unexpected key '", key,
               "' that names no parameter of this optimizer");
  steps_ = int_scalar_value(state, "steps");
  state_ = std::move(loaded);
}

void Optimizer::keep_only(std::function<bool(const std::string&)> owns) {
  owns_ = std::move(owns);
  std::erase_if(state_, [this](const auto& entry) { return !this->owns(entry.first); });
}

bool Optimizer::owns(const std::string& name) const { return !owns_ || owns_(name); }

void AdamW::update(const std::vector<Backend::AdamWParam>& params, double weight_decay) {
  const AdamOptions& o = options();
  backend_of(params[0].param)
      .adamw_multi_step(params, o.lr, o.beta1, o.beta2, o.eps, weight_decay);
}

void Adam::update(const std::vector<Backend::AdamWParam>& params, double weight_decay) {
  const AdamOptions& o = options();
  std::vector<Backend::AdamWParam> decayed = params;
  if (weight_decay != 0)
    for (auto& p : decayed) p.grad = add(p.grad, mul(p.param, weight_decay));
  backend_of(params[0].param).adamw_multi_step(decayed, o.lr, o.beta1, o.beta2, o.eps, 0.0);
}

double CosineWarmupSchedule::operator()(int64_t t) const {
  SONO_CHECK(t >= 0 && warmup_steps >= 0 && total_steps > warmup_steps,
             "cosine schedule needs 0 <= warmup_steps < total_steps and t >= 0, got t=", t,
             " warmup_steps=", warmup_steps, " total_steps=", total_steps);
  if (t < warmup_steps)
    return warmup_lr_init + (base_lr - warmup_lr_init) * static_cast<double>(t) / warmup_steps;
  const double span = static_cast<double>(total_steps - warmup_steps);
  const double progress = std::min(static_cast<double>(t - warmup_steps), span) / span;
  return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  autograd::NoGradGuard no_grad;
  Tensor squares;  // summed on the grads' device: one host sync, not one per parameter
  for (const Tensor& p : params) {
    if (!p.grad().defined()) continue;
    Tensor s = sum(mul(p.grad(), p.grad()));
    squares = squares.defined() ? add(squares, s.to(squares.dtype())) : s;
  }
  if (!squares.defined()) return 0.0;
  const double norm = std::sqrt(squares.item());
  const double scale = max_norm / (norm + 1e-6);
  if (scale < 1.0)
    for (Tensor p : params)  // a handle copy shares the impl that holds the grad
      if (p.grad().defined()) p.set_grad(mul(p.grad(), scale));
  return norm;
}

}  // namespace sono::nn
