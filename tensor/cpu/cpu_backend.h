#pragma once
// The CPU backend: Eigen for GEMM, OpenMP for the rest. One file per op family defines the
// methods (elementwise.cpp, reduce.cpp, gemm.cpp, conv.cpp, norm.cpp, softmax.cpp, resize.cpp,
// optim.cpp); they serve float32 and float64.
#include "tensor/backend.h"

namespace sono::cpu {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void* allocate(size_t nbytes) override;
  void deallocate(void* ptr) override;

  void copy(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double value) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void bias_gelu_forward(const Tensor& x, const Tensor& bias, const Tensor& y) override;
  void gelu_backward(const Tensor& x, const Tensor& bias, const Tensor& grad_y,
                     const Tensor& grad_x) override;
  void reduce(ReduceOp op, const Tensor& x, const Tensor& out) override;
  void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                      bool gelu) override;
  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
            double alpha, double beta) override;

  void conv2d_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                      const Tensor& out) override;
  void conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out, const Tensor& w,
                             const Tensor& grad_x) override;
  void conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& x, const Tensor& grad_out,
                              const Tensor& grad_w) override;

  void layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                          const Tensor& y, const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                           const Tensor& rstd, const Tensor& grad_y, const Tensor& grad_x,
                           const Tensor& grad_w, const Tensor& grad_b) override;

  void softmax_forward(const Tensor& x, const Tensor& y, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& grad_y, const Tensor& grad_x,
                        bool log) override;

  void resize_bilinear_forward(const Tensor& x, const Tensor& y, bool align_corners) override;
  void resize_bilinear_backward(const Tensor& grad_y, const Tensor& grad_x,
                                bool align_corners) override;

  void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                  const Tensor& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                  double weight_decay, int64_t step) override;
};

// values = GELU(values) (erf form) in place (elementwise.cpp): the GEMM's GELU epilogue.
template <typename T>
void gelu_in_place(T* values, int64_t n);

// Bytes of CPU tensor storage held now and at the peak since start or reset_peak_memory(), and
// bytes of freed large blocks kept for reuse (backend.cpp).
struct MemoryStats {
  int64_t in_use_bytes, peak_bytes, cached_bytes;
};
MemoryStats memory_stats();
void reset_peak_memory();

// Calls f(T{}) with T = float or double per the tensor's dtype.
template <typename F>
void dispatch_float(DType dtype, F&& f) {
  if (dtype == DType::f32) f(float{});
  else if (dtype == DType::f64) f(double{});
  else fail("this CPU kernel takes float32 or float64, got ", dtype_name(dtype));
}

template <typename F>
void dispatch_any(DType dtype, F&& f) {
  if (dtype == DType::i64) f(int64_t{});
  else dispatch_float(dtype, std::forward<F>(f));
}

}  // namespace sono::cpu
