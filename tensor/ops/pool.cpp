// Pooling ops, composed from reductions.
#include "tensor/ops.h"

namespace sono {

Tensor global_avg_pool(const Tensor& x) {
  SONO_CHECK(x.dim() == 4, "global_avg_pool: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  return mean(x, {1, 2}, /*keepdim=*/true);
}

}  // namespace sono
