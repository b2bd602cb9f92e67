// Scaled dot-product attention composed from matmul and softmax, so its gradient is the tape's.
#include <cmath>

#include "tensor/ops.h"

namespace sono {

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  SONO_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
             "scaled_dot_product_attention: q, k, v must be [B, H, L, D], got ",
             shape_str(q.shape()), ", ", shape_str(k.shape()), ", ", shape_str(v.shape()));
  SONO_CHECK(q.size(0) == k.size(0) && k.size(0) == v.size(0) && q.size(1) == k.size(1) &&
                 k.size(1) == v.size(1) && q.size(3) == k.size(3) && k.size(2) == v.size(2),
             "scaled_dot_product_attention: shapes do not fit: q ", shape_str(q.shape()), ", k ",
             shape_str(k.shape()), ", v ", shape_str(v.shape()),
             " (need equal B and H, q and k with equal D, k and v with equal L)");
  // Scaling q (Lq x D values) costs less than scaling the scores (Lq x Lk) when Lk > D.
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  Tensor scores = matmul(mul(q, scale), k.transpose(2, 3));
  return matmul(softmax(scores, -1), v);
}

}  // namespace sono
