#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

// c = op(a) op(b) for 3-D operands; batch of 1 broadcasts. c is of dtype `result`: by default
// float32 for bfloat16 operands (gradients), autocast_result_dtype for forwards.
Tensor gemm3(const Tensor& a, bool ta, const Tensor& b, bool tb, DType result) {
  int64_t batch = std::max(a.size(0), b.size(0));
  int64_t m = ta ? a.size(2) : a.size(1);
  int64_t n = tb ? b.size(1) : b.size(2);
  Tensor c = Tensor::empty({batch, m, n}, result, a.device());
  backend_of(a).gemm(a, ta, b, tb, c, 1.0, 0.0, autocast_precision(a.device()));
  return c;
}
Tensor gemm3(const Tensor& a, bool ta, const Tensor& b, bool tb) {
  return gemm3(a, ta, b, tb, compute_dtype(b.dtype()));
}

// x [1, rows, K] times w [1, N, K] transposed, plus bias [N], then GELU when `gelu`: Linear's
// forward in one kernel.
Tensor gemm_bias(const Tensor& x, const Tensor& w, const Tensor& bias, bool gelu = false) {
  SONO_CHECK(bias.dim() == 1 && bias.size(0) == w.size(1), "linear: bias ", shape_str(bias.shape()),
             " does not fit weight ", shape_str(w.shape()));
  SONO_CHECK(bias.dtype() == compute_dtype(x.dtype()) && bias.device() == x.device(),
             "linear: bias dtype/device differs from the input's");
  Tensor y = Tensor::empty({1, x.size(1), w.size(1)}, autocast_result_dtype(x), x.device());
  backend_of(x).linear_forward(x, w, bias.contiguous(), y, gelu, autocast_precision(x.device()));
  return y;
}

Tensor as_3d(const Tensor& t) {
  autograd::NoGradGuard no_grad;
  Tensor c = t.contiguous();
  if (t.dim() == 2) return c.reshape({1, t.size(0), t.size(1)});
  return c.reshape({-1, t.size(-2), t.size(-1)});
}

// The output gradient g3 as a backward's GEMMs read it: after a forward on bfloat16 operands
// (autocast), rounded to bfloat16 once here, for both GEMMs, rather than in each of them.
Tensor gemm_gradient(const Tensor& g3, bool bf16_forward) {
  if (!bf16_forward || g3.dtype() != DType::f32) return g3;
  autograd::NoGradGuard no_grad;
  return g3.to(DType::bf16);
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  SONO_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands need 2+ dims, got ",
             shape_str(a.shape()), " and ", shape_str(b.shape()));
  SONO_CHECK(compute_dtype(a.dtype()) == compute_dtype(b.dtype()) && a.device() == b.device(),
             "matmul: dtype/device mismatch");
  SONO_CHECK(a.size(-1) == b.size(-2), "matmul: inner sizes differ: ", shape_str(a.shape()), " x ",
             shape_str(b.shape()));
  SONO_CHECK(b.dim() == 2 || a.dim() == b.dim(), "matmul: batch ranks differ: ",
             shape_str(a.shape()), " x ", shape_str(b.shape()));
  if (b.dim() > 2)
    for (int64_t i = 0; i < a.dim() - 2; ++i)
      SONO_CHECK(a.size(i) == b.size(i), "matmul: batch dims differ: ", shape_str(a.shape()),
                 " x ", shape_str(b.shape()));
  const Tensor a3 = autocast_input(AutocastOp::matmul, as_3d(a));
  const Tensor b3 = autocast_input(AutocastOp::matmul, as_3d(b));
  Shape out_shape = a.shape();
  out_shape.back() = b.size(-1);
  Tensor out = gemm3(a3, false, b3, false, autocast_result_dtype(a3)).reshape(out_shape);
  // Each operand's gradient reads the other one: the backward keeps only those it needs.
  const Tensor saved_a = b.requires_grad() ? a3 : Tensor(), saved_b = a.requires_grad() ? b3 : Tensor();
  const bool bf16_forward = a3.dtype() == DType::bf16 || b3.dtype() == DType::bf16;
  return autograd::record("matmul", out, {a, b},
                          [saved_a, saved_b, bf16_forward, a_shape = a.shape(), b_shape = b.shape()](const Tensor& g) {
    const Tensor g3 = gemm_gradient(as_3d(g), bf16_forward);
    Tensor ga, gb;
    if (saved_b.defined()) ga = gemm3(g3, false, saved_b, true).reshape(a_shape);
    if (saved_a.defined()) {
      Tensor per_batch = gemm3(saved_a, true, g3, false);
      gb = (b_shape.size() == 2 ? sum(per_batch, {0}) : per_batch).reshape(b_shape);
    }
    return std::vector<Tensor>{ga, gb};
  });
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  SONO_CHECK(weight.dim() == 2 && x.size(-1) == weight.size(1), "linear: input ",
             shape_str(x.shape()), " does not fit weight ", shape_str(weight.shape()));
  const Tensor x2 = autocast_input(AutocastOp::linear, as_3d(x.reshape({-1, x.size(-1)})));
  const Tensor w3 = as_3d(weight);
  Shape out_shape = x.shape();
  out_shape.back() = weight.size(0);
  Tensor y = bias.defined() ? gemm_bias(x2, w3, bias)
                            : gemm3(x2, false, w3, true, autocast_result_dtype(x2));
  // The backward keeps the input (bf16 under autocast) only for grad_w, the weight only for grad_x.
  const Tensor saved_x = weight.requires_grad() ? x2 : Tensor(), saved_w = x.requires_grad() ? w3 : Tensor();
  const bool need_gb = bias.defined() && bias.requires_grad();
  const bool bf16_forward = x2.dtype() == DType::bf16;
  return autograd::record("linear", y.reshape(out_shape), {x, weight, bias},
                          [saved_x, saved_w, need_gb, bf16_forward, x_shape = x.shape(), w_shape = weight.shape()](const Tensor& g) {
    const Tensor g3 = as_3d(g.reshape({-1, g.size(-1)}));
    const Tensor g_product = gemm_gradient(g3, bf16_forward && (saved_w.defined() || saved_x.defined()));
    Tensor gx = saved_w.defined() ? gemm3(g_product, false, saved_w, false).reshape(x_shape) : Tensor();
    Tensor gw = saved_x.defined() ? gemm3(g_product, true, saved_x, false).reshape(w_shape) : Tensor();
    Tensor gb = need_gb ? sum(g3, {0, 1}) : Tensor();
    return std::vector<Tensor>{gx, gw, gb};
  });
}

Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  SONO_CHECK(bias.defined(), "linear_gelu: needs a bias");
  const bool needs_grad = autograd::grad_enabled() &&
                          (x.requires_grad() || weight.requires_grad() || bias.requires_grad());
  if (needs_grad) return gelu(linear(x, weight, bias));
  SONO_CHECK(weight.dim() == 2 && x.size(-1) == weight.size(1), "linear: input ",
             shape_str(x.shape()), " does not fit weight ", shape_str(weight.shape()));
  Shape out_shape = x.shape();
  out_shape.back() = weight.size(0);
  const Tensor x2 = autocast_input(AutocastOp::linear, as_3d(x.reshape({-1, x.size(-1)})));
  return gemm_bias(x2, as_3d(weight), bias, true).reshape(out_shape);
}

}  // namespace sono
