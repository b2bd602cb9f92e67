#include <algorithm>
#include <set>

#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

std::vector<int64_t> normalise_dims(std::vector<int64_t> dims, int64_t rank) {
  std::set<int64_t> unique;
  for (int64_t d : dims) unique.insert(wrap_dim(d, rank));
  return {unique.begin(), unique.end()};
}

Shape kept_shape(const Shape& s, const std::vector<int64_t>& dims) {
  Shape k = s;
  for (int64_t d : dims) k[d] = 1;
  return k;
}

Shape dropped_shape(const Shape& s, const std::vector<int64_t>& dims) {
  Shape out;
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i)
    if (!std::binary_search(dims.begin(), dims.end(), i)) out.push_back(s[i]);
  return out;
}

Tensor reduce_forward(ReduceOp op, const Tensor& x_in, const std::vector<int64_t>& dims) {
  const Tensor x = autocast_input(AutocastOp::reduce, x_in);
  SONO_CHECK(x.dtype() != DType::i64, "reduction over an int64 tensor");
  Tensor out = Tensor::empty(kept_shape(x.shape(), dims), x.dtype(), x.device());
  autograd::NoGradGuard no_grad;
  backend_of(x).reduce(op, x.contiguous(), out);
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  dims = normalise_dims(dims, x.dim());
  Tensor kept = reduce_forward(ReduceOp::sum, x, dims);
  Tensor out = keepdim ? kept : kept.reshape(dropped_shape(x.shape(), dims));
  return autograd::record("sum", out, {x}, [s = x.shape(), k = kept.shape()](const Tensor& g) {
    return std::vector<Tensor>{g.reshape(k).expand(s).contiguous()};
  });
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  dims = normalise_dims(dims, x.dim());
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[d];
  return mul(sum(x, dims, keepdim), 1.0 / static_cast<double>(std::max<int64_t>(count, 1)));
}

Tensor amax(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  dims = normalise_dims(dims, x.dim());
  Tensor kept = reduce_forward(ReduceOp::max, x, dims);
  Tensor out = keepdim ? kept : kept.reshape(dropped_shape(x.shape(), dims));
  // Gradient goes to every position equal to the max, split evenly among ties.
  return autograd::record("amax", out, {x}, [x, kept](const Tensor& g) {
    Tensor mask = eq(x, kept);
    Tensor share = div(mask, sum_to(mask, kept.shape()));
    return std::vector<Tensor>{mul(share, g.reshape(kept.shape()))};
  });
}

Tensor sum(const Tensor& x) {
  std::vector<int64_t> all(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) all[i] = i;
  return sum(x, all, false);
}

Tensor mean(const Tensor& x) { return mul(sum(x), 1.0 / static_cast<double>(std::max<int64_t>(x.numel(), 1))); }

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  int64_t lead = g.dim() - static_cast<int64_t>(shape.size());
  SONO_CHECK(lead >= 0, "sum_to: ", shape_str(g.shape()), " has fewer dims than ", shape_str(shape));
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < g.dim(); ++i)
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) dims.push_back(i);
  Tensor r = dims.empty() ? g : sum(g, dims, true);
  return r.reshape(shape);
}

}  // namespace sono
