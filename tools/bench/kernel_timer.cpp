#include "tools/bench/kernel_timer.h"

#include <chrono>
#include <type_traits>

namespace sono::bench {

namespace {

const char* unary_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::neg: return "neg";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::abs: return "abs";
    case UnaryOp::sign: return "sign";
    case UnaryOp::relu: return "relu";
    case UnaryOp::gelu: return "gelu";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::softplus: return "softplus";
    case UnaryOp::add_scalar: return "add_scalar";
    case UnaryOp::mul_scalar: return "mul_scalar";
    case UnaryOp::pow_scalar: return "pow_scalar";
    case UnaryOp::gt_scalar: return "gt_scalar";
  }
  return "?";
}

const char* binary_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::eq: return "eq";
    case BinaryOp::relu_grad: return "relu_grad";
    case BinaryOp::add_relu: return "add_relu";
  }
  return "?";
}

template <BackendOp op>
using Op = std::integral_constant<BackendOp, op>;

// A call's key: the kernel's name, unless an overload below says more.
template <BackendOp op, typename... Args>
std::string kernel_key(Op<op>, const Args&...) {
  return backend_op_name(op);
}
template <BackendOp op, typename... Args>
std::string kernel_key(Op<op>, UnaryOp u, const Args&...) {
  return std::string("unary ") + unary_name(u);
}
template <BackendOp op, typename... Args>
std::string kernel_key(Op<op>, BinaryOp b, const Args&...) {
  return std::string("binary ") + binary_name(b);
}
template <BackendOp op, typename... Args>
std::string kernel_key(Op<op>, ReduceOp r, const Args&...) {
  return r == ReduceOp::sum ? "reduce sum" : "reduce max";
}
// Depthwise, grouped or dense, kernel size, stride and dilation: what decides a conv's cost.
template <BackendOp op, typename... Args>
std::string kernel_key(Op<op>, const Conv2dGeometry& g, const Args&...) {
  bool depthwise = g.groups > 1 && g.groups == g.cin && g.groups == g.cout;
  std::string kind = depthwise ? "dw" : g.groups > 1 ? "grouped" : "dense";
  return std::string(backend_op_name(op)) + " " + kind + " " + std::to_string(g.kh) + "x" +
         std::to_string(g.kw) + " s" + std::to_string(g.stride) + " d" +
         std::to_string(g.dilation);
}
// Transposed operands tell the GEMMs apart: x W^T in Linear forward, grad^T x for weight grads.
std::string kernel_key(Op<BackendOp::gemm>, const Tensor&, bool trans_a, const Tensor&,
                       bool trans_b, const Tensor& c, double, double, Precision) {
  return std::string(c.size(0) > 1 ? "gemm batched" : "gemm") + (trans_a ? " a^T" : "") +
         (trans_b ? " b^T" : "");
}
std::string kernel_key(Op<BackendOp::linear_forward>, const Tensor&, const Tensor&,
                       const Tensor&, const Tensor&, bool gelu, Precision) {
  return gelu ? "linear_forward (gemm + bias + gelu)" : "linear_forward (gemm + bias)";
}
std::string kernel_key(Op<BackendOp::gelu_backward>, const Tensor&, const Tensor& bias,
                       const Tensor&, const Tensor&) {
  return bias.defined() ? "gelu_backward (bias)" : "gelu_backward";
}

// A call's FLOPs (multiply-adds count 2): GEMMs and convs only.
template <BackendOp op, typename... Args>
double kernel_flops(Op<op>, const Args&...) {
  return 0;
}
// Each of a conv's three kernels does one multiply-add per output, input channel of the group
// and tap (taps falling in the padding included).
template <BackendOp op, typename... Args>
double kernel_flops(Op<op>, const Conv2dGeometry& g, const Args&...) {
  return 2.0 * g.n * g.oh * g.ow * g.cout * (g.cin / g.groups) * g.kh * g.kw;
}
double kernel_flops(Op<BackendOp::gemm>, const Tensor& a, bool trans_a, const Tensor&, bool,
                    const Tensor& c, double, double, Precision) {
  return 2.0 * static_cast<double>(c.numel()) * (trans_a ? a.size(1) : a.size(2));
}
double kernel_flops(Op<BackendOp::linear_forward>, const Tensor& x, const Tensor&, const Tensor&,
                    const Tensor& y, bool, Precision) {
  return 2.0 * static_cast<double>(y.numel()) * x.size(2);
}

}  // namespace

KernelTimer::KernelTimer() { register_backend(Device::cpu, this); }
KernelTimer::~KernelTimer() { register_backend(Device::cpu, nullptr); }

template <BackendOp op, typename F, typename... Args>
void KernelTimer::timed(F&& f, const Args&... args) {
  auto start = std::chrono::steady_clock::now();
  f();
  KernelTotal& total = totals_[kernel_key(Op<op>{}, args...)];
  total.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++total.calls;
  total.flops += kernel_flops(Op<op>{}, args...);
}

// Allocation is not a kernel: forwarded untimed (the memory counters live in the CPU backend).
void* KernelTimer::allocate(size_t nbytes) { return inner_.allocate(nbytes); }
void KernelTimer::deallocate(void* ptr) { inner_.deallocate(ptr); }

#define SONO_UNPARENTHESIZE(...) __VA_ARGS__
#define SONO_BACKEND_OP(kind, op, params, args)                              \
  void KernelTimer::op params {                                              \
    timed<BackendOp::op>([&] { inner_.op args; }, SONO_UNPARENTHESIZE args); \
  }
#include "tensor/backend_ops.def"
#undef SONO_UNPARENTHESIZE

}  // namespace sono::bench
