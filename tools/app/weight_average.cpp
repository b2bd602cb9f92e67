#include "tools/app/weight_average.h"

#include "autograd/node.h"
#include "tensor/ops.h"

namespace sono::app {

namespace {

bool is_floating(const Tensor& t) { return t.dtype() == DType::f32 || t.dtype() == DType::f64; }

}  // namespace

WeightAverage::WeightAverage(const nn::Module& model, double decay) : decay_(decay) {
  autograd::NoGradGuard no_grad;
  for (auto& [name, t] : model.state_dict()) shadow_[name] = t.detach().clone();
}

void WeightAverage::update(const nn::Module& model) {
  autograd::NoGradGuard no_grad;
  for (auto& [name, t] : model.state_dict()) {
    Tensor& s = shadow_.at(name);
    s = is_floating(t) ? add(mul(s, decay_), mul(t.detach(), 1 - decay_)) : t.detach().clone();
  }
}

void WeightAverage::swap(nn::Module& model) {
  autograd::NoGradGuard no_grad;
  nn::StateDict current;
  for (auto& [name, t] : model.state_dict()) current[name] = t.detach().clone();
  model.load_state_dict(shadow_);
  shadow_ = std::move(current);
}

}  // namespace sono::app
