#pragma once
// Module/Parameter system in the shape of torch.nn.Module: named parameters and buffers whose
// dotted names equal PyTorch state_dict keys, child modules, train/eval mode.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace sono::nn {

using StateDict = std::map<std::string, Tensor>;
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;

  NamedTensors named_parameters() const;
  NamedTensors named_buffers() const;
  std::vector<Tensor> parameters() const;
  int64_t num_parameters() const;

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Parameters and buffers by dotted name (what torch's state_dict() returns).
  StateDict state_dict() const;
  // Copies values in place. Strict: every key must exist on both sides with equal shapes;
  // the error names the first offending key and both shapes.
  void load_state_dict(const StateDict& state, bool strict = true);
  // Moves every parameter and buffer; handles held by layers stay valid.
  void to(Device device);
  // Converts every floating-point parameter and buffer (float64 models back gradient checks
  // and tight parity tests); integer buffers keep their type. Handles stay valid.
  void to(DType dtype);
  void zero_grad();
  // The direct child registered as `name` (e.g. "encoder"); the error lists the children.
  Module& child(const std::string& name) const;
  // Inference only, in eval mode (fuse.cpp): each BatchNorm right after a conv folds into that
  // conv, and a ReLU right after them into the conv's epilogue, wherever a module knows its
  // order (Sequential, and models whose forward is code); the rest recurse into their children.
  // The same function in fewer passes over memory, but the parameters are no longer the
  // checkpoint's: a fused module is not for training, saving or loading into.
  virtual void fuse_for_inference();
  bool fused_for_inference() const { return fused_; }
  // Marks every parameter's storage frozen (Storage::frozen), for inference: nothing writes it
  // again while it lives (load_state_dict refuses), so kernels may keep what they derive from
  // it (the CPU convs pack their weights once). A later to() gives unfrozen copies.
  void freeze_parameters();

 protected:
  Tensor register_parameter(const std::string& name, Tensor value);
  Tensor register_buffer(const std::string& name, Tensor value);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> child) {
    children_.emplace_back(name, child);
    return child;
  }

 private:
  void collect(const std::string& prefix, bool params, NamedTensors& out) const;
  // Replaces the contents of each parameter and buffer for which `convert` returns a defined
  // tensor, inside the shared impl so that every handle sees the change.
  void replace_all(const std::function<Tensor(const Tensor&)>& convert);
  NamedTensors params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  bool fused_ = false, frozen_ = false;
};

// A module with one input and one output, so that it can sit in a Sequential.
class UnaryModule : public Module {
 public:
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }
};

// Children named "0", "1", ... as torch.nn.Sequential, applied in order.
class Sequential : public UnaryModule {
 public:
  Sequential& push_back(std::shared_ptr<UnaryModule> m);
  template <typename M>
  std::shared_ptr<M> append(std::shared_ptr<M> m) {
    push_back(m);
    return m;
  }
  Tensor forward(const Tensor& x) override;
  // Folded BatchNorms and fused ReLUs leave the forward's order (they stay children, under
  // their names).
  void fuse_for_inference() override;
  size_t size() const { return items_.size(); }
  UnaryModule& operator[](size_t i) { return *items_.at(i); }

 private:
  std::vector<std::shared_ptr<UnaryModule>> items_;
};

}  // namespace sono::nn
