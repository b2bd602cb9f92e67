#pragma once
// The kernel interface every backend implements (CPU in tensor/cpu, CUDA in cuda/).
// Ops (tensor/ops/*.cpp) allocate outputs, check shapes and call these; kernels never see
// autograd. Unless a signature says otherwise, tensors passed in are contiguous and of one dtype.
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sono {

enum class UnaryOp {
  neg, exp, log, sqrt, abs, sign, relu, gelu, sigmoid, tanh, softplus,
  add_scalar, mul_scalar, pow_scalar, gt_scalar
};
enum class BinaryOp { add, sub, mul, div, eq };
enum class ReduceOp { sum, max };

struct Conv2dGeometry {
  int64_t n, h, w, cin, cout, kh, kw, oh, ow;
  int64_t stride, padding, dilation, groups;

  bool depthwise() const { return groups == cin && cout == cin; }  // one filter per channel
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Whether the kernels read and write bfloat16 where tensor/autocast.h says (the CUDA
  // backend's); elsewhere ops widen bfloat16 inputs to float32 first.
  virtual bool reads_bf16() const { return false; }

  // Waits until the work queued on the device is done (timing; a GPU runs asynchronously).
  virtual void synchronize() {}

  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr) = 0;

  // dst = src elementwise; both may be any strided views of the same shape (src may have
  // stride 0 to broadcast); dtypes may differ (conversion).
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  virtual void fill(const Tensor& dst, double value) = 0;
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) = 0;
  // a and b are views already broadcast to out's shape (stride 0 on broadcast dims).
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // Fused GELU (erf form) of v = x + bias, bias [C] added along the last dim: one pass over
  // memory instead of a bias add, a GELU and, backward, a GELU' and a product. All contiguous.
  // y = GELU(v).
  virtual void bias_gelu_forward(const Tensor& x, const Tensor& bias, const Tensor& y) = 0;
  // grad_x = grad_y * GELU'(v); bias may be undefined (plain GELU). The bias gradient is
  // grad_x summed over rows, left to the op.
  virtual void gelu_backward(const Tensor& x, const Tensor& bias, const Tensor& grad_y,
                             const Tensor& grad_x) = 0;
  // y = x + bias along the last dim (y may be x). This default is a broadcast add; the CUDA
  // backend also reads and writes bfloat16 activations here.
  virtual void bias_add(const Tensor& x, const Tensor& bias, const Tensor& y) {
    binary(BinaryOp::add, x, bias.expand(x.shape()), y);
  }

  // out has x's rank with size 1 on the reduced dims.
  virtual void reduce(ReduceOp op, const Tensor& x, const Tensor& out) = 0;
  // c[b] = alpha * op(a[b]) op(b[b]) + beta * c[b]; a, b, c are 3-D [batch, rows, cols];
  // a batch of 1 in a or b is shared across c's batch.
  virtual void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                    double alpha, double beta) = 0;
  // Linear's forward: y[0] = x[0] w[0]^T + bias, then GELU when `gelu`; x [1, rows, K],
  // w [1, N, K], bias [N], y [1, rows, N]. This default runs the GEMM then one elementwise pass;
  // a backend may apply both in the GEMM's epilogue, while the tile is still in cache.
  virtual void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                              const Tensor& y, bool gelu) {
    gemm(x, false, w, true, y, 1.0, 0.0);
    if (gelu) return bias_gelu_forward(y, bias, y);
    bias_add(y, bias, y);
  }

  // Fused attention, where has_fused_attention(q, k, v); elsewhere the op composes matmul and
  // softmax. out = softmax(q k^T scale) v over q [B, H, Lq, D], k and v [B, H, Lk, D],
  // contiguous, without the score matrix.
  virtual bool has_fused_attention(const Tensor& q, const Tensor& k, const Tensor& v) const {
    return false;
  }
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                 const Tensor& out) {
    fail("attention_forward: backend ", name(), " has no fused attention");
  }

  // NHWC x/out/grad_x, weight [Cout, Cin/groups, KH, KW]; each kernel overwrites its output.
  virtual void conv2d_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                              const Tensor& out) = 0;
  virtual void conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out,
                                     const Tensor& w, const Tensor& grad_x) = 0;
  virtual void conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& x,
                                      const Tensor& grad_out, const Tensor& grad_w) = 0;

  // Rows of length C = last dim. mean and rstd [rows] are saved for backward.
  virtual void layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                                  const Tensor& y, const Tensor& mean, const Tensor& rstd) = 0;
  virtual void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                                   const Tensor& rstd, const Tensor& grad_y,
                                   const Tensor& grad_x, const Tensor& grad_w,
                                   const Tensor& grad_b) = 0;

  // Fused BatchNorm with batch statistics (training), where has_fused_batch_norm(x); elsewhere
  // the op composes it from reductions and elementwise ops. Over rows of x [R, C], channels
  // last: per channel the mean, the biased variance and inv_std = 1 / sqrt(var + eps), and
  // y = (x - mean) inv_std w + b (w, b may be undefined).
  virtual bool has_fused_batch_norm(const Tensor& x) const { return false; }
  virtual void batch_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                                  const Tensor& y, const Tensor& mean, const Tensor& var,
                                  const Tensor& inv_std) {
    fail("batch_norm_forward: backend ", name(), " has no fused BatchNorm");
  }
  // grad_x, grad_w, grad_b may be undefined.
  virtual void batch_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                                   const Tensor& inv_std, const Tensor& grad_y,
                                   const Tensor& grad_x, const Tensor& grad_w,
                                   const Tensor& grad_b) {
    fail("batch_norm_backward: backend ", name(), " has no fused BatchNorm");
  }

  // Over the last dim of contiguous rows.
  virtual void softmax_forward(const Tensor& x, const Tensor& y, bool log) = 0;
  virtual void softmax_backward(const Tensor& y, const Tensor& grad_y, const Tensor& grad_x,
                                bool log) = 0;

  // NHWC bilinear; backward accumulates into a zeroed grad_x.
  virtual void resize_bilinear_forward(const Tensor& x, const Tensor& y, bool align_corners) = 0;
  virtual void resize_bilinear_backward(const Tensor& grad_y, const Tensor& grad_x,
                                        bool align_corners) = 0;

  // One torch.optim.AdamW step for one parameter (step counts from 1).
  virtual void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                          const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                          double eps, double weight_decay, int64_t step) = 0;

  // ---- multi-tensor AdamW ----
  // One parameter of a group and its state; `step` is its own count (from 1), as in torch.
  struct AdamWParam {
    Tensor param, grad, exp_avg, exp_avg_sq;
    int64_t step;
  };
  // One AdamW step for every parameter of a group (shared hyperparameters): the same result as
  // adamw_step on each. This default loops; the CUDA backend updates them all in one launch.
  virtual void adamw_multi_step(const std::vector<AdamWParam>& params, double lr, double beta1,
                                double beta2, double eps, double weight_decay) {
    for (const AdamWParam& p : params)
      adamw_step(p.param, p.grad, p.exp_avg, p.exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
                 p.step);
  }
};

Backend& backend(Device device);
inline Backend& backend_of(const Tensor& t) { return backend(t.device()); }
// The CUDA backend registers itself here when compiled in. Registering for Device::cpu replaces
// the built-in CPU backend (a profiling wrapper does this); nullptr restores it.
void register_backend(Device device, Backend* b);

}  // namespace sono
