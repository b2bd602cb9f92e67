#include "tools/bench/kernel_timer.h"

#include <chrono>

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
  }
  return "?";
}

// Depthwise, grouped or dense, kernel size, stride and dilation: what decides a conv's cost.
std::string conv_key(const char* method, const Conv2dGeometry& g) {
  bool depthwise = g.groups > 1 && g.groups == g.cin && g.groups == g.cout;
  std::string kind = depthwise ? "dw" : g.groups > 1 ? "grouped" : "dense";
  return std::string(method) + " " + kind + " " + std::to_string(g.kh) + "x" +
         std::to_string(g.kw) + " s" + std::to_string(g.stride) + " d" +
         std::to_string(g.dilation);
}

// Each of a conv's three kernels does one multiply-add per output, input channel of the group
// and tap (taps falling in the padding included).
double conv_flops(const Conv2dGeometry& g) {
  return 2.0 * g.n * g.oh * g.ow * g.cout * (g.cin / g.groups) * g.kh * g.kw;
}

// Transposed operands tell the GEMMs apart: x W^T in Linear forward, grad^T x for weight grads.
std::string gemm_key(bool trans_a, bool trans_b, const Tensor& c) {
  return std::string(c.size(0) > 1 ? "gemm batched" : "gemm") + (trans_a ? " a^T" : "") +
         (trans_b ? " b^T" : "");
}

}  // namespace

KernelTimer::KernelTimer() { register_backend(Device::cpu, this); }
KernelTimer::~KernelTimer() { register_backend(Device::cpu, nullptr); }

template <typename F>
void KernelTimer::timed(const std::string& key, F&& f, double flops) {
  auto start = std::chrono::steady_clock::now();
  f();
  KernelTotal& total = totals_[key];
  total.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++total.calls;
  total.flops += flops;
}

// Allocation is not a kernel: forwarded untimed (the memory counters live in the CPU backend).
void* KernelTimer::allocate(size_t nbytes) { return inner_.allocate(nbytes); }
void KernelTimer::deallocate(void* ptr) { inner_.deallocate(ptr); }

void KernelTimer::copy(const Tensor& src, const Tensor& dst) {
  timed("copy", [&] { inner_.copy(src, dst); });
}
void KernelTimer::fill(const Tensor& dst, double value) {
  timed("fill", [&] { inner_.fill(dst, value); });
}
void KernelTimer::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
  timed(std::string("unary ") + unary_name(op), [&] { inner_.unary(op, x, out, alpha); });
}
void KernelTimer::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  timed(std::string("binary ") + binary_name(op), [&] { inner_.binary(op, a, b, out); });
}
void KernelTimer::bias_gelu_forward(const Tensor& x, const Tensor& bias, const Tensor& y) {
  timed("bias_gelu_forward", [&] { inner_.bias_gelu_forward(x, bias, y); });
}
void KernelTimer::gelu_backward(const Tensor& x, const Tensor& bias, const Tensor& grad_y,
                                const Tensor& grad_x) {
  timed(bias.defined() ? "gelu_backward (bias)" : "gelu_backward",
        [&] { inner_.gelu_backward(x, bias, grad_y, grad_x); });
}
void KernelTimer::reduce(ReduceOp op, const Tensor& x, const Tensor& out) {
  timed(op == ReduceOp::sum ? "reduce sum" : "reduce max", [&] { inner_.reduce(op, x, out); });
}
void KernelTimer::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                       const Tensor& c, double alpha, double beta) {
  const int64_t inner = trans_a ? a.size(1) : a.size(2);
  timed(gemm_key(trans_a, trans_b, c), [&] { inner_.gemm(a, trans_a, b, trans_b, c, alpha, beta); },
        2.0 * static_cast<double>(c.numel()) * inner);
}
void KernelTimer::linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                 const Tensor& y, bool gelu) {
  timed(gelu ? "linear_forward (gemm + bias + gelu)" : "linear_forward (gemm + bias)",
        [&] { inner_.linear_forward(x, w, bias, y, gelu); },
        2.0 * static_cast<double>(y.numel()) * x.size(2));
}
void KernelTimer::conv2d_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                                 const Tensor& out) {
  timed(conv_key("conv2d_forward", g), [&] { inner_.conv2d_forward(g, x, w, out); },
        conv_flops(g));
}
void KernelTimer::conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out,
                                        const Tensor& w, const Tensor& grad_x) {
  timed(conv_key("conv2d_backward_input", g),
        [&] { inner_.conv2d_backward_input(g, grad_out, w, grad_x); }, conv_flops(g));
}
void KernelTimer::conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& x,
                                         const Tensor& grad_out, const Tensor& grad_w) {
  timed(conv_key("conv2d_backward_weight", g),
        [&] { inner_.conv2d_backward_weight(g, x, grad_out, grad_w); }, conv_flops(g));
}
void KernelTimer::layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b,
                                     double eps, const Tensor& y, const Tensor& mean,
                                     const Tensor& rstd) {
  timed("layer_norm_forward", [&] { inner_.layer_norm_forward(x, w, b, eps, y, mean, rstd); });
}
void KernelTimer::layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                                      const Tensor& rstd, const Tensor& grad_y,
                                      const Tensor& grad_x, const Tensor& grad_w,
                                      const Tensor& grad_b) {
  timed("layer_norm_backward",
        [&] { inner_.layer_norm_backward(x, w, mean, rstd, grad_y, grad_x, grad_w, grad_b); });
}
void KernelTimer::softmax_forward(const Tensor& x, const Tensor& y, bool log) {
  timed("softmax_forward", [&] { inner_.softmax_forward(x, y, log); });
}
void KernelTimer::softmax_backward(const Tensor& y, const Tensor& grad_y, const Tensor& grad_x,
                                   bool log) {
  timed("softmax_backward", [&] { inner_.softmax_backward(y, grad_y, grad_x, log); });
}
void KernelTimer::resize_bilinear_forward(const Tensor& x, const Tensor& y, bool align_corners) {
  timed("resize_bilinear_forward", [&] { inner_.resize_bilinear_forward(x, y, align_corners); });
}
void KernelTimer::resize_bilinear_backward(const Tensor& grad_y, const Tensor& grad_x,
                                           bool align_corners) {
  timed("resize_bilinear_backward",
        [&] { inner_.resize_bilinear_backward(grad_y, grad_x, align_corners); });
}
void KernelTimer::adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                             const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                             double eps, double weight_decay, int64_t step) {
  timed("adamw_step", [&] {
    inner_.adamw_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step);
  });
}

}  // namespace sono::bench
