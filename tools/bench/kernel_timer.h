#pragma once
// Where a model step spends its time, kernel by kernel: a Backend that forwards every kernel of
// tensor/backend_ops.def to the CPU backend and adds the call's wall time to a per-kernel total.
// Kernels are keyed by name and, where the cost depends on it, by geometry or operand layout
// ("conv2d_forward dw 7x7 s1 d1", "gemm a^T" for weight gradients, "unary gelu").
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
  bool supports(BackendOp op, OpOperands operands) const override {
    return inner_.supports(op, operands);
  }
#define SONO_BACKEND_OP(kind, op, params, args) void op params override;
#include "tensor/backend_ops.def"

 private:
  // Runs f, a call of `op` with these arguments, and charges its wall time and FLOPs to the
  // op's key.
  template <BackendOp op, typename F, typename... Args>
  void timed(F&& f, const Args&... args);

  cpu::CpuBackend inner_;
  std::map<std::string, KernelTotal> totals_;
};

}  // namespace sono::bench
