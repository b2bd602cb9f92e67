#pragma once
// What a launch would take on an NVIDIA H200, from what it declares (cuda/launch_audit.h):
//   launch overhead + max(bytes / bandwidth, FLOPs / peak, serial chain),
// with bandwidth and FP32 throughput scaled down when the launch has fewer threads than it
// takes to keep them busy, and the serial chain the busiest thread's dependent loop iterations
// at a memory latency each. The constants were fitted to ncu's times of one training step of
// convnext_base and mit_b2 on an H200 (tools/audit/ncu_h200.csv; README.md there).
#include <map>
#include <string>
#include <vector>

#include "cuda/launch_audit.h"

namespace sono::audit {

struct Gpu {
  double sms = 132;
  double threads_per_sm = 2048;
  // Bytes/s our grid-stride kernels reach (ncu: copy, binary, bias_add at 4096 blocks): 60% of
  // the 4.3 TB/s a device-to-device copy measured.
  double bandwidth = 2.6e12;
  double fp32_flops = 67e12;           // FMA on the CUDA cores
  double tensor_flops = 790e12;        // bfloat16 on the tensor cores, measured
  double library_efficiency = 0.65;    // of those peaks, cuBLAS/cuDNN at these models' shapes
  double launch_us = 2.0;              // a kernel's fixed cost: ncu's duration of a 1-block fill
  double saturating_threads = 132 * 1024.0;  // resident threads that reach full bandwidth
  // One loop iteration that waits on memory: reduce_per_thread's 512-thread launches measured
  // 0.45-0.55 us per row.
  double iteration_us = 0.5;

  double resident_threads() const { return sms * threads_per_sm; }
};

// Estimated duration of the launch in microseconds.
double estimate_us(const cuda::LaunchRecord& r, const Gpu& gpu = {});

// Too little parallelism for its work: fewer than kStarvedThreads threads (132 SMs x 256) while
// reading and writing more than kStarvedBytes, or a serial chain of over kStarvedSerialUs that
// is kStarvedSerialFactor times what streaming its bytes at full bandwidth would take. Library
// calls pick their own grids.
constexpr double kStarvedThreads = 132 * 256;
constexpr double kStarvedBytes = 8 << 20;
constexpr double kStarvedSerialUs = 50;
constexpr double kStarvedSerialFactor = 4;
bool starved(const cuda::LaunchRecord& r, const Gpu& gpu = {});
// No cost declared: the launcher was not annotated, and the audit would miss its time.
bool undeclared(const cuda::LaunchRecord& r);

// ncu's measurements (tools/audit/ncu_h200.csv), by launch name, grid and block, for one config
// ("convnext_base/224/16/train/bf16").
struct Measured {
  int64_t invocations = 0;
  double total_us = 0;
};
using MeasuredLaunches = std::map<std::string, Measured>;  // key: launch_key()
std::string launch_key(const std::string& name, const std::string& grid, const std::string& block);
std::string launch_key(const cuda::LaunchRecord& r);  // library calls: "library"
MeasuredLaunches read_ncu_csv(const std::string& path, const std::string& config);

// Measured step times (tools/audit/step_times_h200.csv) of one config, in ms, and peak device
// memory in MiB; 0 where none.
struct StepTimes {
  double ours_ms = 0, torch_ms = 0, ours_mib = 0, torch_mib = 0;
};
StepTimes read_step_times(const std::string& path, const std::string& config);

}  // namespace sono::audit
