#pragma once
// The tape: each differentiable op that sees an input needing grad records a Node holding
// an edge per input and a closure mapping the output gradient to one gradient per input.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sono::autograd {

using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;

struct Node;

// Where an input's gradient goes: the node that made the input, or the leaf whose .grad
// collects it. It does not hold the input's data: an activation that no backward closure saved
// is freed as soon as the forward lets go of it (as in PyTorch), so that what a closure saves,
// e.g. a bfloat16 copy under autocast, is all the memory it costs.
struct Edge {
  std::shared_ptr<Node> node;        // the input's grad_fn; null for a leaf
  std::shared_ptr<TensorImpl> leaf;  // a leaf that requires grad; null otherwise
  Shape shape;                       // the input's, which its gradient must have

  bool flows() const { return node || leaf; }  // false: the input needs no gradient
};

struct Node {
  std::string name;
  std::vector<Edge> inputs;  // one per input of the op
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

// f(x), keeping for backward only x (and what f's ops read of params), not f's intermediates:
// backward runs f again with gradients on and backpropagates through that copy, as PyTorch's
// activation checkpointing. f must be deterministic (no dropout); gradients are bit for bit
// those of f's own graph. params are the leaves f reads (their .grad fills as usual).
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& f, const Tensor& x,
                  const std::vector<Tensor>& params);

// Records `out`, computed outside the graph (by a fused kernel, or by f under no_grad), as
// f(inputs): its backward runs f again on detached copies of the inputs with gradients on and
// backpropagates through that, so the forward keeps only the inputs. f must be deterministic.
// params: leaves f reads besides the inputs (their .grad fills during that backward).
Tensor record_recomputed(const char* name, Tensor out, const std::vector<Tensor>& inputs,
                         std::function<Tensor(const std::vector<Tensor>&)> f,
                         const std::vector<Tensor>& params = {});

// Runs reverse mode from `root` with seed gradient `seed`, accumulates into leaves' .grad and
// frees the graph.
void run_backward(const Tensor& root, const Tensor& seed);

// While one is alive on this thread, the outermost run_backward calls it with each leaf as soon
// as that leaf's .grad is final: every node with an edge to the leaf has run (its .grad may still
// be undefined when no gradient reached it). Data-parallel training starts a gradient bucket's
// all-reduce there, while the rest of the backward still runs, as PyTorch DDP's autograd hooks
// do. Backwards nested in checkpoint() do not report: their leaves are final only once the
// outer node has run.
class GradReadyHook {
 public:
  using Fn = std::function<void(TensorImpl& leaf)>;
  explicit GradReadyHook(Fn fn);
  ~GradReadyHook();
  GradReadyHook(const GradReadyHook&) = delete;
  GradReadyHook& operator=(const GradReadyHook&) = delete;

 private:
  Fn fn_;
  const Fn* previous_;
};

}  // namespace sono::autograd
