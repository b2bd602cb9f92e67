#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "tensor/cpu/cpu_backend.h"

namespace sono {

namespace cpu {

namespace {
// Bytes held by tensors (as malloc_usable_size counts them, so allocate and free agree).
std::atomic<int64_t> g_in_use{0}, g_peak{0};
}  // namespace

void* CpuBackend::allocate(size_t nbytes) {
  // 64-byte alignment for AVX-512 loads and Eigen's aligned maps.
  size_t rounded = (nbytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail("out of CPU memory allocating ", nbytes, " bytes");
  int64_t now = g_in_use += static_cast<int64_t>(malloc_usable_size(p));
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {}
  return p;
}

void CpuBackend::deallocate(void* ptr) {
  g_in_use -= static_cast<int64_t>(malloc_usable_size(ptr));
  std::free(ptr);
}

MemoryStats memory_stats() { return {g_in_use.load(), g_peak.load()}; }
void reset_peak_memory() { g_peak = g_in_use.load(); }

}  // namespace cpu

namespace {
Backend*& slot(Device d) {
  static Backend* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(d)];
}
}  // namespace

Backend& backend(Device device) {
  if (Backend* b = slot(device)) return *b;  // registered: CUDA, or a wrapper around the CPU one
  if (device == Device::cpu) {
    static cpu::CpuBackend cpu_backend;
    return cpu_backend;
  }
  fail("the CUDA backend is not available in this build (built without nvcc, or no GPU)");
}

void register_backend(Device device, Backend* b) { slot(device) = b; }

}  // namespace sono
