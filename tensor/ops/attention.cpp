// Scaled dot-product attention: softmax(q k^T / sqrt(d)) v. Where the backend has a fused
// kernel (CUDA, float32) the forward runs it and keeps no score matrix, and the backward
// recomputes the composition of matmul and softmax to take its gradient; elsewhere, and under
// bf16 autocast (whose products round scores and probabilities as torch's composed attention
// does), the composition itself runs.
#include <cmath>

#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

Tensor composed_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  // Scaling q (Lq x D values) costs less than scaling the scores (Lq x Lk) when Lk > D.
  const Tensor scores = matmul(mul(q, scale), k.transpose(2, 3));
  return matmul(softmax(scores, -1), v);
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  SONO_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
             "scaled_dot_product_attention: q, k, v must be [B, H, L, D], got ",
             shape_str(q.shape()), ", ", shape_str(k.shape()), ", ", shape_str(v.shape()));
  SONO_CHECK(q.size(0) == k.size(0) && k.size(0) == v.size(0) && q.size(1) == k.size(1) &&
                 k.size(1) == v.size(1) && q.size(3) == k.size(3) && k.size(2) == v.size(2),
             "scaled_dot_product_attention: shapes do not fit: q ", shape_str(q.shape()), ", k ",
             shape_str(k.shape()), ", v ", shape_str(v.shape()),
             " (need equal B and H, q and k with equal D, k and v with equal L)");
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  Backend& be = backend_of(q);
  if (autocast_precision(q.device()) != Precision::f32 ||
      !be.supports(BackendOp::attention_forward, {&q, &k, &v}))
    return composed_attention(q, k, v, scale);
  Tensor out = Tensor::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.dtype(), q.device());
  be.attention_forward(q.detach().contiguous(), k.detach().contiguous(), v.detach().contiguous(),
                       scale, out);
  return autograd::record_recomputed("scaled_dot_product_attention", out, {q, k, v},
                                     [scale](const std::vector<Tensor>& qkv) {
    return composed_attention(qkv[0], qkv[1], qkv[2], scale);
  });
}

}  // namespace sono
