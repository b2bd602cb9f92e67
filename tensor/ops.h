#pragma once
// The differentiable ops. Each records itself on the tape (autograd/node.h) and runs on the
// backend of its inputs' device (tensor/backend.h). Images are NHWC; conv weights keep
// PyTorch's [out, in/groups, kh, kw] layout so state dicts match by shape.
#include <optional>
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sono {

// ---- elementwise (broadcasting like PyTorch) ----------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor pow(const Tensor& a, double exponent);
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor abs(const Tensor& a);
Tensor relu(const Tensor& a);
// relu(add(a, b)) in one pass forward and one backward (a residual block's end).
Tensor add_relu(const Tensor& a, const Tensor& b);
Tensor gelu(const Tensor& a);  // erf form, as torch.nn.GELU()
// gelu(x + bias) with bias [C] along the last dim, fused: one pass forward and one backward
// (a Linear's or conv's output, its bias left out, then GELU).
Tensor bias_gelu(const Tensor& x, const Tensor& bias);
Tensor sigmoid(const Tensor& a);
Tensor tanh(const Tensor& a);
Tensor softplus(const Tensor& a);
Tensor eq(const Tensor& a, const Tensor& b);  // 1 where equal, else 0; no gradient
Tensor gt(const Tensor& a, double s);         // 1 where a > s, else 0; no gradient

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul(a, 1.0 / s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
inline Tensor operator-(const Tensor& a) { return neg(a); }

// ---- reductions ---------------------------------------------------------------------------
Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim = false);
Tensor amax(const Tensor& x, std::vector<int64_t> dims, bool keepdim = false);
Tensor sum(const Tensor& x);   // all elements -> scalar (shape {})
Tensor mean(const Tensor& x);  // all elements -> scalar
// Sums `g` down to `shape` (the inverse of broadcasting); used by backward formulas.
Tensor sum_to(const Tensor& g, const Shape& shape);

// ---- linear algebra -----------------------------------------------------------------------
// a [..., m, k] x b [..., k, n] with equal batch dims, or b 2-D [k, n] shared by all.
Tensor matmul(const Tensor& a, const Tensor& b);
// x [..., in], weight [out, in], bias [out] or undefined: x W^T + b, as torch.nn.functional.linear.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
// gelu(linear(x, weight, bias)) for a defined bias; where no gradient is recorded, one kernel
// (the GELU in the GEMM's epilogue on the CPU).
Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias);

// ---- shape --------------------------------------------------------------------------------
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);
// Zero padding of the last dims, PyTorch order: {last_lo, last_hi, second_last_lo, ...}.
Tensor pad(const Tensor& x, const std::vector<int64_t>& pads);

// ---- neural-network ops -------------------------------------------------------------------
struct Conv2dOptions {
  int64_t stride = 1, padding = 0, dilation = 1, groups = 1;
};
// x [N, H, W, Cin], weight [Cout, Cin/groups, KH, KW], bias [Cout] or undefined -> [N, OH, OW, Cout]
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dOptions opt = {});
// relu(conv2d(...)); without gradients to record, one kernel that a backend may fuse (the CPU's
// GEMM paths add the bias and apply the ReLU in their epilogue).
Tensor conv2d_relu(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dOptions opt = {});

// Normalises over the last dim.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);

// x [..., C] (channels last). Training: batch statistics, and running stats updated in place
// (momentum as PyTorch, unbiased variance). Eval: running stats.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                  Tensor running_var, bool training, double momentum, double eps);

Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

// q [B, H, Lq, D], k and v [B, H, Lk, D] -> [B, H, Lq, D]; scale 1/sqrt(D).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v);

// x [N, H, W, C] -> [N, out_h, out_w, C], as F.interpolate(mode="bilinear").
Tensor interpolate_bilinear(const Tensor& x, int64_t out_h, int64_t out_w, bool align_corners);

// x [N, H, W, C] -> [N, 1, 1, C]
Tensor global_avg_pool(const Tensor& x);
// x [N, H, W, C] -> [N, OH, OW, C], as F.max_pool2d(kernel, stride, padding) (padding never wins).
// Where a window holds its maximum more than once the gradient is split among them (torch gives it
// to the first); after a ReLU such ties are zeros, whose gradient the ReLU drops either way.
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding);

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen = default_generator());
// Drops whole samples (dim 0) with probability p, scales survivors by 1/(1-p), as timm.
Tensor drop_path(const Tensor& x, double p, bool training, Generator& gen = default_generator());

// ---- losses (mean over the batch) --------------------------------------------------------------
// logits [N, C], labels int64 [N]; class_weights [C] or undefined; as F.cross_entropy.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, const Tensor& class_weights = {},
                     double label_smoothing = 0.0);
// As F.binary_cross_entropy_with_logits with mean reduction.
Tensor bce_with_logits(const Tensor& logits, const Tensor& target);
// 1 - (2 sum(p t) + smooth) / (sum p + sum t + smooth) per sample, p = sigmoid(logits),
// averaged over the batch (dim 0).
Tensor soft_dice_loss(const Tensor& logits, const Tensor& target, double smooth = 1.0);

}  // namespace sono
