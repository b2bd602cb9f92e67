// conv2d: NHWC input, PyTorch-layout weight [Cout, Cin/groups, KH, KW]; the backend kernel
// convolves, this op checks shapes, adds the bias (in place on the fresh output: no second
// activation-sized tensor, except for autocast's bfloat16 result) and records the backward.
#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

// Output length along one axis, as torch.nn.Conv2d: floor((in + 2p - d (k - 1) - 1) / s) + 1.
int64_t conv_out_len(int64_t in, int64_t k, const Conv2dOptions& o) {
  const int64_t span = o.dilation * (k - 1) + 1;
  return in + 2 * o.padding < span ? 0 : (in + 2 * o.padding - span) / o.stride + 1;
}

Conv2dGeometry conv_geometry(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dOptions& o) {
  SONO_CHECK(x.dim() == 4, "conv2d: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  SONO_CHECK(w.dim() == 4, "conv2d: weight must be [Cout, Cin/groups, KH, KW], got ", shape_str(w.shape()));
  SONO_CHECK(compute_dtype(x.dtype()) == w.dtype() && x.device() == w.device(), "conv2d: input (",
             dtype_name(x.dtype()), ", ", device_name(x.device()), ") and weight (", dtype_name(w.dtype()),
             ", ", device_name(w.device()), ") differ in dtype or device");
  SONO_CHECK(o.stride >= 1 && o.dilation >= 1 && o.padding >= 0 && o.groups >= 1,
             "conv2d: need stride >= 1, dilation >= 1, padding >= 0, groups >= 1; got stride ", o.stride,
             ", dilation ", o.dilation, ", padding ", o.padding, ", groups ", o.groups);
  Conv2dGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), 0, 0,
                   o.stride, o.padding, o.dilation, o.groups};
  SONO_CHECK(g.cin % g.groups == 0 && g.cout % g.groups == 0, "conv2d: input ", shape_str(x.shape()),
             " and weight ", shape_str(w.shape()), ": channels ", g.cin, " -> ", g.cout,
             " are not divisible by groups ", g.groups);
  SONO_CHECK(w.size(1) * g.groups == g.cin, "conv2d: weight ", shape_str(w.shape()), " with groups ",
             g.groups, " expects ", w.size(1) * g.groups, " input channels, but input ",
             shape_str(x.shape()), " has ", g.cin);
  if (bias.defined()) {
    SONO_CHECK(bias.dim() == 1 && bias.size(0) == g.cout, "conv2d: bias ", shape_str(bias.shape()),
               " does not match weight ", shape_str(w.shape()), " (want [", g.cout, "])");
    SONO_CHECK(bias.dtype() == w.dtype() && bias.device() == x.device(),
               "conv2d: bias dtype/device differs from the input's");
  }
  g.oh = conv_out_len(g.h, g.kh, o);
  g.ow = conv_out_len(g.w, g.kw, o);
  SONO_CHECK(g.oh > 0 && g.ow > 0, "conv2d: input ", shape_str(x.shape()), " is too small for kernel ",
             g.kh, "x", g.kw, " with dilation ", o.dilation, " and padding ", o.padding);
  return g;
}

Tensor contiguous_data(const Tensor& t) {
  autograd::NoGradGuard no_grad;
  return t.detach().contiguous();
}

// g with the products' precision that autocast sets on `device` when the kernel is called (as
// matmul's GEMMs, forward and backward, read it).
Conv2dGeometry at_autocast_precision(Conv2dGeometry g, Device device) {
  g.precision = autocast_precision(device);
  return g;
}

// What the backward keeps: the input only when grad_w is needed, the weight only when grad_x is.
struct Conv2dSaved {
  Conv2dGeometry g;
  Tensor x, w;
  Shape w_shape;
  bool need_gx, need_gw, need_gb;

  std::vector<Tensor> backward(const Tensor& grad) const {
    const Tensor gc = grad.contiguous();
    Backend& be = backend_of(gc);
    const Conv2dGeometry now = at_autocast_precision(g, gc.device());
    Tensor gx, gw;
    if (need_gx) {
      gx = Tensor::empty({g.n, g.h, g.w, g.cin}, gc.dtype(), gc.device());
      be.conv2d_backward_input(now, gc, w, gx);
    }
    if (need_gw) {
      gw = Tensor::empty(w_shape, gc.dtype(), gc.device());
      be.conv2d_backward_weight(now, x, gc, gw);
    }
    // NHWC: the bias gradient sums the output gradient over batch and pixels.
    Tensor gb = need_gb ? sum(gc, {0, 1, 2}) : Tensor();
    return {gx, gw, gb};
  }
};

// A conv's operands as its kernels read them.
struct ConvOperands {
  Conv2dGeometry g;
  Tensor xc, wc;
  DType result;  // under autocast, bfloat16 where the backend's activations are

  ConvOperands(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dOptions& opt)
      : g(at_autocast_precision(conv_geometry(x, weight, bias, opt), x.device())),
        xc(autocast_input(AutocastOp::conv2d, contiguous_data(x))),
        wc(contiguous_data(weight)),
        result(autocast_result_dtype(xc)) {}
};

bool records_gradients(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return autograd::grad_enabled() &&
         (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
}

// Without gradients, where the result is float32 or float64: the bias (and the ReLU) in the
// conv's epilogue (the sum is float32: bfloat16 results keep conv2d's one rounding of it).
bool epilogue_applies(const ConvOperands& c, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return !records_gradients(x, weight, bias) && c.result == compute_dtype(c.result);
}

Tensor forward_with_epilogue(const ConvOperands& c, const Tensor& x, const Tensor& bias, bool relu) {
  Tensor out = Tensor::empty({c.g.n, c.g.oh, c.g.ow, c.g.cout}, c.result, x.device());
  backend_of(x).conv2d_bias_relu_forward(c.g, c.xc, c.wc, bias.defined() ? contiguous_data(bias) : Tensor(), out,
                                         relu);
  return out;
}

// conv2d on operands made already (conv2d_relu's, where its epilogue does not apply).
Tensor conv2d_of(const ConvOperands& operands, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (bias.defined() && epilogue_applies(operands, x, weight, bias))
    return forward_with_epilogue(operands, x, bias, false);
  const auto& [g, xc, wc, result] = operands;
  // With a bias, the kernel writes a float32 sum that the bias add rounds once to the result.
  const Shape out_shape{g.n, g.oh, g.ow, g.cout};
  Tensor out = Tensor::empty(out_shape, bias.defined() ? compute_dtype(result) : result, x.device());
  Backend& be = backend_of(x);
  be.conv2d_forward(g, xc, wc, out);
  if (bias.defined()) {
    const Tensor biased = out.dtype() == result ? out : Tensor::empty(out_shape, result, x.device());
    be.bias_add(out, contiguous_data(bias), biased);
    out = biased;
  }
  const bool need_gx = x.requires_grad(), need_gw = weight.requires_grad();
  const bool need_gb = bias.defined() && bias.requires_grad();
  Conv2dSaved saved{g, need_gw ? xc : Tensor(), need_gx ? wc : Tensor(), weight.shape(),
                    need_gx, need_gw, need_gb};
  return autograd::record("conv2d", out, {x, weight, bias},
                          [saved = std::move(saved)](const Tensor& grad) { return saved.backward(grad); });
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dOptions opt) {
  return conv2d_of(ConvOperands(x, weight, bias, opt), x, weight, bias);
}

Tensor conv2d_relu(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dOptions opt) {
  const ConvOperands operands(x, weight, bias, opt);
  if (!epilogue_applies(operands, x, weight, bias)) return relu(conv2d_of(operands, x, weight, bias));
  return forward_with_epilogue(operands, x, bias, true);
}

}  // namespace sono
