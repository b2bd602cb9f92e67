#pragma once
// The CPU backend: Eigen for GEMM, OpenMP for the rest. One file per op family defines the
// methods (elementwise.cpp, reduce.cpp, gemm.cpp, conv.cpp, norm.cpp, softmax.cpp, resize.cpp,
// pool.cpp, optim.cpp); they serve float32 and float64.
#include "tensor/backend.h"

namespace sono::cpu {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void* allocate(size_t nbytes) override;
  void deallocate(void* ptr) override;

#define SONO_BACKEND_OP(kind, op, params, args) SONO_CPU_DECLARE_##kind(op, params)
#define SONO_CPU_DECLARE_required(op, params) void op params override;
#define SONO_CPU_DECLARE_defaulted(op, params)
#define SONO_CPU_DECLARE_optional(op, params)
#include "tensor/backend_ops.def"
#undef SONO_CPU_DECLARE_required
#undef SONO_CPU_DECLARE_defaulted
#undef SONO_CPU_DECLARE_optional
  // BatchNorm's fused kernels (norm.cpp), for float32 and float64.
  bool supports(BackendOp op, OpOperands operands) const override;
  void batch_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                          const Tensor& y, const Tensor& mean, const Tensor& var,
                          const Tensor& inv_std) override;
  void batch_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean,
                           const Tensor& inv_std, const Tensor& grad_y, const Tensor& grad_x,
                           const Tensor& grad_w, const Tensor& grad_b) override;
  // Eval-mode BatchNorm's scale and shift in one pass (norm.cpp).
  void channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift,
                      const Tensor& y) override;
  // The GEMM paths apply the bias and ReLU in their epilogue (conv.cpp).
  void conv2d_bias_relu_forward(const Conv2dGeometry& g, const Tensor& x, const Tensor& w,
                                const Tensor& bias, const Tensor& out, bool relu) override;
  // The GEMM with the bias and GELU applied in its epilogue.
  void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                      bool gelu, Precision precision) override;
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

// Whether blocks mapped from now on ask for transparent 2 MiB pages (MADV_HUGEPAGE). Fewer TLB
// misses make a training step a few percent faster, but where the kernel's THP defrag is
// "madvise" a first touch may wait for memory to be compacted, which can take most of a short
// run (a one-image predict). So off, and on in the training tools, whose steps reuse their
// blocks.
void set_huge_pages(bool on);

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
