#pragma once
// Parameter-free modules: activations, identity, dropout and stochastic depth.
#include "layers/module.h"
#include "tensor/ops.h"

namespace sono::nn {

class Identity : public UnaryModule {
 public:
  Tensor forward(const Tensor& x) override { return x; }
};

class ReLU : public UnaryModule {
 public:
  Tensor forward(const Tensor& x) override { return relu(x); }
};

class GELU : public UnaryModule {
 public:
  Tensor forward(const Tensor& x) override { return gelu(x); }
};

class Dropout : public UnaryModule {
 public:
  explicit Dropout(double p) : p(p) {}
  Tensor forward(const Tensor& x) override { return dropout(x, p, is_training()); }
  double p;
};

// Stochastic depth on the residual branch, as timm's DropPath.
class DropPath : public UnaryModule {
 public:
  explicit DropPath(double p) : p(p) {}
  Tensor forward(const Tensor& x) override { return drop_path(x, p, is_training()); }
  double p;
};

}  // namespace sono::nn
