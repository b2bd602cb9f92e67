#include "layers/fuse.h"

#include <typeinfo>

#include "layers/activation.h"

namespace sono::nn {

void Module::fuse_for_inference() {
  for (auto& [name, child] : children_) child->fuse_for_inference();
  fused_ = true;
}

void Module::freeze_parameters() {
  for (const Tensor& p : parameters()) p.impl().storage->frozen = true;
  frozen_ = true;
}

void fuse_conv_bn_relu(Conv2d& conv, BatchNorm2d& bn) {
  bn.fold_into(conv);
  conv.relu_after = true;
}

Tensor conv_bn_relu(Conv2d& conv, BatchNorm2d& bn, const Tensor& x) {
  Tensor y = bn.forward(conv.forward(x));
  return conv.relu_after ? y : relu(y);
}

namespace {

// The conv whose output m returns, if m is one or a plain Sequential ending with one (a
// separable conv), and nothing follows it yet: a BatchNorm after m folds into it.
Conv2d* last_conv(UnaryModule& m) {
  if (auto* conv = dynamic_cast<Conv2d*>(&m)) return conv->relu_after ? nullptr : conv;
  if (typeid(m) != typeid(Sequential)) return nullptr;  // a subclass's forward may add to its items'
  auto& s = static_cast<Sequential&>(m);
  return s.size() == 0 ? nullptr : last_conv(s[s.size() - 1]);
}

}  // namespace

void Sequential::fuse_for_inference() {
  Module::fuse_for_inference();
  const auto identity = std::make_shared<Identity>();
  for (size_t i = 1; i < items_.size(); ++i) {
    auto* bn = dynamic_cast<BatchNorm2d*>(items_[i].get());
    Conv2d* conv = bn ? last_conv(*items_[i - 1]) : nullptr;
    if (!conv) continue;
    bn->fold_into(*conv);
    items_[i] = identity;
    if (i + 1 < items_.size() && dynamic_cast<ReLU*>(items_[i + 1].get())) {
      conv->relu_after = true;
      items_[i + 1] = identity;
    }
  }
}

}  // namespace sono::nn
