#pragma once
// KernelBackend: the sono::Backend methods that run our kernels, written once for both builds.
// CudaBackend (cuda/cuda_backend.cu, nvcc) adds device memory, host<->device transfers and cuBLAS;
// the kernel tests derive an emulated backend over host memory from the same class, so the
// glue from tensors to kernel arguments runs in CI too.
#include <functional>

#include "cuda/conv_impl.h"
#include "cuda/kernels/adamw.cuh"
#include "cuda/kernels/attention.cuh"
#include "cuda/kernels/batchnorm.cuh"
#include "cuda/kernels/bf16.cuh"
#include "cuda/kernels/conv.cuh"
#include "cuda/kernels/depthwise_conv.cuh"
#include "cuda/kernels/elementwise.cuh"
#include "cuda/kernels/layernorm.cuh"
#include "cuda/kernels/pool.cuh"
#include "cuda/kernels/reduce.cuh"
#include "cuda/kernels/resize.cuh"
#include "cuda/kernels/softmax.cuh"
#include "tensor/backend.h"
#include "tensor/strided_layout.h"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

// Calls f(T{}) with T = float, double or int64_t per dtype.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  if (dtype == DType::f32) f(float{});
  else if (dtype == DType::f64) f(double{});
  else if (dtype == DType::i64) f(int64_t{});
  else fail("CUDA: this kernel takes float32, float64 or int64, got ", dtype_name(dtype));
}
// The same plus bfloat16, which copies convert to and from.
template <typename F>
void dispatch_copy_dtype(DType dtype, F&& f) {
  if (dtype == DType::bf16) f(bfloat16{});
  else dispatch_dtype(dtype, f);
}

class KernelBackend : public Backend {
 public:
  bool reads_bf16() const override { return true; }

  bool supports(BackendOp op, OpOperands operands) const override {
    const Tensor* const* t = operands.begin();
    switch (op) {
      case BackendOp::attention_forward: return fused_attention_fits(*t[0], *t[1], *t[2]);
      case BackendOp::batch_norm_forward:
      case BackendOp::batch_norm_backward:
        return t[0]->dtype() == DType::f32 || t[0]->dtype() == DType::bf16;
      default: return Backend::supports(op, operands);
    }
  }

  // Device to device: the strided copy kernel. Host to device and back: one contiguous
  // transfer of raw bytes, with strides and dtype conversion done on whichever side is not
  // contiguous (the CPU backend on the host, the copy kernel on the device).
  void copy(const Tensor& src, const Tensor& dst) override {
    SONO_CHECK(src.shape() == dst.shape(), "CUDA copy: shapes ", shape_str(src.shape()), " and ",
               shape_str(dst.shape()), " differ");
    if (src.device() == Device::cuda && dst.device() == Device::cuda) {
      copy_on_device(src.shape(), src.raw_data(), src.strides(), src.dtype(), dst.raw_data(),
                     dst.strides(), dst.dtype());
    } else if (dst.device() == Device::cuda) {
      upload(src, dst);
    } else {
      download(src, dst);
    }
  }

  void fill(const Tensor& dst, double value) override {
    auto layout = merge_dims<1>(dst.shape(), {&dst.strides()});
    const auto space = make_space<1>(layout.shape, layout.strides);
    dispatch_dtype(dst.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::fill<T>(space, dst.numel(), dst.data<T>(), static_cast<T>(value), stream());
    });
  }

  // GELU and ReLU also map autocast's bfloat16 activations (to bfloat16); every other op is
  // float32.
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) override {
    if (op == UnaryOp::gelu) return bias_act_rows(x, Tensor(), out, Activation::gelu);
    if (op == UnaryOp::relu) return bias_act_rows(x, Tensor(), out, Activation::relu);
    const float* xp = f32(x, "unary");
    float* yp = f32(out, "unary");
    const int64_t n = x.numel();
    const float a = static_cast<float>(alpha);
    auto run = [&](auto f) { unary_map(n, xp, yp, f, stream()); };
    switch (op) {
      case UnaryOp::neg: return run(unary::Neg{});
      case UnaryOp::exp: return run(unary::Exp{});
      case UnaryOp::log: return run(unary::Log{});
      case UnaryOp::sqrt: return run(unary::Sqrt{});
      case UnaryOp::abs: return run(unary::Abs{});
      case UnaryOp::sign: return run(unary::Sign{});
      case UnaryOp::relu:
      case UnaryOp::gelu: break;  // above
      case UnaryOp::sigmoid: return run(unary::Sigmoid{});
      case UnaryOp::tanh: return run(unary::Tanh{});
      case UnaryOp::softplus: return run(unary::Softplus{});
      case UnaryOp::add_scalar: return run(unary::AddScalar{a});
      case UnaryOp::mul_scalar: return run(unary::MulScalar{a});
      case UnaryOp::pow_scalar: return run(unary::PowScalar{a});
      case UnaryOp::gt_scalar: return run(unary::GtScalar{a});
    }
  }

  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override {
    auto layout = merge_dims<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()});
    const auto space = make_space<3>(layout.shape, layout.strides);
    const float* ap = f32_strided(a, "binary");
    const float* bp = f32_strided(b, "binary");
    float* op_out = f32_strided(out, "binary");
    auto run = [&](auto f) { binary_map(space, out.numel(), ap, bp, op_out, f, stream()); };
    switch (op) {
      case BinaryOp::add: return run(binary::Add{});
      case BinaryOp::sub: return run(binary::Sub{});
      case BinaryOp::mul: return run(binary::Mul{});
      case BinaryOp::div: return run(binary::Div{});
      case BinaryOp::eq: return run(binary::Eq{});
      case BinaryOp::relu_grad: return run(binary::ReluGrad{});
      case BinaryOp::add_relu: return run(binary::AddRelu{});
    }
  }

  // x and y may be bfloat16 (autocast's activations) in these three.
  void bias_gelu_forward(const Tensor& x, const Tensor& bias, const Tensor& y) override {
    bias_act_rows(x, bias, y, Activation::gelu);
  }
  void bias_add(const Tensor& x, const Tensor& bias, const Tensor& y) override {
    bias_act_rows(x, bias, y, Activation::none);
  }
  void gelu_backward(const Tensor& x, const Tensor& bias, const Tensor& grad_y,
                     const Tensor& grad_x) override {
    const int64_t cols = bias.defined() ? bias.numel() : 1;
    with_floats(x, "gelu", [&](const auto* xp) {
      cuda::gelu_backward(x.numel() / cols, cols, xp, f32_or_null(bias, "gelu"),
                          f32(grad_y, "gelu"), f32(grad_x, "gelu"), stream());
    });
  }
  // The GEMM, then the bias (and GELU) in one pass. A bfloat16 y is rounded once, from a
  // float32 product, as torch's addmm does.
  void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                      bool gelu, Precision precision) override {
    const Activation act = gelu ? Activation::gelu : Activation::none;
    if (y.dtype() != DType::bf16) {
      gemm(x, false, w, true, y, 1.0, 0.0, precision);
      return bias_act_rows(y, bias, y, act);
    }
    const Tensor product = Tensor::empty(y.shape(), DType::f32, Device::cuda);
    gemm(x, false, w, true, product, 1.0, 0.0, precision);
    bias_act_rows(product, bias, y, act);
  }

  void reduce(ReduceOp op, const Tensor& x, const Tensor& out) override {
    const auto space = make_reduce_space(x.shape(), x.strides(), out.shape());
    const float* xp = f32_strided(x, "reduce");  // the space holds x's strides
    float* yp = f32(out, "reduce");
    Buffer partials(*this, plan_reduce(space).workspace() * sizeof(double));
    if (op == ReduceOp::sum) reduce_sum(space, xp, yp, partials.doubles(), stream());
    else reduce_max(space, xp, yp, partials.doubles(), stream());
  }

  // At bf16 precision, or given a bfloat16 operand or result (autocast's activations),
  // gemm_bf16 multiplies bfloat16 operands (float32 ones go to converted copies) with float32
  // accumulation; otherwise gemm_native takes the operands as they are.
  void gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c, double alpha,
            double beta, Precision precision) override {
    const bool bf16_tensor =
        a.dtype() == DType::bf16 || b.dtype() == DType::bf16 || c.dtype() == DType::bf16;
    if (!bf16_tensor && (c.dtype() != DType::f32 || precision != Precision::bf16)) {
      if (audit_library("cublas_gemm", gemm_cost(a, ta, c, beta, true))) return;
      return gemm_native(a, ta, b, tb, c, alpha, beta);
    }
    const Bf16Operand a16(*this, a), b16(*this, b);
    if (audit_library("cublas_gemm_bf16", gemm_cost(a, ta, c, beta, false))) return;
    gemm_bf16(a, a16.data, ta, b, b16.data, tb, c, alpha, beta);
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                         const Tensor& out) override {
    cuda::attention_forward(q.size(0) * q.size(1), q.size(2), k.size(2), q.size(3),
                            static_cast<float>(scale), f32(q, "attention"), f32(k, "attention"),
                            f32(v, "attention"), f32(out, "attention"), nullptr, stream());
  }

  // Depthwise convs have their own kernels; a pointwise conv is a plain GEMM over NHWC rows
  // (cuBLAS in the real backend); every other one-group conv is GEMMs over its im2col matrix,
  // a grouped one an implicit GEMM (conv.cuh). The input x and the output may be bfloat16
  // (autocast's activations).
  void conv2d_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                      const Tensor& out) override {
    if (g.depthwise()) {
      Buffer ws(*this, depthwise_gather_workspace(depthwise(g)) * sizeof(float));
      return with_activation(g, x, [&](const auto* xp, bool bf16) {
        with_floats(out, "conv2d", [&](auto* yp) {
          depthwise_forward(depthwise(g), xp, f32(w, "conv2d"), yp, ws.floats(), stream(), bf16);
        });
      });
    }
    if (is_pointwise(g))
      return gemm(pixel_rows(x), false, weight_rows(w), true, pixel_rows(out), 1, 0, g.precision);
    dense_conv(ConvPass::forward, g, x, w, out, [&] {
      if (g.groups == 1) return im2col_forward(g, x, w, out);
      Buffer ws(*this, conv_forward_workspace(dense(g)) * sizeof(float));
      with_activation(g, x, [&](const auto* xp, bool bf16) {
        with_floats(out, "conv2d", [&](auto* yp) {
          conv_forward(dense(g), xp, f32(w, "conv2d"), yp, ws.floats(), stream(),
                       conv_math(bf16));
        });
      });
    });
  }
  void conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out, const Tensor& w,
                             const Tensor& grad_x) override {
    if (g.depthwise()) {
      Buffer ws(*this, depthwise_gather_workspace(depthwise(g)) * sizeof(float));
      return depthwise_backward_input(depthwise(g), f32(grad_out, "conv2d"), f32(w, "conv2d"),
                                      f32(grad_x, "conv2d"), ws.floats(), stream(),
                                      g.precision == Precision::bf16);
    }
    if (is_pointwise(g))
      return gemm(pixel_rows(grad_out), false, weight_rows(w), false, pixel_rows(grad_x), 1, 0,
                  g.precision);
    dense_conv(ConvPass::backward_input, g, grad_out, w, grad_x, [&] {
      if (g.groups == 1) return im2col_backward_input(g, grad_out, w, grad_x);
      Buffer ws(*this, conv_backward_input_workspace(dense(g)) * sizeof(float));
      conv_backward_input(dense(g), f32(grad_out, "conv2d"), f32(w, "conv2d"),
                          f32(grad_x, "conv2d"), ws.floats(), stream(),
                          conv_math(g.precision == Precision::bf16));
    });
  }
  void conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& x, const Tensor& grad_out,
                              const Tensor& grad_w) override {
    if (g.depthwise()) {
      const DepthwiseGeometry dg = depthwise(g);
      Buffer ws(*this, depthwise_backward_weight_workspace(dg) * sizeof(float));
      return with_activation(g, x, [&](const auto* xp, bool bf16) {
        depthwise_backward_weight(dg, xp, f32(grad_out, "conv2d"), f32(grad_w, "conv2d"),
                                  ws.floats(), stream(), bf16);
      });
    }
    if (is_pointwise(g))
      return gemm(pixel_rows(grad_out), true, pixel_rows(x), false, weight_rows(grad_w), 1, 0,
                  g.precision);
    dense_conv(ConvPass::backward_weight, g, x, grad_out, grad_w, [&] {
      if (g.groups == 1) return im2col_backward_weight(g, x, grad_out, grad_w);
      const ConvGeometry cg = dense(g);
      Buffer ws(*this, conv_backward_weight_workspace(cg) * sizeof(float));
      with_activation(g, x, [&](const auto* xp, bool bf16) {
        conv_backward_weight(cg, xp, f32(grad_out, "conv2d"), f32(grad_w, "conv2d"), ws.floats(),
                             stream(), conv_math(bf16));
      });
    });
  }

  void layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                          const Tensor& y, const Tensor& mean, const Tensor& rstd) override {
    const int64_t cols = x.size(-1);
    const char* op = "layer_norm";
    with_floats(x, op, [&](const auto* xp) {
      cuda::layer_norm_forward(x.numel() / cols, cols, xp, f32_or_null(w, op), f32_or_null(b, op),
                               static_cast<float>(eps), f32(y, op), f32(mean, op), f32(rstd, op),
                               stream());
    });
  }
  void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                           const Tensor& rstd, const Tensor& grad_y, const Tensor& grad_x,
                           const Tensor& grad_w, const Tensor& grad_b) override {
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    const bool param_grads = grad_w.defined() || grad_b.defined();
    Buffer ws(*this, param_grads ? layer_norm_backward_workspace(rows, cols) * sizeof(float) : 0);
    const char* op = "layer_norm";
    with_floats(x, op, [&](const auto* xp) {
      cuda::layer_norm_backward(rows, cols, xp, f32_or_null(w, op), f32(mean, op), f32(rstd, op),
                                f32(grad_y, op), f32_or_null(grad_x, op), f32_or_null(grad_w, op),
                                f32_or_null(grad_b, op), ws.floats(), stream());
    });
  }

  // x and y may be bfloat16 (autocast's activations); statistics and gradients are float32.
  void batch_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                          const Tensor& y, const Tensor& mean, const Tensor& var,
                          const Tensor& inv_std) override {
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    const char* op = "batch_norm";
    Buffer ws(*this, batch_norm_workspace(rows, cols) * sizeof(float));
    with_floats(x, op, [&](const auto* xp) {
      with_floats(y, op, [&](auto* yp) {
        cuda::batch_norm_forward(rows, cols, xp, f32_or_null(w, op), f32_or_null(b, op),
                                 static_cast<float>(eps), yp, f32(mean, op), f32(var, op),
                                 f32(inv_std, op), ws.floats(), stream());
      });
    });
  }
  void batch_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                           const Tensor& inv_std, const Tensor& grad_y, const Tensor& grad_x,
                           const Tensor& grad_w, const Tensor& grad_b) override {
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    const char* op = "batch_norm";
    Buffer ws(*this, batch_norm_workspace(rows, cols) * sizeof(float));
    with_floats(x, op, [&](const auto* xp) {
      cuda::batch_norm_backward(rows, cols, xp, f32_or_null(w, op), f32(mean, op),
                                f32(inv_std, op), f32(grad_y, op), f32_or_null(grad_x, op),
                                f32_or_null(grad_w, op), f32_or_null(grad_b, op), ws.floats(),
                                stream());
    });
  }

  void softmax_forward(const Tensor& x, const Tensor& y, bool log) override {
    const int64_t cols = x.size(-1);
    cuda::softmax_forward(x.numel() / cols, cols, f32(x, "softmax"), f32(y, "softmax"), log,
                          stream());
  }
  void softmax_backward(const Tensor& y, const Tensor& grad_y, const Tensor& grad_x,
                        bool log) override {
    const int64_t cols = y.size(-1);
    cuda::softmax_backward(y.numel() / cols, cols, f32(y, "softmax"), f32(grad_y, "softmax"),
                           f32(grad_x, "softmax"), log, stream());
  }

  void max_pool2d_forward(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding,
                          const Tensor& y, const Tensor& argmax) override {
    cuda::max_pool_forward(pool_geometry(x, y, kernel, stride, padding), f32(x, "max_pool2d"),
                           f32(y, "max_pool2d"), argmax.defined() ? i64(argmax, "max_pool2d") : nullptr,
                           stream());
  }
  void max_pool2d_backward(const Tensor& grad_y, const Tensor& argmax, int64_t kernel,
                           int64_t stride, int64_t padding, const Tensor& grad_x) override {
    cuda::max_pool_backward(pool_geometry(grad_x, grad_y, kernel, stride, padding),
                            f32(grad_y, "max_pool2d"), i64(argmax, "max_pool2d"),
                            f32(grad_x, "max_pool2d"), stream());
  }

  void resize_bilinear_forward(const Tensor& x, const Tensor& y, bool align_corners) override {
    cuda::resize_bilinear_forward(resize_geometry(x, y, align_corners), f32(x, "resize"),
                                  f32(y, "resize"), stream());
  }
  void resize_bilinear_backward(const Tensor& grad_y, const Tensor& grad_x,
                                bool align_corners) override {
    fill(grad_x, 0.0);  // the kernel accumulates
    cuda::resize_bilinear_backward(resize_geometry(grad_x, grad_y, align_corners),
                                   f32(grad_y, "resize"), f32(grad_x, "resize"), stream());
  }

  void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                  const Tensor& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                  double weight_decay, int64_t step) override {
    adamw_multi_step({{param, grad, exp_avg, exp_avg_sq, step}}, lr, beta1, beta2, eps,
                     weight_decay);
  }
  // The chunk table goes to device memory, then one launch updates every parameter.
  void adamw_multi_step(const std::vector<AdamWParam>& params, double lr, double beta1,
                        double beta2, double eps, double weight_decay) override {
    std::vector<AdamWTensor> tensors;
    for (const AdamWParam& p : params) tensors.push_back(adamw_tensor(p));
    const std::vector<AdamWChunk> table = adamw_chunks(tensors, lr, beta1, beta2);
    const size_t bytes = table.size() * sizeof(AdamWChunk);
    Buffer device_table(*this, bytes);
    if (bytes) transfer(device_table.data, table.data(), bytes, true);
    adamw_multi_tensor(static_cast<const AdamWChunk*>(device_table.data),
                       static_cast<int64_t>(table.size()),
                       adamw_scalars(lr, beta1, beta2, eps, weight_decay), stream());
  }

 protected:
  // gemm()'s contract on float32 or float64 operands as they are (cuBLAS; the CPU's GEMM under
  // the emulator).
  virtual void gemm_native(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                           double alpha, double beta) = 0;
  // The same with a and b (which give the shapes) read from their bfloat16 copies a16 and b16,
  // and float32 accumulation into c.
  virtual void gemm_bf16(const Tensor& a, const bfloat16* a16, bool ta, const Tensor& b,
                         const bfloat16* b16, bool tb, const Tensor& c, double alpha,
                         double beta) = 0;
  // A dense (not depthwise, not pointwise) conv pass out = pass(a, b): `ours` runs our
  // kernel. The real backend may run cuDNN instead, chosen per shape (conv_impl.h).
  virtual void dense_conv(ConvPass pass, const Conv2dGeometry& g, const Tensor& a,
                          const Tensor& b, const Tensor& out, const std::function<void()>& ours) {
    ours();
  }
  virtual cudaStream_t stream() const = 0;
  // Copies bytes between host and device memory; returns once host memory may be reused.
  virtual void transfer(void* dst, const void* src, size_t bytes, bool to_device) = 0;

  // Records a library call while the launch audit records; true: a dry run, skip the call.
  static bool audit_library(const char* name, const LaunchCost& cost) {
    if (!launch_audit::recording()) return false;
    launch_audit::record_library(name, cost);
    return launch_audit::dry_run();
  }

 private:
  void copy_on_device(const Shape& shape, const void* src, const Shape& src_strides,
                      DType src_dtype, void* dst, const Shape& dst_strides, DType dst_dtype) {
    auto layout = merge_dims<2>(shape, {&src_strides, &dst_strides});
    const auto space = make_space<2>(layout.shape, layout.strides);
    dispatch_copy_dtype(src_dtype, [&](auto s) {
      dispatch_copy_dtype(dst_dtype, [&](auto d) {
        using S = decltype(s);
        using D = decltype(d);
        cuda::copy<S, D>(space, shape_numel(shape), static_cast<const S*>(src),
                         static_cast<D*>(dst), stream());
      });
    });
  }

  void upload(const Tensor& src, const Tensor& dst) {
    Tensor host = src;
    if (!src.is_contiguous() || src.dtype() != dst.dtype()) {
      host = Tensor::empty(src.shape(), dst.dtype());
      backend(Device::cpu).copy(src, host);
    }
    const size_t bytes = dst.numel() * dtype_size(dst.dtype());
    if (dst.is_contiguous()) return transfer(dst.raw_data(), host.raw_data(), bytes, true);
    Buffer staged(*this, bytes);
    transfer(staged.data, host.raw_data(), bytes, true);
    copy_on_device(dst.shape(), staged.data, contiguous_strides(dst.shape()), dst.dtype(),
                   dst.raw_data(), dst.strides(), dst.dtype());
  }

  void download(const Tensor& src, const Tensor& dst) {
    const size_t bytes = src.numel() * dtype_size(src.dtype());
    const bool direct = dst.is_contiguous() && dst.dtype() == src.dtype();
    Tensor host = direct ? dst : Tensor::empty(src.shape(), src.dtype());
    if (src.is_contiguous()) {
      transfer(host.raw_data(), src.raw_data(), bytes, false);
    } else {
      Buffer packed(*this, bytes);
      copy_on_device(src.shape(), src.raw_data(), src.strides(), src.dtype(), packed.data,
                     contiguous_strides(src.shape()), src.dtype());
      transfer(host.raw_data(), packed.data, bytes, false);
    }
    if (!direct) backend(Device::cpu).copy(host, dst);
  }

 protected:
  // Device memory for the duration of a method; freed stream-ordered when it returns (also for
  // the real backend's cuDNN operands).
  struct Buffer {
    Backend& owner;
    void* data = nullptr;
    Buffer(Backend& b, size_t bytes) : owner(b) {
      if (bytes > 0) data = b.allocate(bytes);
    }
    ~Buffer() {
      if (data) owner.deallocate(data);
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    float* floats() const { return static_cast<float*>(data); }
    double* doubles() const { return static_cast<double*>(data); }
    bfloat16* bf16() const { return static_cast<bfloat16*>(data); }
  };
  static ConvGeometry dense(const Conv2dGeometry& g) {
    return {g.n,  g.h,  g.w,      g.cin,     g.cout,      g.kh,    g.kw,
            g.oh, g.ow, g.stride, g.padding, g.dilation, g.groups};
  }

 private:
  // A GEMM operand in bfloat16: a bfloat16 tensor's own data, or a float32 one's converted copy.
  struct Bf16Operand {
    Buffer copy;
    const bfloat16* data;
    Bf16Operand(KernelBackend& be, const Tensor& t)
        : copy(be, t.dtype() == DType::bf16 ? 0 : t.numel() * sizeof(bfloat16)),
          data(t.dtype() == DType::bf16 ? bf16_data(t, "gemm") : copy.bf16()) {
      if (t.dtype() != DType::bf16) bf16_convert(t.numel(), f32(t, "gemm"), copy.bf16(), be.stream());
    }
  };

  // c [batch, m, n] = op(a) [m, k] op(b) [k, n]: FLOPs and the bytes of operands and result.
  static LaunchCost gemm_cost(const Tensor& a, bool ta, const Tensor& c, double beta,
                              bool native) {
    const double batch = c.size(0), m = c.size(1), n = c.size(2), k = ta ? a.size(1) : a.size(2);
    const double operand = native ? dtype_size(c.dtype()) : sizeof(bfloat16);
    const double result = dtype_size(c.dtype());
    LaunchCost cost;
    cost.bytes_read = batch * (m * k + k * n) * operand + (beta != 0.0 ? batch * m * n * result : 0);
    cost.bytes_written = batch * m * n * result;
    cost.flops = 2 * batch * m * n * k;
    cost.tensor_cores = !native;
    return cost;
  }

  // Our kernels compute in float32 on tensors of this device, contiguous unless they take
  // strides.
  static float* f32_strided(const Tensor& t, const char* op) {
    SONO_CHECK(t.dtype() == DType::f32, "CUDA: ", op, " on ", dtype_name(t.dtype()),
               " not implemented yet (float32 only)");
    SONO_CHECK(t.device() == Device::cuda, "CUDA: ", op, " given a ", device_name(t.device()),
               " tensor");
    return t.data<float>();
  }
  static float* f32(const Tensor& t, const char* op) {
    SONO_CHECK(t.is_contiguous(), "CUDA: ", op, " given a non-contiguous tensor");
    return f32_strided(t, op);
  }
  static int64_t* i64(const Tensor& t, const char* op) {
    SONO_CHECK(t.dtype() == DType::i64 && t.device() == Device::cuda && t.is_contiguous(), "CUDA: ",
               op, " wants a contiguous int64 tensor on the device, got ", dtype_name(t.dtype()),
               " on ", device_name(t.device()));
    return t.data<int64_t>();
  }
  static float* f32_or_null(const Tensor& t, const char* op) {
    return t.defined() ? f32(t, op) : nullptr;
  }
  // bfloat16 tensors are autocast's activations (tensor/dtype.h): copies, GEMM and dense conv
  // operands and results, and the bias/GELU epilogue.
  static bfloat16* bf16_data(const Tensor& t, const char* op) {
    SONO_CHECK(t.dtype() == DType::bf16 && t.device() == Device::cuda && t.is_contiguous(),
               "CUDA: ", op, " wants a contiguous bfloat16 tensor on the device, got ",
               dtype_name(t.dtype()), " on ", device_name(t.device()));
    return static_cast<bfloat16*>(t.raw_data());
  }
  // Calls f(t's data) as float* or bfloat16*, per its dtype.
  template <typename F>
  static void with_floats(const Tensor& t, const char* op, F&& f) {
    if (t.dtype() == DType::bf16) f(bf16_data(t, op));
    else f(f32(t, op));
  }
  // y = act(x + bias) over rows of bias's length; without a bias, act(x).
  void bias_act_rows(const Tensor& x, const Tensor& bias, const Tensor& y, Activation act) {
    const int64_t cols = bias.defined() ? bias.numel() : 1;
    const char* op = act == Activation::none ? "bias_add" : "bias_act";
    with_floats(x, op, [&](const auto* xp) {
      with_floats(y, op, [&](auto* yp) {
        bias_act(x.numel() / cols, cols, xp, f32_or_null(bias, op), yp, act, stream());
      });
    });
  }
  // Calls f(x's data, bf16) for a conv's input: autocast's bfloat16 copy, or float32 that the
  // kernel rounds to bfloat16 as it loads tiles at bf16 precision.
  template <typename F>
  static void with_activation(const Conv2dGeometry& g, const Tensor& x, F&& f) {
    with_floats(x, "conv2d", [&](const auto* xp) { f(xp, bf16_activation(g, x)); });
  }

  static AdamWTensor adamw_tensor(const AdamWParam& p) {
    SONO_CHECK(p.step >= 1, "adamw: step counts from 1, got ", p.step);
    for (const Tensor* t : {&p.grad, &p.exp_avg, &p.exp_avg_sq})
      SONO_CHECK(t->shape() == p.param.shape(), "adamw: grad and state must have the parameter's ",
                 "shape ", shape_str(p.param.shape()), ", got ", shape_str(t->shape()));
    return {f32(p.param, "adamw"), f32(p.grad, "adamw"), f32(p.exp_avg, "adamw"),
            f32(p.exp_avg_sq, "adamw"), p.param.numel(), p.step};
  }

  // 1x1, stride 1, no padding, one group: y = x w^T with x as [pixels, Cin] rows.
  static bool is_pointwise(const Conv2dGeometry& g) {
    return g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0 && g.groups == 1;
  }
  // The 3-D operands gemm() takes: a contiguous NHWC tensor as [1, pixels, C], a weight
  // [Cout, Cin, KH, KW] as [1, Cout, Cin * KH * KW].
  static Tensor pixel_rows(const Tensor& t) {
    if (t.dtype() == DType::bf16) bf16_data(t, "conv2d");  // checks only
    else f32(t, "conv2d");
    return t.reshape({1, t.numel() / t.size(3), t.size(3)});
  }
  static Tensor weight_rows(const Tensor& w) {
    f32(w, "conv2d");
    return w.reshape({1, w.size(0), w.numel() / w.size(0)});
  }

  // An im2col conv runs its images in slabs whose im2col matrix fits SONO_IM2COL_SLAB_BYTES
  // (conv_impl.h), so that the matrix (taps times the input for a stride-1 conv) stays small
  // next to the activations.
  template <typename F>
  static void for_each_slab(const Conv2dGeometry& g, F&& f) {
    const int64_t per_image = g.oh * g.ow * g.cin * g.kh * g.kw * int64_t{sizeof(float)};
    const int64_t per_slab = std::clamp<int64_t>(im2col_slab_bytes_from_env() / per_image, 1, g.n);
    for (int64_t first = 0; first < g.n; first += per_slab) {
      ConvGeometry slab = dense(g);
      slab.n = std::min(per_slab, g.n - first);
      f(slab, first);
    }
  }
  static Tensor images(const Tensor& t, const ConvGeometry& slab, int64_t first) {
    return t.slice(0, first, first + slab.n);
  }
  // Autocast's convs multiply bfloat16 operands (cols(x) is stored as such).
  static bool bf16_activation(const Conv2dGeometry& g, const Tensor& x) {
    return x.dtype() == DType::bf16 || g.precision == Precision::bf16;
  }
  // cols(x) of the slab's images (x's images from `first`) as [1, pixels, Cin * taps].
  Tensor im2col_rows(const Conv2dGeometry& g, const ConvGeometry& slab, const Tensor& x,
                     int64_t first) {
    const Tensor cols = Tensor::empty({1, slab.n * slab.oh * slab.ow, slab.cin * slab.taps()},
                                      bf16_activation(g, x) ? DType::bf16 : DType::f32,
                                      Device::cuda);
    with_floats(images(x, slab, first), "conv2d", [&](const auto* xp) {
      with_floats(cols, "conv2d", [&](auto* cp) { im2col(slab, xp, cp, stream()); });
    });
    return cols;
  }
  // A one-group conv's passes over its im2col matrix (conv.cuh), slab by slab.
  void im2col_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                      const Tensor& out) {
    for_each_slab(g, [&](const ConvGeometry& slab, int64_t first) {
      gemm(im2col_rows(g, slab, x, first), false, weight_rows(w), true,
           pixel_rows(images(out, slab, first)), 1, 0, g.precision);
    });
  }
  void im2col_backward_input(const Conv2dGeometry& g, const Tensor& grad_out, const Tensor& w,
                             const Tensor& grad_x) {
    for_each_slab(g, [&](const ConvGeometry& slab, int64_t first) {
      const int64_t pixels = slab.n * slab.oh * slab.ow;
      const Tensor grad_cols =
          Tensor::empty({1, pixels, slab.cin * slab.taps()}, DType::f32, Device::cuda);
      gemm(pixel_rows(images(grad_out, slab, first)), false, weight_rows(w), false, grad_cols, 1, 0,
           g.precision);
      col2im(slab, f32(grad_cols, "conv2d"), f32(images(grad_x, slab, first), "conv2d"), stream());
    });
  }
  // grad_w sums over the slabs.
  void im2col_backward_weight(const Conv2dGeometry& g, const Tensor& x, const Tensor& grad_out,
                              const Tensor& grad_w) {
    for_each_slab(g, [&](const ConvGeometry& slab, int64_t first) {
      gemm(pixel_rows(images(grad_out, slab, first)), true, im2col_rows(g, slab, x, first), false,
           weight_rows(grad_w), 1, first == 0 ? 0 : 1, g.precision);
    });
  }
  // Mixed precision's dense convs run on the tensor cores.
  static ConvMath conv_math(bool bf16) { return bf16 ? ConvMath::bf16_wmma : ConvMath::float32; }
  static DepthwiseGeometry depthwise(const Conv2dGeometry& g) {
    return {g.n, g.h, g.w, g.cin, g.kh, g.kw, g.oh, g.ow, g.stride, g.padding, g.dilation};
  }

  // float32 heads of up to kAttentionMaxDim dims, as many in v as in q (MiT's).
  static bool fused_attention_fits(const Tensor& q, const Tensor& k, const Tensor& v) {
    const bool f32 = q.dtype() == DType::f32 && k.dtype() == DType::f32 && v.dtype() == DType::f32;
    return f32 && q.size(3) <= kAttentionMaxDim && v.size(3) == q.size(3) &&
           q.size(0) * q.size(1) <= 65535;
  }

  static PoolGeometry pool_geometry(const Tensor& in, const Tensor& out, int64_t kernel,
                                    int64_t stride, int64_t padding) {
    return {in.size(0), in.size(1), in.size(2), in.size(3), out.size(1), out.size(2),
            kernel,     stride,     padding};
  }

  static ResizeGeometry resize_geometry(const Tensor& in, const Tensor& out, bool align_corners) {
    SONO_CHECK(in.dim() == 4 && out.dim() == 4, "CUDA resize: NHWC tensors expected, got ",
               shape_str(in.shape()), " and ", shape_str(out.shape()));
    return {in.size(0), in.size(1), in.size(2), out.size(1), out.size(2), in.size(3),
            align_corners};
  }
};

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
