#pragma once
// The emulated CUDA device (cuda/emulated) for the CUDA tests: our kernels over host memory.
#include "cuda/emulated/backend.h"
#include "tensor/backend.h"

namespace sono::test {

// Makes Device::cuda the emulated device for a test's duration.
class EmulatedDevice {
 public:
  EmulatedDevice() {
    try {
      previous_ = &backend(Device::cuda);
    } catch (const Error&) {
    }
    register_backend(Device::cuda, &cuda::emulated_backend());
  }
  ~EmulatedDevice() { register_backend(Device::cuda, previous_); }
  EmulatedDevice(const EmulatedDevice&) = delete;
  EmulatedDevice& operator=(const EmulatedDevice&) = delete;

 private:
  Backend* previous_ = nullptr;
};

}  // namespace sono::test
