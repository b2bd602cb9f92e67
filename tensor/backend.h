#pragma once
// The kernel interface every backend implements (CPU in tensor/cpu, CUDA in cuda/); its kernels
// are listed once, in tensor/backend_ops.def. Ops (tensor/ops/*.cpp) allocate outputs, check
// shapes and call these; kernels never see autograd.
#include <initializer_list>
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sono {

enum class UnaryOp {
  neg, exp, log, sqrt, abs, sign, relu, gelu, sigmoid, tanh, softplus,
  add_scalar, mul_scalar, pow_scalar, gt_scalar
};
// relu_grad: a where b > 0, else 0 (ReLU's input gradient from its output, in one pass).
// add_relu: relu(a + b) in one pass (a residual block's end).
enum class BinaryOp { add, sub, mul, div, eq, relu_grad, add_relu };
enum class ReduceOp { sum, max };

// How a kernel's products multiply: float32 (or float64) operands as they are, or, under bf16
// autocast (tensor/autocast.h), operands rounded to bfloat16 with float32 accumulation. Ops pass
// it; kernels never read the autocast setting.
enum class Precision : uint8_t { f32, bf16 };

struct Conv2dGeometry {
  int64_t n, h, w, cin, cout, kh, kw, oh, ow;
  int64_t stride, padding, dilation, groups;
  Precision precision = Precision::f32;  // of the products, in all three passes

  bool depthwise() const { return groups == cin && cout == cin; }  // one filter per channel
};

// One parameter of an AdamW group and its state; `step` is its own count (from 1), as in torch.
struct AdamWParam {
  Tensor param, grad, exp_avg, exp_avg_sq;
  int64_t step;
};

// The kernels, in the order of tensor/backend_ops.def (which documents each).
enum class BackendOp : uint8_t {
#define SONO_BACKEND_OP(kind, op, params, args) op,
#include "tensor/backend_ops.def"
};
enum class BackendOpKind : uint8_t { required, defaulted, optional };
inline constexpr int kBackendOpCount = 0
#define SONO_BACKEND_OP(kind, op, params, args) +1
#include "tensor/backend_ops.def"
    ;
const char* backend_op_name(BackendOp op);  // "gemm"
BackendOpKind backend_op_kind(BackendOp op);

// The operands an op hands a kernel, for Backend::supports: their dtypes and shapes decide.
using OpOperands = std::initializer_list<const Tensor*>;

class Backend {
 public:
  using AdamWParam = sono::AdamWParam;

  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Whether the kernels read and write bfloat16 where tensor/autocast.h says (the CUDA
  // backend's); elsewhere ops widen bfloat16 inputs to float32 first.
  virtual bool reads_bf16() const { return false; }
  // Whether this backend runs `op` on these operands: required and defaulted kernels always;
  // an optional (fused) kernel where the backend has it for these dtypes and shapes, else the
  // op composes its result from other kernels. backend_ops.def says what each op passes.
  virtual bool supports(BackendOp op, OpOperands operands) const;

  // Waits until the work queued on the device is done (timing; a GPU runs asynchronously).
  virtual void synchronize() {}

  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr) = 0;

#define SONO_BACKEND_OP(kind, op, params, args) SONO_BACKEND_DECLARE_##kind(op, params)
#define SONO_BACKEND_DECLARE_required(op, params) virtual void op params = 0;
#define SONO_BACKEND_DECLARE_defaulted(op, params) virtual void op params;
#define SONO_BACKEND_DECLARE_optional(op, params) virtual void op params;
#include "tensor/backend_ops.def"
#undef SONO_BACKEND_DECLARE_required
#undef SONO_BACKEND_DECLARE_defaulted
#undef SONO_BACKEND_DECLARE_optional
};

Backend& backend(Device device);
inline Backend& backend_of(const Tensor& t) { return backend(t.device()); }
// The CUDA backend registers itself here when compiled in. Registering for Device::cpu replaces
// the built-in CPU backend (a profiling wrapper does this); nullptr restores it.
void register_backend(Device device, Backend* b);

}  // namespace sono
