#include <malloc.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "tensor/cpu/cpu_backend.h"

namespace sono {

namespace cpu {

namespace {
// Bytes held by tensors (as malloc_usable_size counts them, so allocate and free agree).
std::atomic<int64_t> g_in_use{0}, g_peak{0};
std::atomic<bool> g_huge_pages{false};

void count_allocation(int64_t bytes) {
  int64_t now = g_in_use += bytes;
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {}
}

// Tensors of 1 MiB and more live in blocks mapped from the OS and kept for reuse once freed:
// every first touch of a fresh page faults, and glibc maps allocations over 32 MiB afresh each
// time, so a step's outputs would fault in anew every step. Sizes round up to 8 classes per
// power of two (at most 12.5% more), and a request takes the smallest cached block up to 1.5
// times its size. Live plus cached bytes stay within the most ever live at once plus a headroom
// (a quarter of it, at least 64 and at most 128 MiB): a request that no cached block fits, with
// the cache over that, gets a cached block (recycle) and unmaps others, largest first, to stay
// within it. Without the headroom a step's mix of sizes keeps missing and remapping; with it a
// steady step maps little or nothing, for a few percent more resident memory. The floor is for
// small peaks, where a quarter cannot hold two alternating sizes (predict's two models) and each
// batch would resize one block into the other, faulting the growth in.
class BlockCache {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kMinHeadroom = size_t(64) << 20, kMaxHeadroom = size_t(128) << 20;

  // Smaller tensors come from glibc's heap. By default it maps chunks from 128 KiB up afresh
  // and gives the heap's free top back to the OS past 128 KiB, so they would fault in anew each
  // step as well. The same holds for buffers that are not tensors (a decoded 600 x 500 scan as
  // floats is 3.6 MB), so the heap serves everything up to 32 MiB (glibc's largest threshold).
  BlockCache() {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
  }

  static size_t size_class(size_t bytes) {
    const size_t step = (size_t(1) << (63 - __builtin_clzll(bytes))) / 8;
    return (bytes + step - 1) / step * step;
  }

  // Returns the block and its size, which may exceed size_class(bytes) when a cached block
  // a little larger is reused.
  std::pair<void*, size_t> allocate(size_t bytes) {
    size_t size = size_class(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = take(size);
    if (!p) {
      const size_t footprint = high_water_ + std::clamp(high_water_ / 4, kMinHeadroom, kMaxHeadroom);
      const size_t keep = footprint > live_bytes_ + size ? footprint - live_bytes_ - size : 0;
      if (cached_bytes_ > keep) p = recycle(size);
      trim(keep);
      if (!p) p = map(size, bytes);
    }
    live_[p] = size;
    live_bytes_ += size;
    high_water_ = std::max(high_water_, live_bytes_);
    return {p, size};
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_bytes_;
  }

  // Caches p and returns its size if it is one of our blocks; else returns 0.
  size_t release(void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) return 0;
    const size_t size = it->second;
    live_.erase(it);
    live_bytes_ -= size;
    free_[size].push_back(p);
    cached_bytes_ += size;
    return size;
  }

 private:
  // The smallest cached block that fits, if it is at most 1.5 times the request; size becomes
  // the block's.
  void* take(size_t& size) {
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 2) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    size = it->first;
    if (it->second.empty()) free_.erase(it);
    cached_bytes_ -= size;
    return p;
  }

  static void* map(size_t size, size_t bytes) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("out of CPU memory allocating ", bytes, " bytes");
    if (g_huge_pages) madvise(p, size, MADV_HUGEPAGE);
    return p;
  }

  // A cached block for a request of `size` that take() found none for, with the cache over its
  // budget: the smallest one at least as large, else the largest. Up to twice the request it
  // is handed out whole (size becomes its size), else resized (nullptr where mremap fails).
  // Its resident pages serve the request, so only growth faults in, where unmapping a block
  // and mapping a fresh one would have the kernel zero every page again.
  void* recycle(size_t& size) {
    auto it = free_.lower_bound(size);
    if (it == free_.end()) it = std::prev(free_.end());
    const size_t old_size = it->first;
    void* old = it->second.back();
    it->second.pop_back();
    if (it->second.empty()) free_.erase(it);
    cached_bytes_ -= old_size;
    if (old_size >= size && old_size <= 2 * size) {
      size = old_size;
      return old;
    }
    void* p = mremap(old, old_size, size, MREMAP_MAYMOVE);
    if (p != MAP_FAILED) {
      if (size > old_size && g_huge_pages) madvise(p, size, MADV_HUGEPAGE);
      return p;
    }
    munmap(old, old_size);
    return nullptr;
  }

  void trim(size_t keep) {
    while (cached_bytes_ > keep && !free_.empty()) {
      auto it = std::prev(free_.end());  // largest first: fewest unmaps
      munmap(it->second.back(), it->first);
      cached_bytes_ -= it->first;
      it->second.pop_back();
      if (it->second.empty()) free_.erase(it);
    }
  }

  std::mutex mutex_;
  std::unordered_map<void*, size_t> live_;
  std::map<size_t, std::vector<void*>> free_;
  size_t live_bytes_ = 0, cached_bytes_ = 0, high_water_ = 0;
};

BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache;  // never destroyed: tensors may outlive statics
  return *cache;
}
}  // namespace

// The optional kernels the CPU has: BatchNorm's fused pair (norm.cpp), float32 and float64.
bool CpuBackend::supports(BackendOp op, OpOperands operands) const {
  if (op == BackendOp::batch_norm_forward || op == BackendOp::batch_norm_backward) {
    const DType dtype = (*operands.begin())->dtype();
    return dtype == DType::f32 || dtype == DType::f64;
  }
  return Backend::supports(op, operands);
}

void* CpuBackend::allocate(size_t nbytes) {
  if (nbytes >= BlockCache::kMinBytes) {
    auto [p, size] = block_cache().allocate(nbytes);
    count_allocation(static_cast<int64_t>(size));
    return p;
  }
  // 64-byte alignment for AVX-512 loads and Eigen's aligned maps.
  size_t rounded = (nbytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail("out of CPU memory allocating ", nbytes, " bytes");
  count_allocation(static_cast<int64_t>(malloc_usable_size(p)));
  return p;
}

void CpuBackend::deallocate(void* ptr) {
  if (const size_t size = block_cache().release(ptr)) {
    g_in_use -= static_cast<int64_t>(size);
    return;
  }
  g_in_use -= static_cast<int64_t>(malloc_usable_size(ptr));
  std::free(ptr);
}

MemoryStats memory_stats() {
  return {g_in_use.load(), g_peak.load(), static_cast<int64_t>(block_cache().cached_bytes())};
}
void reset_peak_memory() { g_peak = g_in_use.load(); }
void set_huge_pages(bool on) { g_huge_pages = on; }

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
