#pragma once
// Where a model step spends its time, kernel by kernel: a Backend that forwards every call to the
// CPU backend and adds the call's wall time to a per-kernel total. Kernels are keyed by method
// and, where the cost depends on it, by geometry or operand layout ("conv2d_forward dw 7x7 s1 d1",
// "gemm a^T" for weight gradients, "unary gelu").
// Used by model_bench --profile-kernels; it sees only calls made through the Backend interface.
#include <map>
#include <string>

#include "tensor/cpu/cpu_backend.h"

namespace sono::bench {

struct KernelTotal {
  double seconds = 0;
  int64_t calls = 0;
  double flops = 0;  // multiply-adds count 2; GEMM and conv only
};

class KernelTimer final : public Backend {
 public:
  // Registers itself as the CPU backend while alive. Single-threaded callers only (the
  // kernels' own OpenMP threads are fine).
  KernelTimer();
  ~KernelTimer() override;
  KernelTimer(const KernelTimer&) = delete;
  KernelTimer& operator=(const KernelTimer&) = delete;

  const std::map<std::string, KernelTotal>& totals() const { return totals_; }
  void reset() { totals_.clear(); }

  const char* name() const override { return "cpu+timer"; }
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

 private:
  // Runs f and charges its wall time (and `flops`) to `key`.
  template <typename F>
  void timed(const std::string& key, F&& f, double flops = 0);

  cpu::CpuBackend inner_;
  std::map<std::string, KernelTotal> totals_;
};

}  // namespace sono::bench
