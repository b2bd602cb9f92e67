// LayerNorm (fused kernel) and BatchNorm (fused kernels where the backend has them, else
// composed from ops, so its gradient is the tape's).
#include <numeric>

#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

// An optional per-channel parameter: undefined, or [C] of x's dtype and device.
void check_channel_param(const Tensor& p, const Tensor& x, const char* op, const char* what) {
  if (!p.defined()) return;
  SONO_CHECK(p.dim() == 1 && p.size(0) == x.size(-1), op, ": ", what, " has shape ",
             shape_str(p.shape()), ", expected [", x.size(-1), "] for input ", shape_str(x.shape()));
  SONO_CHECK(p.device() == x.device(), op, ": ", what, " is on ", device_name(p.device()),
             ", input on ", device_name(x.device()));
}

// Weight and bias: optional, [C], and of x's (compute) dtype.
void check_affine(const Tensor& weight, const Tensor& bias, const Tensor& x, const char* op) {
  for (auto [p, what] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    check_channel_param(*p, x, op, what);
    SONO_CHECK(!p->defined() || p->dtype() == compute_dtype(x.dtype()), op, ": ", what, " is ",
               dtype_name(p->dtype()), ", input is ", dtype_name(x.dtype()));
  }
}

Tensor empty_like_if(bool wanted, const Tensor& t) {
  return wanted ? Tensor::empty(t.shape(), t.dtype(), t.device()) : Tensor();
}

// What a fused norm's backward kernel fills: the input's gradient (of g's dtype, x's shape),
// the weight's and the bias's, each allocated where wanted and undefined elsewhere.
std::vector<Tensor> norm_grads(bool need_x, const Tensor& x, const Tensor& g, const Tensor& weight,
                               const Tensor& bias) {
  return {need_x ? Tensor::empty(x.shape(), g.dtype(), g.device()) : Tensor(),
          empty_like_if(weight.defined() && weight.requires_grad(), weight),
          empty_like_if(bias.defined() && bias.requires_grad(), bias)};
}

// Blends `batch` into the running buffer in place: running = (1 - m) running + m batch.
void update_running(const Tensor& running, const Tensor& batch, double momentum) {
  Tensor blended = add(mul(running.to(batch.dtype()), 1.0 - momentum), mul(batch, momentum));
  backend_of(running).copy(blended, running);
}

// centered * scale (+ bias) written into one buffer: the same two roundings, and the same
// gradients, as mul then add, without the product alive beside the result (at BatchNorm's peak
// the input, centered, product and result were all alive at once).
Tensor scale_shift(const Tensor& centered, const Tensor& scale, const Tensor& bias) {
  const Shape& shape = centered.shape();
  Tensor y = Tensor::empty(shape, centered.dtype(), centered.device());
  {
    autograd::NoGradGuard no_grad;  // the broadcast views are kernel arguments
    backend_of(y).binary(BinaryOp::mul, centered, scale.expand(shape), y);
    if (bias.defined()) backend_of(y).binary(BinaryOp::add, y, bias.expand(shape), y);
  }
  auto backward = [centered, scale, bias](const Tensor& g) {
    // The scale's gradient first: its full-size product is gone before gc is made.
    Tensor gs = scale.requires_grad() ? sum_to(mul(g, centered), scale.shape()) : Tensor();
    Tensor gc = centered.requires_grad() ? mul(g, scale) : Tensor();
    Tensor gb = bias.defined() && bias.requires_grad() ? sum_to(g, bias.shape()) : Tensor();
    return std::vector<Tensor>{gc, gs, gb};
  };
  return autograd::record("scale_shift", y, {centered, scale, bias}, std::move(backward));
}

}  // namespace

Tensor layer_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  // A bfloat16 x (autocast's) is read as it is and kept so for backward; y is float32.
  const Tensor x = autocast_input(AutocastOp::layer_norm, x_in);
  SONO_CHECK(x.dim() >= 1 && x.size(-1) > 0, "layer_norm: input ", shape_str(x.shape()),
             " has no last dim to normalise");
  SONO_CHECK(x.dtype() != DType::i64, "layer_norm: int64 input");
  check_affine(weight, bias, x, "layer_norm");
  Tensor xc = x.detach().contiguous();
  const int64_t rows = x.numel() / x.size(-1);
  const DType dtype = compute_dtype(x.dtype());
  Tensor y = Tensor::empty(x.shape(), dtype, x.device());
  Tensor mu = Tensor::empty({rows}, dtype, x.device());
  Tensor rstd = Tensor::empty({rows}, dtype, x.device());
  backend_of(x).layer_norm_forward(xc, weight, bias, eps, y, mu, rstd);
  return autograd::record("layer_norm", y, {x, weight, bias},
                          [xc, weight, bias, mu, rstd, need_x = x.requires_grad()](const Tensor& g) {
    std::vector<Tensor> grads = norm_grads(need_x, xc, g, weight, bias);
    backend_of(g).layer_norm_backward(xc, weight, mu, rstd, g.contiguous(), grads[0], grads[1],
                                      grads[2]);
    return grads;
  });
}

namespace {

// BatchNorm with batch statistics by the backend's fused kernels, which keep x for backward
// instead of a centered copy, and read autocast's bfloat16 activations as they are, returning
// bfloat16 as torch's does. mean and var: the batch's.
Tensor fused_batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                        Tensor& mean, Tensor& var) {
  const Tensor xc = x.detach().contiguous();
  const Shape channels{x.size(-1)};
  const DType stats = compute_dtype(x.dtype());
  mean = Tensor::empty(channels, stats, x.device());
  var = Tensor::empty(channels, stats, x.device());
  Tensor inv_std = Tensor::empty(channels, stats, x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(x).batch_norm_forward(xc, weight, bias, eps, y, mean, var, inv_std);
  return autograd::record("batch_norm", y, {x, weight, bias},
                          [xc, weight, bias, mean, inv_std, need_x = x.requires_grad()](const Tensor& g) {
    std::vector<Tensor> grads = norm_grads(need_x, xc, g, weight, bias);
    backend_of(g).batch_norm_backward(xc, weight, mean, inv_std, g.contiguous(), grads[0],
                                      grads[1], grads[2]);
    return grads;
  });
}

// Eval mode without gradients, as PyTorch's CPU kernel: y = x * a + (b - mean * a) with
// a = weight / sqrt(var + eps), one pass over x where the backend fuses channel_affine.
Tensor running_stats_inference(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               const Tensor& running_mean, const Tensor& running_var, double eps) {
  autograd::NoGradGuard no_grad;
  Tensor scale = pow(add(running_var.to(x.dtype()), eps), -0.5);
  if (weight.defined()) scale = mul(scale, weight);
  Tensor shift = neg(mul(running_mean.to(x.dtype()), scale));
  if (bias.defined()) shift = add(shift, bias);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(x).channel_affine(x.contiguous(), scale.contiguous(), shift.contiguous(), y);
  return y;
}

}  // namespace

Tensor batch_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                  Tensor running_var, bool training, double momentum, double eps) {
  SONO_CHECK(x_in.dim() >= 2, "batch_norm: input ", shape_str(x_in.shape()),
             " needs a batch dim and a channel (last) dim");
  SONO_CHECK(x_in.dtype() != DType::i64, "batch_norm: int64 input");
  check_affine(weight, bias, x_in, "batch_norm");
  check_channel_param(running_mean, x_in, "batch_norm", "running_mean");
  check_channel_param(running_var, x_in, "batch_norm", "running_var");
  SONO_CHECK(running_mean.defined() == running_var.defined(),
             "batch_norm: running_mean and running_var must both be given or both be undefined");
  const int64_t per_channel = x_in.numel() / x_in.size(-1);
  // Without running stats PyTorch normalises with batch statistics in eval mode too.
  const bool batch_stats = training || !running_mean.defined();
  const double unbias = static_cast<double>(per_channel) / static_cast<double>(per_channel - 1);
  auto update_running_stats = [&](const Tensor& mu, const Tensor& var) {
    if (!training || !running_mean.defined()) return;
    autograd::NoGradGuard no_grad;
    update_running(running_mean, mu.detach(), momentum);
    update_running(running_var, mul(var.detach(), unbias), momentum);
  };
  if (batch_stats) {
    SONO_CHECK(per_channel > 1, "batch_norm: expected more than 1 value per channel when "
               "training, got input size ", shape_str(x_in.shape()),
               " (batch of 1 on a 1x1 map: use a larger batch, or eval mode)");
    if (backend_of(x_in).supports(BackendOp::batch_norm_forward, {&x_in})) {
      Tensor mu, var;
      const Tensor x = autocast_input(AutocastOp::batch_norm, x_in);
      const Tensor y = fused_batch_norm(x, weight, bias, eps, mu, var);
      update_running_stats(mu, var);
      return y;
    }
  }
  const Tensor x = autocast_input(AutocastOp::batch_norm_composed, x_in);
  const auto needs_grad = [](const Tensor& t) { return t.defined() && t.requires_grad(); };
  if (!batch_stats && !(autograd::grad_enabled() &&
                        (needs_grad(x) || needs_grad(weight) || needs_grad(bias))))
    return running_stats_inference(x, weight, bias, running_mean, running_var, eps);
  Tensor centered, scale;
  if (batch_stats) {
    std::vector<int64_t> dims(x.dim() - 1);
    std::iota(dims.begin(), dims.end(), 0);
    Tensor mu = mean(x, dims);
    centered = sub(x, mu);
    Tensor var = mean(mul(centered, centered), dims);  // biased, for normalising
    scale = pow(add(var, eps), -0.5);
    update_running_stats(mu, var);
  } else {
    centered = sub(x, running_mean.to(x.dtype()));
    scale = pow(add(running_var.to(x.dtype()), eps), -0.5);
  }
  if (weight.defined()) scale = mul(scale, weight);
  return scale_shift(centered, scale, bias);
}

}  // namespace sono
