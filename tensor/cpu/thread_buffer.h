#pragma once
// Per-thread scratch that lives across calls: GEMM pack panels and convolution column matrices
// (AlignedBuffer also holds the Winograd weights winograd.cpp keeps).
// A kernel asks for it on every call; a fresh allocation each time would have the OS fault in
// (and zero) its pages again whenever the block cache or malloc had given them back.
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "tensor/error.h"

namespace sono::cpu {

// A growable 64-byte aligned buffer of T (never shrinks; contents are not kept on growth).
template <typename T>
class AlignedBuffer {
 public:
  const T* data() const { return data_.get(); }

  T* reserve(int64_t count) {
    if (count > capacity_) {
      const size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
      data_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
      if (!data_) fail("out of CPU memory allocating a ", bytes, "-byte scratch buffer");
      capacity_ = count;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  int64_t capacity_ = 0;
};

// The calling thread's buffer of T for the use Tag names (one buffer per tag and thread).
template <typename Tag, typename T>
AlignedBuffer<T>& thread_buffer() {
  thread_local AlignedBuffer<T> buffer;
  return buffer;
}

}  // namespace sono::cpu
