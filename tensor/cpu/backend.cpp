#include <cstdlib>
#include <new>

#include "tensor/cpu/cpu_backend.h"

namespace sono {

namespace cpu {

void* CpuBackend::allocate(size_t nbytes) {
  // 64-byte alignment for AVX-512 loads and Eigen's aligned maps.
  size_t rounded = (nbytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail("out of CPU memory allocating ", nbytes, " bytes");
  return p;
}

void CpuBackend::deallocate(void* ptr) { std::free(ptr); }

}  // namespace cpu

namespace {
Backend*& slot(Device d) {
  static Backend* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(d)];
}
}  // namespace

Backend& backend(Device device) {
  if (device == Device::cpu) {
    static cpu::CpuBackend cpu_backend;
    return cpu_backend;
  }
  Backend* b = slot(device);
  SONO_CHECK(b, "the CUDA backend is not available in this build (built without nvcc, or no GPU)");
  return *b;
}

void register_backend(Device device, Backend* b) { slot(device) = b; }

}  // namespace sono
