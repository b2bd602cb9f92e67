#include "tensor/backend.h"

namespace sono {

namespace {
constexpr const char* kOpNames[] = {
#define SONO_BACKEND_OP(kind, op, params, args) #op,
#include "tensor/backend_ops.def"
};
constexpr BackendOpKind kOpKinds[] = {
#define SONO_BACKEND_OP(kind, op, params, args) BackendOpKind::kind,
#include "tensor/backend_ops.def"
};
}  // namespace

const char* backend_op_name(BackendOp op) { return kOpNames[static_cast<int>(op)]; }
BackendOpKind backend_op_kind(BackendOp op) { return kOpKinds[static_cast<int>(op)]; }

bool Backend::supports(BackendOp op, OpOperands) const {
  return backend_op_kind(op) != BackendOpKind::optional;
}

// An optional kernel's default: reached only by a caller that did not ask supports() first.
#define SONO_BACKEND_OP(kind, op, params, args) SONO_BACKEND_DEFINE_##kind(op, params)
#define SONO_BACKEND_DEFINE_required(op, params)
#define SONO_BACKEND_DEFINE_defaulted(op, params)
#define SONO_BACKEND_DEFINE_optional(op, params) \
  void Backend::op params { fail(#op ": backend ", name(), " does not have this kernel"); }
#include "tensor/backend_ops.def"
#undef SONO_BACKEND_DEFINE_required
#undef SONO_BACKEND_DEFINE_defaulted
#undef SONO_BACKEND_DEFINE_optional

void Backend::bias_add(const Tensor& x, const Tensor& bias, const Tensor& y) {
  binary(BinaryOp::add, x, bias.expand(x.shape()), y);
}

void Backend::channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift,
                             const Tensor& y) {
  binary(BinaryOp::mul, x, scale.expand(x.shape()), y);
  bias_add(y, shift, y);
}

void Backend::conv2d_bias_relu_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                                       const Tensor& bias, const Tensor& out, bool relu) {
  conv2d_forward(g, x, w, out);
  if (bias.defined()) bias_add(out, bias, out);
  if (relu) unary(UnaryOp::relu, out, out, 0.0);
}

void Backend::linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                             bool gelu, Precision precision) {
  gemm(x, false, w, true, y, 1.0, 0.0, precision);
  if (gelu) return bias_gelu_forward(y, bias, y);
  bias_add(y, bias, y);
}

void Backend::adamw_multi_step(const std::vector<AdamWParam>& params, double lr, double beta1,
                               double beta2, double eps, double weight_decay) {
  for (const AdamWParam& p : params)
    adamw_step(p.param, p.grad, p.exp_avg, p.exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
               p.step);
}

}  // namespace sono
