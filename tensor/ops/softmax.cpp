// softmax / log_softmax along any dim: the kernel works on the last dim of contiguous rows, so
// another dim is first permuted to the end (and the result permuted back).
#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

Tensor softmax_last_dim(const Tensor& x, bool log) {
  Tensor xc = x.detach().contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(x).softmax_forward(xc, y, log);
  // Backward needs only the output; a detached handle avoids a cycle through y's own node.
  return autograd::record(log ? "log_softmax" : "softmax", y, {x}, [y = y.detach(), log](const Tensor& g) {
    Tensor gx = Tensor::empty(y.shape(), y.dtype(), y.device());
    backend_of(g).softmax_backward(y, g.contiguous(), gx, log);
    return std::vector<Tensor>{gx};
  });
}

Tensor softmax_along(const Tensor& x_in, int64_t dim, bool log) {
  const Tensor x = autocast_input(AutocastOp::softmax, x_in);
  const char* name = log ? "log_softmax" : "softmax";
  SONO_CHECK(x.dim() >= 1, name, ": needs at least one dim, got a scalar");
  SONO_CHECK(x.dtype() != DType::i64, name, ": int64 input");
  dim = wrap_dim(dim, x.dim());
  const int64_t last = x.dim() - 1;
  if (dim == last) return softmax_last_dim(x, log);
  std::vector<int64_t> to_end;  // every other dim in order, then `dim`
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d != dim) to_end.push_back(d);
  to_end.push_back(dim);
  std::vector<int64_t> back(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) back[to_end[i]] = i;
  return softmax_last_dim(x.permute(to_end), log).permute(back);
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_along(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_along(x, dim, true); }

}  // namespace sono
