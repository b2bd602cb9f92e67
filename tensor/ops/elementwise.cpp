// Elementwise ops with PyTorch broadcasting. Backward formulas are written with the same ops.
// bfloat16 inputs (autocast's activations) are read as float32, except by GELU and ReLU, which
// map them to bfloat16 as torch does.
#include <cmath>

#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

Shape broadcast_shapes(const Tensor& a, const Tensor& b, const char* op) {
  const Shape &sa = a.shape(), &sb = b.shape();
  size_t n = std::max(sa.size(), sb.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - sa.size() ? 1 : sa[i - (n - sa.size())];
    int64_t db = i < n - sb.size() ? 1 : sb[i - (n - sb.size())];
    SONO_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(sa), " and ",
               shape_str(sb), " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

void check_same_kind(const Tensor& a, const Tensor& b, const char* op) {
  SONO_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch (", dtype_name(a.dtype()), " vs ",
             dtype_name(b.dtype()), ")");
  SONO_CHECK(a.device() == b.device(), op, ": device mismatch (", device_name(a.device()), " vs ",
             device_name(b.device()), ")");
  SONO_CHECK(a.dtype() != DType::i64, op, ": int64 tensors are labels, not arithmetic operands");
}

Tensor binary_forward(BinaryOp op, const Tensor& a_in, const Tensor& b_in, const char* name) {
  const Tensor a = autocast_input(AutocastOp::binary, a_in);
  const Tensor b = autocast_input(AutocastOp::binary, b_in);
  check_same_kind(a, b, name);
  Shape s = broadcast_shapes(a, b, name);
  Tensor out = Tensor::empty(s, a.dtype(), a.device());
  autograd::NoGradGuard no_grad;  // the broadcast views are kernel arguments, not graph nodes
  backend_of(a).binary(op, a.expand(s), b.expand(s), out);
  return out;
}

Tensor unary_forward(UnaryOp op, const Tensor& x_in, double alpha = 0.0) {
  const Tensor x = autocast_input(autocast_op(op), x_in);
  SONO_CHECK(x.dtype() != DType::i64, "elementwise math on an int64 tensor");
  Tensor xc = x.is_contiguous() ? x : x.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(x).unary(op, xc, out, alpha);
  return out;
}

using Grads = std::vector<Tensor>;

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::add, a, b, "add");
  return autograd::record("add", out, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
    return Grads{sum_to(g, sa), sum_to(g, sb)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::sub, a, b, "sub");
  return autograd::record("sub", out, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
    return Grads{sum_to(g, sa), sum_to(neg(g), sb)};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::mul, a, b, "mul");
  return autograd::record("mul", out, {a, b}, [a, b](const Tensor& g) {
    // x * x: both gradients are g * x, the same values; one map serves both (BatchNorm's
    // variance squares a map as large as its input).
    if (a.impl_ptr() == b.impl_ptr() && a.requires_grad()) {
      Tensor both = mul(g, a);
      return Grads{both, both};
    }
    return Grads{a.requires_grad() ? sum_to(mul(g, b), a.shape()) : Tensor(),
                 b.requires_grad() ? sum_to(mul(g, a), b.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::div, a, b, "div");
  return autograd::record("div", out, {a, b}, [a, b](const Tensor& g) {
    Tensor ga = a.requires_grad() ? sum_to(div(g, b), a.shape()) : Tensor();
    Tensor gb = b.requires_grad() ? sum_to(neg(div(mul(g, a), mul(b, b))), b.shape()) : Tensor();
    return Grads{ga, gb};
  });
}

Tensor eq(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::eq, a, b, "eq"); }
Tensor gt(const Tensor& a, double s) { return unary_forward(UnaryOp::gt_scalar, a, s); }

Tensor add(const Tensor& a, double s) {
  Tensor out = unary_forward(UnaryOp::add_scalar, a, s);
  return autograd::record("add_scalar", out, {a}, [](const Tensor& g) { return Grads{g}; });
}

Tensor mul(const Tensor& a, double s) {
  Tensor out = unary_forward(UnaryOp::mul_scalar, a, s);
  return autograd::record("mul_scalar", out, {a}, [s](const Tensor& g) { return Grads{mul(g, s)}; });
}

Tensor pow(const Tensor& a, double p) {
  Tensor out = unary_forward(UnaryOp::pow_scalar, a, p);
  return autograd::record("pow", out, {a}, [a, p](const Tensor& g) {
    return Grads{mul(g, mul(pow(a, p - 1.0), p))};
  });
}

Tensor neg(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::neg, a);
  return autograd::record("neg", out, {a}, [](const Tensor& g) { return Grads{neg(g)}; });
}

Tensor exp(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::exp, a);
  return autograd::record("exp", out, {a}, [y = out.detach()](const Tensor& g) { return Grads{mul(g, y)}; });
}

Tensor log(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::log, a);
  return autograd::record("log", out, {a}, [a](const Tensor& g) { return Grads{div(g, a)}; });
}

Tensor sqrt(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::sqrt, a);
  return autograd::record("sqrt", out, {a}, [y = out.detach()](const Tensor& g) {
    return Grads{div(mul(g, 0.5), y)};
  });
}

Tensor abs(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::abs, a);
  return autograd::record("abs", out, {a}, [a](const Tensor& g) {
    return Grads{mul(g, unary_forward(UnaryOp::sign, a))};
  });
}

namespace {

// g where the ReLU's output y is > 0, in one pass.
Tensor relu_input_grad(const Tensor& y, const Tensor& g) {
  // A bfloat16 activation (CUDA autocast) is read widened: the binary kernels take float32.
  const Tensor y_read = y.dtype() == DType::bf16 ? y.to(DType::f32) : y;
  Tensor grad = Tensor::empty(y.shape(), y_read.dtype(), y.device());
  backend_of(grad).binary(BinaryOp::relu_grad, g, y_read, grad);
  return grad;
}

}  // namespace

Tensor relu(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::relu, a);
  // The output is > 0 exactly where the input is, and the next op (a conv) saves it anyway:
  // saving the input instead would keep a second map alive, as PyTorch's relu does not.
  return autograd::record("relu", out, {a}, [y = out.detach()](const Tensor& g) {
    return Grads{relu_input_grad(y, g)};
  });
}

Tensor add_relu(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::add_relu, a, b, "add_relu");
  return autograd::record("add_relu", out, {a, b}, [y = out.detach(), sa = a.shape(), sb = b.shape()](const Tensor& g) {
    const Tensor grad = relu_input_grad(y, g);
    return Grads{sum_to(grad, sa), sum_to(grad, sb)};
  });
}

namespace {

// grad_y * GELU'(x + bias) in one kernel; x is contiguous.
Tensor gelu_input_grad(const Tensor& x, const Tensor& bias, const Tensor& grad_y) {
  Tensor gy = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();
  Tensor grad_x = Tensor::empty(x.shape(), compute_dtype(x.dtype()), x.device());
  backend_of(x).gelu_backward(x, bias, gy, grad_x);
  return grad_x;
}

}  // namespace

Tensor gelu(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::gelu, a);
  return autograd::record("gelu", out, {a}, [xc = a.detach().contiguous()](const Tensor& g) {
    return Grads{gelu_input_grad(xc, Tensor(), g)};
  });
}

Tensor bias_gelu(const Tensor& x_in, const Tensor& bias) {
  const Tensor x = autocast_input(AutocastOp::bias_gelu, x_in);
  SONO_CHECK(compute_dtype(x.dtype()) == bias.dtype() && x.device() == bias.device(),
             "bias_gelu: input (", dtype_name(x.dtype()), ", ", device_name(x.device()),
             ") and bias (", dtype_name(bias.dtype()), ", ", device_name(bias.device()),
             ") do not match");
  SONO_CHECK(x.dim() >= 1 && bias.dim() == 1 && bias.size(0) == x.size(-1), "bias_gelu: bias ",
             shape_str(bias.shape()), " does not fit the last dim of ", shape_str(x.shape()));
  Tensor xc = x.detach().contiguous(), bc = bias.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(x).bias_gelu_forward(xc, bc, out);
  return autograd::record("bias_gelu", out, {x, bias}, [xc, bc, bias](const Tensor& g) {
    Tensor gx = gelu_input_grad(xc, bc, g);
    return Grads{gx, bias.requires_grad() ? sum_to(gx, bc.shape()) : Tensor()};
  });
}

Tensor sigmoid(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::sigmoid, a);
  return autograd::record("sigmoid", out, {a}, [y = out.detach()](const Tensor& g) {
    return Grads{mul(g, mul(y, add(neg(y), 1.0)))};
  });
}

Tensor tanh(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::tanh, a);
  return autograd::record("tanh", out, {a}, [y = out.detach()](const Tensor& g) {
    return Grads{mul(g, add(neg(mul(y, y)), 1.0))};
  });
}

Tensor softplus(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::softplus, a);
  return autograd::record("softplus", out, {a}, [a](const Tensor& g) {
    return Grads{mul(g, unary_forward(UnaryOp::sigmoid, a))};
  });
}

}  // namespace sono
