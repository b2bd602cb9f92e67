#pragma once
// The CUDA device the CUDA tests run on. By default the emulated one (cuda/emulated: our kernels
// compiled for the host and run by the SIMT emulator over host memory), so that every machine
// runs them. With SONO_TEST_DEVICE=gpu, in a CUDA build on a machine with a GPU, the real one:
// every test that goes through the Backend (ops, kernels' entry points, whole models) then
// checks the kernels on silicon against the CPU; the tests that launch kernels on host memory
// directly (the emulator's own rules, some launchers) stay on the emulator.
#include <doctest/doctest.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cuda/emulated/emulated_backend.h"
#include "cuda/simt/emulator.h"
#include "tensor/backend.h"
#ifdef SONO_HAVE_CUDA
#include "cuda/cuda_backend.h"
#include "cuda/conv_impl.h"
#endif

namespace sono::test {

inline bool on_real_gpu() {
  const char* device = std::getenv("SONO_TEST_DEVICE");
  return device && std::string(device) == "gpu";
}

// n values uniform in [lo, hi), each exactly representable in float32, so that float32 and
// float64 tensors of them hold the same numbers.
inline std::vector<double> uniform(int64_t n, uint64_t seed, double lo = -2.0, double hi = 2.0) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = static_cast<float>(dist(gen));
  return v;
}

constexpr simt::Schedule kSchedules[] = {simt::Schedule::forward, simt::Schedule::reversed,
                                         simt::Schedule::shuffled};

// Runs body once in each of the emulator's schedules (the shuffled one seeded), naming the
// schedule on failure.
template <typename F>
void in_each_schedule(F&& body) {
  for (simt::Schedule s : kSchedules) {
    simt::set_schedule(s, 20240601);
    INFO("schedule: " << std::string(simt::schedule_name(s)));
    body();
  }
  simt::set_schedule(simt::Schedule::forward);
}

// Makes Device::cuda the test device for a test's duration.
class TestDevice {
 public:
  TestDevice() {
    if (on_real_gpu()) {
#ifdef SONO_HAVE_CUDA
      SONO_CHECK(cuda::device_count() > 0, "SONO_TEST_DEVICE=gpu: no usable GPU on this machine");
      // The tests hold float32 results to float32 rounding; TF32, the convs' default (as
      // PyTorch's), has a test of its own that turns it on.
      cuda::choose_convs(conv_impl_from_env(), /*allow_tf32=*/false);
      tf32_off_ = true;
      return;
#else
      fail("SONO_TEST_DEVICE=gpu: this build has no CUDA backend (no nvcc at configure time)");
#endif
    }
    try {
      previous_ = &backend(Device::cuda);
    } catch (const Error&) {
    }
    register_backend(Device::cuda, &cuda::emulated_backend());
    registered_ = true;
  }
  ~TestDevice() {
    if (registered_) register_backend(Device::cuda, previous_);
#ifdef SONO_HAVE_CUDA
    if (tf32_off_) cuda::choose_convs(conv_impl_from_env(), cuda::allow_tf32_from_env());
#endif
  }
  TestDevice(const TestDevice&) = delete;
  TestDevice& operator=(const TestDevice&) = delete;

 private:
  static std::string conv_impl_from_env() {
    const char* impl = std::getenv("SONO_CONV_IMPL");
    return impl ? impl : "auto";
  }

  Backend* previous_ = nullptr;
  bool registered_ = false;
  bool tf32_off_ = false;
};

// The test device's memory: bytes in use and peak (after the queued work), and a peak reset.
inline cuda::MemoryStats device_memory_stats() {
#ifdef SONO_HAVE_CUDA
  if (on_real_gpu()) {
    cuda::synchronize();
    return cuda::memory_stats();
  }
#endif
  return cuda::emulated_memory_stats();
}
inline void reset_device_peak_memory() {
#ifdef SONO_HAVE_CUDA
  if (on_real_gpu()) return cuda::reset_peak_memory();
#endif
  cuda::reset_emulated_peak_memory();
}

}  // namespace sono::test
