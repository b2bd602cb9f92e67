// Pooling ops, composed from reductions.
#include <algorithm>

#include "tensor/autocast.h"
#include "tensor/ops.h"

namespace sono {

Tensor global_avg_pool(const Tensor& x) {
  SONO_CHECK(x.dim() == 4, "global_avg_pool: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  return mean(x, {1, 2}, /*keepdim=*/true);
}

// Composed from views and amax, so every backend runs it with the kernels it has: the padded map
// is viewed as [N, H/s, s, W/s, s, C], where each of the k*k window offsets is a plain slice.
Tensor max_pool2d(const Tensor& x_in, int64_t kernel, int64_t stride, int64_t padding) {
  const Tensor x = autocast_input(AutocastOp::reduce, x_in);  // a bfloat16 activation widens, as amax
  SONO_CHECK(x.dim() == 4, "max_pool2d: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  SONO_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel, "max_pool2d: kernel ", kernel,
             ", stride ", stride, ", padding ", padding, ": needs kernel, stride >= 1 and padding at most half the kernel");
  const int64_t h = x.size(1), w = x.size(2);
  const int64_t out_h = (h + 2 * padding - kernel) / stride + 1, out_w = (w + 2 * padding - kernel) / stride + 1;
  SONO_CHECK(h + 2 * padding >= kernel && w + 2 * padding >= kernel, "max_pool2d: input ", shape_str(x.shape()),
             " with padding ", padding, " is smaller than the ", kernel, "x", kernel, " window");
  // Rows (and columns) read: offset d + stride * i for i < out, d < kernel; the padded extent is a
  // multiple of the stride that covers them, cut or padded further below.
  const int64_t reach = (kernel - 1) / stride;
  const int64_t padded_h = stride * (out_h + reach), padded_w = stride * (out_w + reach);
  const int64_t below = std::max<int64_t>(0, padded_h - h - padding), right = std::max<int64_t>(0, padded_w - w - padding);
  const std::vector<int64_t> pads{0, 0, padding, right, padding, below};
  // pad() fills zeros; adding log(0) = -inf there (one map, broadcast over images and
  // channels) keeps the padding out of every maximum.
  Tensor border = log(pad(Tensor::ones({1, h, w, 1}, x.dtype(), x.device()), pads));
  Tensor padded = add(pad(x, pads), border).slice(1, 0, padded_h).slice(2, 0, padded_w);
  Tensor cells = padded.reshape({x.size(0), padded_h / stride, stride, padded_w / stride, stride, x.size(3)});
  std::vector<Tensor> windows;
  for (int64_t dy = 0; dy < kernel; ++dy)
    for (int64_t dx = 0; dx < kernel; ++dx)
      windows.push_back(cells.slice(1, dy / stride, dy / stride + out_h)
                            .slice(2, dy % stride, dy % stride + 1)
                            .slice(3, dx / stride, dx / stride + out_w)
                            .slice(4, dx % stride, dx % stride + 1));
  return amax(cat(windows, 2), {2, 4}).reshape({x.size(0), out_h, out_w, x.size(3)});
}

}  // namespace sono
