#pragma once
// A caching device-memory allocator. cudaMalloc and cudaFree synchronise the device and cost
// far more than a kernel, and training allocates the same sizes every step: freed blocks go to
// a free list per (stream, size class) and the next request of that class on that stream takes
// one back. Reuse on the same stream is safe without events: work queued later on a stream runs
// after the work that used the block before it was freed. Plain C++ (the raw allocation
// functions are given), so the tests run it over host memory.
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tensor/error.h"

namespace sono::cuda {

struct MemoryStats {
  size_t in_use = 0;   // bytes handed out (size classes) and not yet freed
  size_t peak = 0;     // largest in_use since the last reset
  size_t cached = 0;   // bytes held in free lists
  int64_t device_allocations = 0;  // raw allocations made (cache misses)
};

std::string format_bytes(size_t bytes);

class CachingAllocator {
 public:
  using Stream = const void*;
  // raw_alloc returns nullptr when the device is out of memory (and throws for other errors).
  CachingAllocator(std::function<void*(size_t)> raw_alloc, std::function<void(void*)> raw_free)
      : raw_alloc_(std::move(raw_alloc)), raw_free_(std::move(raw_free)) {}
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t bytes, Stream stream) {
    const size_t size = size_class(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = take_cached(size, stream);
    if (!p) p = allocate_on_device(size, bytes);
    live_[p] = {size, stream};
    stats_.in_use += size;
    stats_.peak = std::max(stats_.peak, stats_.in_use);
    return p;
  }

  void free(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    SONO_CHECK(it != live_.end(), "CUDA: freeing memory the allocator did not hand out");
    const Block b = it->second;
    live_.erase(it);
    stats_.in_use -= b.size;
    stats_.cached += b.size;
    free_[{b.stream, b.size}].push_back(p);
  }

  // Returns every cached block to the device.
  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked();
  }

  MemoryStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak = stats_.in_use;
  }
  std::string report() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return report_locked();
  }

  // Requests round up to 512 bytes below 1 MiB and to a 32nd of their power of two above, so
  // sizes that differ a little share a class with at most 3% slack: activations are most of a
  // step's memory, and coarser classes (a quarter) wasted 14% of ConvNeXt's, 16 x 56 x 56 x 128
  // floats taking 28 MiB for 24.5.
  static size_t size_class(size_t bytes) {
    constexpr size_t kSmall = 512, kLarge = size_t{1} << 20;
    if (bytes < kLarge) return std::max(kSmall, (bytes + kSmall - 1) / kSmall * kSmall);
    size_t power = kLarge;
    while (power * 2 <= bytes) power *= 2;
    const size_t step = power / 32;
    return (bytes + step - 1) / step * step;
  }

 private:
  struct Block {
    size_t size;
    Stream stream;
  };

  void* take_cached(size_t size, Stream stream) {
    auto it = free_.find({stream, size});
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    stats_.cached -= size;
    return p;
  }

  void* allocate_on_device(size_t size, size_t requested) {
    void* p = raw_alloc_(size);
    if (!p) {  // out of memory: give every cached block back and try once more
      release_cached_locked();
      p = raw_alloc_(size);
      if (!p)
        fail("CUDA: out of memory allocating ", format_bytes(requested), " (", report_locked(),
             ")");
    }
    ++stats_.device_allocations;
    return p;
  }

  void release_cached_locked() {
    for (auto& [key, blocks] : free_)
      for (void* p : blocks) raw_free_(p);
    free_.clear();
    stats_.cached = 0;
  }

  std::string report_locked() const {
    std::ostringstream os;
    os << "in use " << format_bytes(stats_.in_use) << ", peak " << format_bytes(stats_.peak)
       << ", cached " << format_bytes(stats_.cached) << ", " << stats_.device_allocations
       << " device allocations";
    return os.str();
  }

  std::function<void*(size_t)> raw_alloc_;
  std::function<void(void*)> raw_free_;
  mutable std::mutex mutex_;
  std::map<std::pair<Stream, size_t>, std::vector<void*>> free_;
  std::unordered_map<void*, Block> live_;
  MemoryStats stats_;
};

inline std::string format_bytes(size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  std::ostringstream os;
  os.precision(u ? 2 : 0);
  os << std::fixed << v << " " << units[u];
  return os.str();
}

}  // namespace sono::cuda
