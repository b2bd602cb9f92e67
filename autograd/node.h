#pragma once
// The tape: each differentiable op that sees an input needing grad records a Node holding
// its inputs and a closure mapping the output gradient to one gradient per input.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sono::autograd {

using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;

struct Node {
  std::string name;
  std::vector<Tensor> inputs;  // gradients flow to these (undefined entries are skipped)
  BackwardFn backward;
};

// True while gradients are being recorded (thread-local; see NoGradGuard).
bool grad_enabled();

class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Attaches a Node to `out` when grad mode is on and any input requires grad.
// `backward` must return one tensor per input (undefined for inputs without grads).
Tensor record(const char* name, Tensor out, std::vector<Tensor> inputs, BackwardFn backward);

// Runs reverse mode from `root` with seed gradient `seed`, accumulates into leaves' .grad and
// frees the graph.
void run_backward(const Tensor& root, const Tensor& seed);

}  // namespace sono::autograd
