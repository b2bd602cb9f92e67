#include "cuda/emulated/emulated_backend.h"

#include <cstdlib>
#include <cstring>

#include "cuda/kernel_backend.cuh"

namespace sono::cuda {

namespace {

class EmulatedBackend final : public KernelBackend {
 public:
  // Size classes are multiples of 512 bytes: aligned_alloc's size rule holds.
  EmulatedBackend() : allocator_([](size_t n) { return std::aligned_alloc(64, n); }, std::free) {}

  const char* name() const override { return "cuda (SIMT emulator)"; }
  void* allocate(size_t n) override { return allocator_.allocate(n, stream()); }
  void deallocate(void* p) override { allocator_.free(p); }
  CachingAllocator& allocator() { return allocator_; }

 protected:
  // cuBLAS is not emulated; matmul on the emulated device uses the CPU's GEMM, under bf16
  // autocast on the operands widened back from their bfloat16 copies (float32 accumulation, as
  // GemmEx's CUBLAS_COMPUTE_32F).
  void gemm_native(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                   double alpha, double beta) override {
    backend(Device::cpu).gemm(a, ta, b, tb, c, alpha, beta, Precision::f32);
  }
  void gemm_bf16(const Tensor& a, const bfloat16* a16, bool ta, const Tensor& b,
                 const bfloat16* b16, bool tb, const Tensor& c, double alpha,
                 double beta) override {
    const launch_audit::Pause unrecorded;  // the GPU's GemmEx converts nothing
    const Tensor a32 = Tensor::empty(a.shape()), b32 = Tensor::empty(b.shape());
    bf16_convert(a.numel(), a16, a32.data<float>(), nullptr);
    bf16_convert(b.numel(), b16, b32.data<float>(), nullptr);
    if (c.dtype() != DType::bf16) return backend(Device::cpu).gemm(a32, ta, b32, tb, c, alpha, beta, Precision::f32);
    // A bfloat16 result (autocast's activations): the float32 sum, rounded once.
    const Tensor c32 = Tensor::empty(c.shape());
    if (beta != 0.0) bf16_convert(c.numel(), static_cast<const bfloat16*>(c.raw_data()),
                                  c32.data<float>(), nullptr);
    backend(Device::cpu).gemm(a32, ta, b32, tb, c32, alpha, beta, Precision::f32);
    bf16_convert(c.numel(), c32.data<float>(), static_cast<bfloat16*>(c.raw_data()), nullptr);
  }
  cudaStream_t stream() const override { return nullptr; }
  void transfer(void* dst, const void* src, size_t bytes, bool) override {
    std::memcpy(dst, src, bytes);
  }

 private:
  CachingAllocator allocator_;
};

// Never destroyed: tensors in static objects may free their memory after it would be.
EmulatedBackend& instance() {
  static EmulatedBackend* backend = new EmulatedBackend;
  return *backend;
}

}  // namespace

Backend& emulated_backend() { return instance(); }
MemoryStats emulated_memory_stats() { return instance().allocator().stats(); }
void reset_emulated_peak_memory() { instance().allocator().reset_peak(); }

}  // namespace sono::cuda
