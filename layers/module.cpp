#include "layers/module.h"

#include "autograd/node.h"
#include "tensor/backend.h"

namespace sono::nn {

Tensor Module::register_parameter(const std::string& name, Tensor value) {
  value.requires_grad_(true);
  params_.emplace_back(name, value);
  return value;
}

Tensor Module::register_buffer(const std::string& name, Tensor value) {
  buffers_.emplace_back(name, value);
  return value;
}

void Module::collect(const std::string& prefix, bool params, NamedTensors& out) const {
  for (const auto& [name, t] : params ? params_ : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, out);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", true, out);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", false, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

StateDict Module::state_dict() const {
  StateDict out;
  for (auto& [name, t] : named_parameters()) out[name] = t;
  for (auto& [name, t] : named_buffers()) out[name] = t;
  return out;
}

void Module::load_state_dict(const StateDict& state, bool strict) {
  SONO_CHECK(!fused_ && !frozen_, "load_state_dict: this module is ", fused_ ? "fused" : "frozen",
             " for inference; load into a fresh one");
  StateDict mine = state_dict();
  for (auto& [name, dst] : mine) {
    auto it = state.find(name);
    if (it == state.end()) {
      SONO_CHECK(!strict, "state dict is missing key '", name, "' (expected shape ",
                 shape_str(dst.shape()), ")");
      continue;
    }
    SONO_CHECK(it->second.shape() == dst.shape(), "state dict key '", name, "' has shape ",
               shape_str(it->second.shape()), " but the model expects ", shape_str(dst.shape()));
    Tensor src = it->second.to(dst.device());
    backend_of(dst).copy(src.dtype() == dst.dtype() ? src : src.to(dst.dtype()), dst);
  }
  if (strict)
    for (auto& [name, t] : state)
      SONO_CHECK(mine.count(name), "state dict has unexpected key '", name, "' (shape ",
                 shape_str(t.shape()), ") that the model does not have");
}

void Module::replace_all(const std::function<Tensor(const Tensor&)>& convert) {
  autograd::NoGradGuard no_grad;
  for (auto* list : {&params_, &buffers_})
    for (auto& [name, t] : *list) {
      Tensor replaced = convert(t.detach());
      if (!replaced.defined()) continue;
      t.impl().storage = replaced.impl().storage;
      t.impl().offset = replaced.offset();
      t.impl().strides = replaced.strides();
      t.impl().dtype = replaced.dtype();
      t.impl().grad.reset();
    }
  for (auto& [name, child] : children_) child->replace_all(convert);
}

void Module::to(Device device) {
  replace_all([&](const Tensor& t) { return t.device() == device ? Tensor() : t.to(device); });
}

void Module::to(DType dtype) {
  replace_all([&](const Tensor& t) {
    return t.dtype() == dtype || t.dtype() == DType::i64 ? Tensor() : t.to(dtype).contiguous();
  });
}

void Module::zero_grad() {
  for (auto& t : parameters()) t.zero_grad();
}

Module& Module::child(const std::string& name) const {
  std::string known;
  for (auto& [n, m] : children_) {
    if (n == name) return *m;
    known += (known.empty() ? "" : ", ") + n;
  }
  fail("module has no child '", name, "' (children: ", known, ")");
}

Sequential& Sequential::push_back(std::shared_ptr<UnaryModule> m) {
  register_module(std::to_string(items_.size()), m);
  items_.push_back(std::move(m));
  return *this;
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& m : items_) y = m->forward(y);
  return y;
}

}  // namespace sono::nn
