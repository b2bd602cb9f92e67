// Pooling ops: global average pooling composed from a reduction, max pooling a kernel pair.
#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

Tensor global_avg_pool(const Tensor& x) {
  SONO_CHECK(x.dim() == 4, "global_avg_pool: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  return mean(x, {1, 2}, /*keepdim=*/true);
}

Tensor max_pool2d(const Tensor& x_in, int64_t kernel, int64_t stride, int64_t padding) {
  const Tensor x = autocast_input(AutocastOp::reduce, x_in);  // a bfloat16 activation widens
  SONO_CHECK(x.dim() == 4, "max_pool2d: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  SONO_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel, "max_pool2d: kernel ", kernel,
             ", stride ", stride, ", padding ", padding, ": needs kernel, stride >= 1 and padding at most half the kernel");
  SONO_CHECK(x.dtype() != DType::i64, "max_pool2d: int64 input");
  const int64_t h = x.size(1), w = x.size(2);
  SONO_CHECK(h + 2 * padding >= kernel && w + 2 * padding >= kernel, "max_pool2d: input ", shape_str(x.shape()),
             " with padding ", padding, " is smaller than the ", kernel, "x", kernel, " window");
  const int64_t out_h = (h + 2 * padding - kernel) / stride + 1, out_w = (w + 2 * padding - kernel) / stride + 1;
  Tensor xc;
  {
    autograd::NoGradGuard no_grad;
    xc = x.detach().contiguous();
  }
  const Shape out_shape{x.size(0), out_h, out_w, x.size(3)};
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  // Only a backward reads the winners' positions: inference leaves them out.
  const bool recording = autograd::grad_enabled() && x.requires_grad();
  const Tensor argmax = recording ? Tensor::empty(out_shape, DType::i64, x.device()) : Tensor();
  backend_of(x).max_pool2d_forward(xc, kernel, stride, padding, y, argmax);
  return autograd::record("max_pool2d", y, {x}, [argmax, kernel, stride, padding, in = x.shape()](const Tensor& g) {
    Tensor gx = Tensor::empty(in, g.dtype(), g.device());
    backend_of(g).max_pool2d_backward(g.contiguous(), argmax, kernel, stride, padding, gx);
    return std::vector<Tensor>{gx};
  });
}

}  // namespace sono
