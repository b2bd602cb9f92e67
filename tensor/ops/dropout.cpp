// Dropout and DropPath. Masks are drawn on the host from the given Generator (reproducible on
// every backend) and applied with mul, so backward reuses the very mask of the forward pass.
#include <vector>

#include "tensor/ops.h"

namespace sono {

namespace {

void check_drop_probability(double p, const char* op) {
  SONO_CHECK(p >= 0.0 && p <= 1.0, op, ": drop probability must be in [0, 1], got ", p);
}

// Each element is 1/keep with probability keep, else 0 (inverted scaling: the mean is kept).
Tensor scaled_keep_mask(const Shape& shape, double keep, const Tensor& like, Generator& gen) {
  const double scale = keep > 0.0 ? 1.0 / keep : 0.0;
  std::vector<double> mask(shape_numel(shape));
  for (double& m : mask) m = gen.uniform() < keep ? scale : 0.0;
  return Tensor::from_vector(mask, shape, compute_dtype(like.dtype())).to(like.device());
}

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  check_drop_probability(p, "dropout");
  if (!training || p == 0.0) return x;
  return mul(x, scaled_keep_mask(x.shape(), 1.0 - p, x, gen));
}

Tensor drop_path(const Tensor& x, double p, bool training, Generator& gen) {
  check_drop_probability(p, "drop_path");
  if (!training || p == 0.0) return x;
  SONO_CHECK(x.dim() >= 1, "drop_path: needs a batch dim, got a scalar");
  Shape per_sample(x.dim(), 1);
  per_sample[0] = x.size(0);
  return mul(x, scaled_keep_mask(per_sample, 1.0 - p, x, gen));
}

}  // namespace sono
