#pragma once
// launch(): the one place a kernel is launched. Under nvcc it is the <<<grid, block, smem,
// stream>>> launch plus an error check that names the kernel; under a host compiler the same
// kernel source runs on the CPU in the SIMT emulator (cuda/simt/emulator.h) with its current
// schedule. No <<< >>> anywhere else, so every kernel runs under both.
//
// Kernels, their launchers and this header live in the inline namespace SONO_KERNEL_TARGET,
// which differs between the two builds: a test binary holding emulated kernels and the real
// backend never mixes up two definitions of the same name.
#include <cstddef>
#include <tuple>
#include <utility>

#include "cuda/launch_audit.h"

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define SONO_KERNEL_TARGET nvcc_target
#else
#include "cuda/simt/emulator.h"
#define SONO_KERNEL_TARGET simt_target
#endif

namespace sono::cuda {

#ifdef __CUDACC__
// Throws sono::Error naming the kernel when its launch failed (and, with SONO_CUDA_SYNC=1 in
// the environment, when its execution failed). Defined in cuda/check.cpp.
void check_launch(const char* kernel, cudaError_t launch_status, cudaStream_t stream);
#endif

inline namespace SONO_KERNEL_TARGET {

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t smem = 0;  // dynamic shared memory bytes
  cudaStream_t stream = nullptr;
  LaunchCost cost{};  // what the launch moves and computes, for the audit (launch_audit.h)
};

template <typename... P, typename... A>
void launch(const char* name, void (*kernel)(P...), const LaunchConfig& cfg, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "launch: argument count differs from the kernel's");
  // CUDA rejects an empty grid; an empty tensor simply has no work.
  if (cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0) return;
  if (launch_audit::recording()) {
    const unsigned grid[3] = {cfg.grid.x, cfg.grid.y, cfg.grid.z};
    const unsigned block[3] = {cfg.block.x, cfg.block.y, cfg.block.z};
    launch_audit::record(name, grid, block, cfg.smem, cfg.cost);
    if (launch_audit::dry_run()) return;
  }
#ifdef __CUDACC__
  kernel<<<cfg.grid, cfg.block, cfg.smem, cfg.stream>>>(static_cast<P>(std::forward<A>(args))...);
  check_launch(name, cudaGetLastError(), cfg.stream);
#else
  // Parameters are converted once, as CUDA copies them to the parameter space; each thread
  // then receives its own copy.
  std::tuple<P...> params(static_cast<P>(std::forward<A>(args))...);
  simt::run_grid(name, cfg.grid, cfg.block, cfg.smem, [&] { std::apply(kernel, params); });
#endif
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
