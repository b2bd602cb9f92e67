#include "autograd/node.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

// c = op(a) op(b) for 3-D operands; batch of 1 broadcasts.
Tensor gemm3(const Tensor& a, bool ta, const Tensor& b, bool tb) {
  int64_t batch = std::max(a.size(0), b.size(0));
  int64_t m = ta ? a.size(2) : a.size(1);
  int64_t n = tb ? b.size(1) : b.size(2);
  Tensor c = Tensor::empty({batch, m, n}, a.dtype(), a.device());
  backend_of(a).gemm(a, ta, b, tb, c, 1.0, 0.0);
  return c;
}

Tensor as_3d(const Tensor& t) {
  autograd::NoGradGuard no_grad;
  Tensor c = t.contiguous();
  if (t.dim() == 2) return c.reshape({1, t.size(0), t.size(1)});
  return c.reshape({-1, t.size(-2), t.size(-1)});
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  SONO_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands need 2+ dims, got ",
             shape_str(a.shape()), " and ", shape_str(b.shape()));
  SONO_CHECK(a.dtype() == b.dtype() && a.device() == b.device(), "matmul: dtype/device mismatch");
  SONO_CHECK(a.size(-1) == b.size(-2), "matmul: inner sizes differ: ", shape_str(a.shape()), " x ",
             shape_str(b.shape()));
  SONO_CHECK(b.dim() == 2 || a.dim() == b.dim(), "matmul: batch ranks differ: ",
             shape_str(a.shape()), " x ", shape_str(b.shape()));
  if (b.dim() > 2)
    for (int64_t i = 0; i < a.dim() - 2; ++i)
      SONO_CHECK(a.size(i) == b.size(i), "matmul: batch dims differ: ", shape_str(a.shape()),
                 " x ", shape_str(b.shape()));
  Tensor a3 = as_3d(a), b3 = as_3d(b);
  Shape out_shape = a.shape();
  out_shape.back() = b.size(-1);
  Tensor out = gemm3(a3, false, b3, false).reshape(out_shape);
  // The closure keeps the 3-D operands only: a and b themselves may be views whose base
  // (a kv projection that k and v slice) the graph need not keep.
  return autograd::record("matmul", out, {a, b},
                          [a3, b3, sa = a.shape(), sb = b.shape(), need_a = a.requires_grad(),
                           need_b = b.requires_grad()](const Tensor& g) {
    Tensor g3 = as_3d(g);
    Tensor ga, gb;
    if (need_a) ga = gemm3(g3, false, b3, true).reshape(sa);
    if (need_b) {
      Tensor per_batch = gemm3(a3, true, g3, false);
      gb = (sb.size() == 2 ? sum(per_batch, {0}) : per_batch).reshape(sb);
    }
    return std::vector<Tensor>{ga, gb};
  });
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  SONO_CHECK(weight.dim() == 2 && x.size(-1) == weight.size(1), "linear: input ",
             shape_str(x.shape()), " does not fit weight ", shape_str(weight.shape()));
  Tensor x2 = as_3d(x.reshape({-1, x.size(-1)}));
  Tensor w3 = as_3d(weight);
  Shape out_shape = x.shape();
  out_shape.back() = weight.size(0);
  Tensor y = gemm3(x2, false, w3, true).reshape(out_shape);
  Tensor out = autograd::record("linear", y, {x, weight},
                                [x2, w3, sx = x.shape(), sw = weight.shape(),
                                 need_x = x.requires_grad(), need_w = weight.requires_grad()](const Tensor& g) {
    Tensor g3 = as_3d(g.reshape({-1, g.size(-1)}));
    Tensor gx = need_x ? gemm3(g3, false, w3, false).reshape(sx) : Tensor();
    Tensor gw = need_w ? gemm3(g3, true, x2, false).reshape(sw) : Tensor();
    return std::vector<Tensor>{gx, gw};
  });
  return bias.defined() ? add(out, bias) : out;
}

}  // namespace sono
