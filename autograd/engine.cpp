#include <unordered_map>
#include <utility>
#include <unordered_set>

#include "autograd/node.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono::autograd {

namespace {

thread_local bool g_grad_enabled = true;
thread_local const GradReadyHook::Fn* g_grad_ready = nullptr;

Edge edge_to(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  if (t.grad_fn()) return {t.grad_fn(), nullptr, t.shape()};
  return {nullptr, t.impl_ptr(), t.shape()};
}

}  // namespace

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }
GradReadyHook::GradReadyHook(Fn fn) : fn_(std::move(fn)), previous_(g_grad_ready) { g_grad_ready = &fn_; }
GradReadyHook::~GradReadyHook() { g_grad_ready = previous_; }

Tensor record(const char* name, Tensor out, std::vector<Tensor> inputs, BackwardFn backward) {
  if (!g_grad_enabled) return out;
  bool any = false;
  for (auto& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->inputs.reserve(inputs.size());
  for (const Tensor& t : inputs) node->inputs.push_back(edge_to(t));
  node->backward = std::move(backward);
  out.impl().requires_grad = true;
  out.impl().grad_fn = std::move(node);
  return out;
}

namespace {

// Post-order DFS over grad_fn edges, iterative so that deep nets don't overflow the stack.
// The order owns the nodes: backward frees each node's edges once it has run, and those edges
// may be the last owners of the nodes still waiting their turn.
std::vector<std::shared_ptr<Node>> topo_order(const std::shared_ptr<Node>& root) {
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> seen{root.get()};
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      const std::shared_ptr<Node>& child = node->inputs[next++].node;
      if (child && seen.insert(child.get()).second) stack.push_back({child, 0});
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }
  return order;  // children before parents
}

// True when nothing but this reference holds g or its memory, and g spans all of that memory:
// a fresh result of a backward formula, which .grad can take over as it is (PyTorch steals
// such gradients too) instead of copying it.
bool sole_owner(const Tensor& g) {
  return g.impl_ptr().use_count() == 1 && g.impl().storage.use_count() == 1 && g.offset() == 0 &&
         g.is_contiguous() && g.impl().storage->nbytes == g.numel() * dtype_size(g.dtype());
}

// sum + g, written into sum when no one else can see it, as PyTorch accumulates: a fresh sum
// would hold three gradients of that size at once instead of two. The elements are added in
// the same order either way.
Tensor add_into(Tensor sum, const Tensor& g) {
  if (!sole_owner(sum) || sum.dtype() != g.dtype() || sum.device() != g.device()) return add(sum, g);
  backend_of(sum).binary(BinaryOp::add, sum, g, sum);
  return sum;
}

void accumulate(std::shared_ptr<TensorImpl>& slot, const Tensor& g) {
  if (!slot && sole_owner(g)) {
    slot = g.impl_ptr();
  } else if (!slot) {
    slot = g.contiguous().impl_ptr();
    if (slot == g.impl_ptr()) slot = g.clone().impl_ptr();  // never alias a user tensor
  } else {
    slot = add_into(Tensor(std::move(slot)), g).impl_ptr();
  }
}

// Runs one node's backward and hands each input's gradient on: to the node that made the input
// (summed when it already has one) or to the leaf's .grad. grad_out is released first: a view
// of it (a reshape's gradient, as a Conv2d-shaped weight used as a matrix gets) can then become
// a .grad as it is instead of being copied.
void run_node(Node& node, Tensor grad_out, std::unordered_map<Node*, Tensor>& grads) {
  SONO_CHECK(node.backward, "backward through a graph that was already freed (op ", node.name,
             "); call backward() once per forward");
  std::vector<Tensor> input_grads = node.backward(grad_out);
  grad_out = Tensor();
  SONO_CHECK(input_grads.size() == node.inputs.size(), "autograd: node ", node.name, " returned ",
             input_grads.size(), " grads for ", node.inputs.size(), " inputs");
  for (size_t i = 0; i < input_grads.size(); ++i) {
    const Edge& in = node.inputs[i];
    Tensor& ig = input_grads[i];
    if (!in.flows() || !ig.defined()) continue;
    SONO_CHECK(ig.shape() == in.shape, "autograd: node ", node.name, " gave grad of shape ",
               shape_str(ig.shape()), " for input ", i, " of shape ", shape_str(in.shape));
    if (Node* child = in.node.get()) {
      auto slot = grads.find(child);
      if (slot == grads.end()) grads.emplace(child, std::move(ig));
      else slot->second = add_into(std::move(slot->second), ig);
    } else {
      accumulate(in.leaf->grad, ig);
    }
  }
}

// The GradReadyHook's view of one backward: how many nodes still have to run before each
// leaf's gradient is final. Idle (no counting) without a hook.
class LeafReadiness {
 public:
  LeafReadiness(const std::vector<std::shared_ptr<Node>>& order) : hook_(g_grad_ready) {
    if (!hook_) return;
    for (auto& node : order)
      for (const Edge& in : node->inputs)
        if (in.leaf) ++pending_[in.leaf.get()];
  }
  // After `node` ran (or was passed over for want of a gradient).
  void done(const Node& node) {
    if (!hook_) return;
    for (const Edge& in : node.inputs)
      if (in.leaf && --pending_[in.leaf.get()] == 0) (*hook_)(*in.leaf);
  }

 private:
  const GradReadyHook::Fn* hook_;
  std::unordered_map<TensorImpl*, int> pending_;
};

// Hides the hook from the backwards that checkpoint() runs inside the outer one.
class OuterBackwardOnly {
 public:
  OuterBackwardOnly() : hook_(std::exchange(g_grad_ready, nullptr)) {}
  ~OuterBackwardOnly() { g_grad_ready = hook_; }
  OuterBackwardOnly(const OuterBackwardOnly&) = delete;
  OuterBackwardOnly& operator=(const OuterBackwardOnly&) = delete;

 private:
  const GradReadyHook::Fn* hook_;
};

}  // namespace

void run_backward(const Tensor& root, const Tensor& seed) {
  SONO_CHECK(root.requires_grad(),
             "backward() on a tensor that does not require grad (no input needed gradients, "
             "or it was computed under no_grad)");
  NoGradGuard no_grad;  // backward formulas are plain ops; no double backward
  if (!root.grad_fn()) {
    accumulate(root.impl().grad, seed);
    return;
  }
  std::vector<std::shared_ptr<Node>> order = topo_order(root.grad_fn());
  LeafReadiness readiness(order);
  OuterBackwardOnly outer;
  std::unordered_map<Node*, Tensor> grads{{root.grad_fn().get(), seed}};
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node& node = **it;
    if (auto found = grads.find(&node); found != grads.end()) {
      Tensor g = std::move(found->second);
      grads.erase(found);
      run_node(node, std::move(g), grads);
    }
    readiness.done(node);
    // Free the node's saved tensors now, as PyTorch does, not when the whole backward ends:
    // activations go while gradients arrive, which lowers the peak of a training step.
    node.backward = nullptr;
    node.inputs.clear();
  }
}

namespace {
// Gradients on for a scope (checkpoint's recomputation, inside an outer backward).
class GradGuard {
 public:
  GradGuard() : previous_(g_grad_enabled) { g_grad_enabled = true; }
  ~GradGuard() { g_grad_enabled = previous_; }
  GradGuard(const GradGuard&) = delete;
  GradGuard& operator=(const GradGuard&) = delete;

 private:
  bool previous_;
};
}  // namespace

Tensor record_recomputed(const char* name, Tensor out, const std::vector<Tensor>& inputs,
                         std::function<Tensor(const std::vector<Tensor>&)> f,
                         const std::vector<Tensor>& params) {
  std::vector<Tensor> saved, edges = inputs;
  std::vector<bool> needs_grad;
  for (const Tensor& x : inputs) {
    saved.push_back(x.detach());
    needs_grad.push_back(x.requires_grad());
  }
  edges.insert(edges.end(), params.begin(), params.end());
  auto backward = [f = std::move(f), saved = std::move(saved), needs_grad,
                   edges = edges.size()](const Tensor& g) {
    std::vector<Tensor> again;
    for (size_t i = 0; i < saved.size(); ++i)
      again.push_back(saved[i].detach().requires_grad_(needs_grad[i]));
    Tensor y_again;
    {
      GradGuard grad;
      y_again = f(again);
    }
    if (y_again.requires_grad()) run_backward(y_again, g);  // params' grads go to their .grad
    std::vector<Tensor> grads(edges);
    for (size_t i = 0; i < again.size(); ++i) grads[i] = again[i].grad();
    return grads;
  };
  return record(name, std::move(out), std::move(edges), std::move(backward));
}

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& f, const Tensor& x,
                  const std::vector<Tensor>& params) {
  if (!g_grad_enabled) return f(x);
  Tensor y;
  {
    NoGradGuard no_grad;
    y = f(x);
  }
  return record_recomputed("checkpoint", y, {x}, [f](const std::vector<Tensor>& xs) { return f(xs[0]); },
                           params);
}

}  // namespace sono::autograd

namespace sono {

void Tensor::backward() const {
  SONO_CHECK(numel() == 1, "backward() needs a scalar output, got shape ", shape_str(shape()),
             " (reduce it with sum() or mean() first)");
  autograd::run_backward(*this, Tensor::ones(shape(), compute_dtype(dtype()), device()));
}

}  // namespace sono
