// model_bench: times one training step (forward, loss, backward, optimiser step) or one
// inference (eval, no_grad) of a registry model on synthetic data and prints one JSON line, in
// the schema tools/bench/torch_bench.py prints for PyTorch. Run one config per process (as
// compare.py does) so that the peak RSS belongs to that config alone.
#include <omp.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "tensor/cpu/cpu_backend.h"
#include "tensor/autocast.h"
#include "tools/app/cli.h"
#include "tools/app/runtime.h"
#include "tools/bench/kernel_timer.h"
#include "tools/bench/model_step.h"
#include "cuda/emulated/emulated_backend.h"
#ifdef SONO_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

namespace {

using namespace sono;
using nlohmann::json;

struct Config {
  bench::StepConfig step;
  std::string amp;
  int64_t warmup, repeats, threads;
  bool profile_kernels;
};

// The engine's own peak of tensor bytes on the device (the GPU's, or the emulated one's under
// SONO_CUDA_EMULATOR=1).
double engine_peak_mib(Device device) {
  if (device == Device::cpu) return cpu::memory_stats().peak_bytes / 1048576.0;
#ifdef SONO_HAVE_CUDA
  if (&backend(Device::cuda) != &cuda::emulated_backend()) return cuda::memory_stats().peak / 1048576.0;
#endif
  return cuda::emulated_memory_stats().peak / 1048576.0;
}

// A field of /proc/self/status (VmRSS, VmHWM) in MiB; torch_bench.py reads the same fields.
double proc_status_mib(const std::string& field) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024.0;
  fail("no ", field, " in /proc/self/status");
}

// Brackets the timed steps for a GPU profiler (ncu --profile-from-start off).
void set_profiling(Device device, bool on) {
#ifdef SONO_HAVE_CUDA
  if (device == Device::cuda && &backend(Device::cuda) != &cuda::emulated_backend())
    cuda::set_profiling(on);
#endif
  (void)device, (void)on;
}

std::vector<double> milliseconds(std::vector<double> seconds) {
  for (double& s : seconds) s *= 1e3;
  return seconds;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Kernel totals per step, most expensive first.
json kernel_profile(const bench::KernelTimer& timer, int64_t steps) {
  std::vector<std::pair<std::string, bench::KernelTotal>> rows(timer.totals().begin(),
                                                               timer.totals().end());
  std::sort(rows.begin(), rows.end(),
            [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
  json out = json::array();
  for (auto& [kernel, total] : rows)
    out.push_back({{"kernel", kernel},
                   {"ms_per_step", 1e3 * total.seconds / steps},
                   {"calls_per_step", static_cast<double>(total.calls) / steps},
                   {"gflop_per_s", total.flops / total.seconds / 1e9}});
  return out;
}

json run_config(const Config& c) {
  double rss_base = proc_status_mib("VmRSS");
  bench::ModelStep step(c.step);
  for (int64_t i = 0; i < c.warmup; ++i) step.run();
  set_profiling(c.step.device, true);
  const auto& phases = step.phases();
  std::vector<double> totals;
  std::vector<std::vector<double>> per_phase(phases.size());
  for (int64_t i = 0; i < c.repeats; ++i) {
    std::vector<double> t = step.run();
    double total = 0;
    for (size_t p = 0; p < t.size(); ++p) per_phase[p].push_back(t[p]), total += t[p];
    totals.push_back(total);
  }
  set_profiling(c.step.device, false);
  double step_s = median(totals);
  json phase_ms;
  for (size_t p = 0; p < phases.size(); ++p) phase_ms[phases[p]] = 1e3 * median(per_phase[p]);

  const bench::StepConfig& s = c.step;
  json out = {{"impl", "sono"},          {"model", s.model},
              {"img_size", s.size},      {"batch", s.batch},
              {"mode", s.train ? "train" : "infer"},
              {"device", device_name(s.device)}, {"amp", c.amp},
              {"threads", c.threads},    {"warmup", c.warmup},
              {"repeats", c.repeats},    {"params", step.num_parameters()},
              {"median_ms", 1e3 * step_s},
              {"min_ms", 1e3 * *std::min_element(totals.begin(), totals.end())},
              {"step_ms", milliseconds(totals)},
              {"images_per_s", s.batch / step_s},
              {"phase_ms", phase_ms},    {"rss_base_mib", rss_base},
              {"rss_peak_mib", proc_status_mib("VmHWM")},
              {"rss_delta_mib", proc_status_mib("VmHWM") - rss_base},
              {"engine_peak_mib", engine_peak_mib(s.device)}};
  if (c.profile_kernels) {
    // Steps are timed again here: beside the kernel sum they show the op and autograd overhead.
    bench::KernelTimer timer;
    double seconds = 0;
    for (int64_t i = 0; i < c.repeats; ++i)
      for (double phase : step.run()) seconds += phase;
    out["profiled_mean_ms"] = 1e3 * seconds / c.repeats;
    out["kernels"] = kernel_profile(timer, c.repeats);
  }
  return out;
}

Config parse_config(const app::Cli& cli) {
  Config c;
  c.step = bench::parse_step_config(cli, app::select_device(cli.str("device")));
  c.warmup = cli.integer("warmup");
  c.repeats = cli.integer("repeats");
  SONO_CHECK(c.repeats >= 1, "--repeats must be at least 1");
  c.threads = cli.is_set("threads") ? cli.integer("threads") : omp_get_max_threads();
  c.profile_kernels = cli.is_set("profile-kernels");
  c.amp = cli.str("amp");
  SONO_CHECK(!c.profile_kernels || c.step.device == Device::cpu,
             "--profile-kernels times the CPU backend's kernels only");
  set_autocast(c.step.device, parse_precision(c.amp));
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  app::Cli cli("model_bench", "Times a training step or an inference of a model; one JSON line.");
  bench::add_step_options(cli);
  cli.option("warmup", "2", "untimed steps first")
      .option("repeats", "5", "timed steps; the median is reported")
      .option("threads", "", "OpenMP threads (default: OpenMP's own default)")
      .option("device", "cpu", "cpu or cuda")
      .option("amp", "off", "off, or bf16 (autocast on the device)")
      .flag("profile-kernels", "after timing, run the repeats again timing every kernel");
  json line;
  int status = 0;
  try {
    if (!cli.parse(argc, argv)) return 0;
    Config config = parse_config(cli);
    omp_set_num_threads(static_cast<int>(config.threads));
    cpu::set_huge_pages(config.step.train);  // as the training tools and predict run
    line = run_config(config);
  } catch (const std::exception& e) {
    line = {{"impl", "sono"}, {"error", e.what()}};
    status = 1;
  }
  std::cout << line.dump() << std::endl;
  return status;
}
