#include "tools/audit/cost_model.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "tensor/error.h"

namespace sono::audit {

namespace {

// The first `count` comma-separated fields of a line (later ones may hold quoted commas).
std::vector<std::string> fields(const std::string& line, size_t count) {
  std::vector<std::string> out;
  std::stringstream in(line);
  for (std::string f; out.size() < count && std::getline(in, f, ',');) out.push_back(f);
  return out;
}

// Calls row(fields) for each data line of a CSV whose first field is `config`.
template <typename F>
void for_config_rows(const std::string& path, const std::string& config, size_t count, F&& row) {
  std::ifstream in(path);
  SONO_CHECK(in, path, ": cannot open");
  std::string line;
  std::getline(in, line);  // header
  for (int number = 2; std::getline(in, line); ++number) {
    const std::vector<std::string> f = fields(line, count);
    SONO_CHECK(f.size() == count, path, ":", number, ": expected ", count, " fields");
    if (f[0] == config) row(f);
  }
}

std::string dims(const unsigned d[3]) {
  return std::to_string(d[0]) + "x" + std::to_string(d[1]) + "x" + std::to_string(d[2]);
}

}  // namespace

double estimate_us(const cuda::LaunchRecord& r, const Gpu& gpu) {
  const cuda::LaunchCost& c = r.cost;
  const double bytes = c.bytes_read + c.bytes_written;
  if (r.library) {
    const double peak = c.tensor_cores ? gpu.tensor_flops : gpu.fp32_flops;
    const double s = std::max(bytes / gpu.bandwidth, c.flops / peak) / gpu.library_efficiency;
    return gpu.launch_us + 1e6 * s;
  }
  // Bandwidth wants enough loads in flight; FP32 throughput wants every SM busy.
  const double threads = static_cast<double>(r.threads());
  const double memory_share = std::min(1.0, threads / gpu.saturating_threads);
  const double compute_share = std::min(1.0, threads / gpu.resident_threads());
  const double memory_s = bytes / (gpu.bandwidth * memory_share);
  const double compute_s = c.flops / (gpu.fp32_flops * compute_share);
  const double serial_us = gpu.iteration_us * static_cast<double>(r.serial_iterations());
  return gpu.launch_us + std::max({1e6 * memory_s, 1e6 * compute_s, serial_us});
}

bool starved(const cuda::LaunchRecord& r, const Gpu& gpu) {
  if (r.library) return false;
  const double bytes = r.cost.bytes_read + r.cost.bytes_written;
  if (static_cast<double>(r.threads()) < kStarvedThreads && bytes > kStarvedBytes) return true;
  const double serial_us = gpu.iteration_us * static_cast<double>(r.serial_iterations());
  const double streamed_us = gpu.launch_us + 1e6 * bytes / gpu.bandwidth;
  return serial_us > kStarvedSerialUs && serial_us > kStarvedSerialFactor * streamed_us;
}

bool undeclared(const cuda::LaunchRecord& r) {
  const cuda::LaunchCost& c = r.cost;
  return c.bytes_read == 0 && c.bytes_written == 0 && c.flops == 0;
}

std::string launch_key(const std::string& name, const std::string& grid,
                       const std::string& block) {
  return name + " " + grid + " " + block;
}

std::string launch_key(const cuda::LaunchRecord& r) {
  return r.library ? "library" : launch_key(r.name, dims(r.grid), dims(r.block));
}

MeasuredLaunches read_ncu_csv(const std::string& path, const std::string& config) {
  MeasuredLaunches out;
  for_config_rows(path, config, 6, [&](const std::vector<std::string>& f) {
    const std::string key = f[1] == "library" ? "library" : launch_key(f[1], f[2], f[3]);
    const int64_t calls = std::stoll(f[4]);
    Measured& m = out[key];
    m.invocations += calls;
    m.total_us += static_cast<double>(calls) * std::stod(f[5]);
  });
  return out;
}

StepTimes read_step_times(const std::string& path, const std::string& config) {
  StepTimes t;
  for_config_rows(path, config, 5, [&](const std::vector<std::string>& f) {
    t = {std::stod(f[1]), std::stod(f[2]), std::stod(f[3]), std::stod(f[4])};
  });
  return t;
}

}  // namespace sono::audit
