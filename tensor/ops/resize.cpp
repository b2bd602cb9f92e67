// Bilinear interpolation of NHWC images, as F.interpolate(mode="bilinear", size=...).
#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

Tensor interpolate_bilinear(const Tensor& x_in, int64_t out_h, int64_t out_w, bool align_corners) {
  const Tensor x = autocast_input(AutocastOp::resize, x_in);
  SONO_CHECK(x.dim() == 4, "interpolate_bilinear: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  SONO_CHECK(out_h > 0 && out_w > 0, "interpolate_bilinear: output size ", out_h, "x", out_w,
             " must be positive");
  SONO_CHECK(x.dtype() != DType::i64, "interpolate_bilinear: int64 input");
  Tensor xc;
  {
    autograd::NoGradGuard no_grad;
    xc = x.detach().contiguous();
  }
  Tensor y = Tensor::empty({x.size(0), out_h, out_w, x.size(3)}, x.dtype(), x.device());
  backend_of(x).resize_bilinear_forward(xc, y, align_corners);
  return autograd::record("interpolate_bilinear", y, {x}, [in = x.shape(), align_corners](const Tensor& g) {
    Tensor gx = Tensor::zeros(in, g.dtype(), g.device());
    backend_of(g).resize_bilinear_backward(g.contiguous(), gx, align_corners);
    return std::vector<Tensor>{gx};
  });
}

}  // namespace sono
