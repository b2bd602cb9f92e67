// model_bench: times one training step (forward, loss, backward, optimiser step) or one
// inference (eval, no_grad) of a registry model on synthetic data and prints one JSON line, in
// the schema tools/bench/torch_bench.py prints for PyTorch. Run one config per process (as
// compare.py does) so that the peak RSS belongs to that config alone.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "autograd/node.h"
#include "layers/optim.h"
#include "models/registry.h"
#include "tensor/cpu/cpu_backend.h"
#include "tensor/ops.h"
#include "tensor/autocast.h"
#include "tools/app/cli.h"
#include "tools/app/runtime.h"
#include "tools/bench/kernel_timer.h"
#include "cuda/emulated/backend.h"
#ifdef SONO_HAVE_CUDA
#include "cuda/backend.h"
#endif

namespace {

using namespace sono;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Config {
  std::string model;
  int64_t size, batch, in_channels, classes;
  bool train;
  Device device;
  std::string amp;
  int64_t warmup, repeats, threads;
  bool profile_kernels;
};

struct Batch {
  Tensor images;  // [N, S, S, in_channels]
  Tensor target;  // segmentation: mask [N, S, S, 1] of 0/1; classification: int64 labels [N]
};

// Seconds since `since`, once the device has done the work queued so far.
double elapsed_s(Clock::time_point since, Device device) {
  backend(device).synchronize();
  return std::chrono::duration<double>(Clock::now() - since).count();
}

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

std::vector<double> milliseconds(std::vector<double> seconds) {
  for (double& s : seconds) s *= 1e3;
  return seconds;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

Batch synthetic_batch(const Config& c, models::Task task) {
  Generator gen(0);
  Batch b{randn({c.batch, c.size, c.size, c.in_channels}, gen), {}};
  if (task == models::Task::segmentation) {
    b.target = gt(rand({c.batch, c.size, c.size, c.classes}, gen), 0.5);
  } else {
    std::vector<int64_t> labels(c.batch);
    for (int64_t i = 0; i < c.batch; ++i) labels[i] = i % c.classes;
    b.target = Tensor::from_labels(labels);
  }
  return {b.images.to(c.device), b.target.to(c.device)};
}

// What the training tools minimise: BCE + soft Dice for masks, cross-entropy for classes.
Tensor loss_of(models::Task task, const Tensor& logits, const Tensor& target) {
  if (task == models::Task::segmentation)
    return add(bce_with_logits(logits, target), soft_dice_loss(logits, target));
  return cross_entropy(logits, target);
}

const std::vector<std::string>& phase_names(bool train) {
  static const std::vector<std::string> train_phases{"forward", "backward", "optimizer"};
  static const std::vector<std::string> infer_phases{"forward"};
  return train ? train_phases : infer_phases;
}

// Seconds spent in each of phase_names(train) during one step.
std::vector<double> run_step(const Config& c, models::Task task, nn::UnaryModule& model,
                             nn::Optimizer& optimizer, const Batch& batch) {
  auto start = Clock::now();
  if (!c.train) {
    autograd::NoGradGuard no_grad;
    model.forward(batch.images);
    return {elapsed_s(start, c.device)};
  }
  model.zero_grad();
  Tensor loss = loss_of(task, model.forward(batch.images), batch.target);
  double forward = elapsed_s(start, c.device);
  start = Clock::now();
  loss.backward();
  double backward = elapsed_s(start, c.device);
  start = Clock::now();
  optimizer.step();
  return {forward, backward, elapsed_s(start, c.device)};
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
  const models::ModelEntry& entry = models::find_model(c.model);
  auto model = entry.build({c.in_channels, c.classes, 0.0});
  model->to(c.device);
  model->train(c.train);
  Batch batch = synthetic_batch(c, entry.task);
  // One group with decay on every parameter, as torch_bench's AdamW(model.parameters()).
  nn::AdamW optimizer(nn::single_group(*model), {.lr = 1e-4, .weight_decay = 0.05});

  for (int64_t i = 0; i < c.warmup; ++i) run_step(c, entry.task, *model, optimizer, batch);
  const auto& phases = phase_names(c.train);
  std::vector<double> totals;
  std::vector<std::vector<double>> per_phase(phases.size());
  for (int64_t i = 0; i < c.repeats; ++i) {
    std::vector<double> t = run_step(c, entry.task, *model, optimizer, batch);
    double total = 0;
    for (size_t p = 0; p < t.size(); ++p) per_phase[p].push_back(t[p]), total += t[p];
    totals.push_back(total);
  }
  double step_s = median(totals);
  json phase_ms;
  for (size_t p = 0; p < phases.size(); ++p) phase_ms[phases[p]] = 1e3 * median(per_phase[p]);

  json out = {{"impl", "sono"},          {"model", c.model},
              {"img_size", c.size},      {"batch", c.batch},
              {"mode", c.train ? "train" : "infer"},
              {"device", device_name(c.device)}, {"amp", c.amp},
              {"threads", c.threads},    {"warmup", c.warmup},
              {"repeats", c.repeats},    {"params", model->num_parameters()},
              {"median_ms", 1e3 * step_s},
              {"min_ms", 1e3 * *std::min_element(totals.begin(), totals.end())},
              {"step_ms", milliseconds(totals)},
              {"images_per_s", c.batch / step_s},
              {"phase_ms", phase_ms},    {"rss_base_mib", rss_base},
              {"rss_peak_mib", proc_status_mib("VmHWM")},
              {"rss_delta_mib", proc_status_mib("VmHWM") - rss_base},
              {"engine_peak_mib", engine_peak_mib(c.device)}};
  if (c.profile_kernels) {
    // Steps are timed again here: beside the kernel sum they show the op and autograd overhead.
    bench::KernelTimer timer;
    auto start = Clock::now();
    for (int64_t i = 0; i < c.repeats; ++i) run_step(c, entry.task, *model, optimizer, batch);
    out["profiled_mean_ms"] = 1e3 * elapsed_s(start, c.device) / c.repeats;
    out["kernels"] = kernel_profile(timer, c.repeats);
  }
  return out;
}

Config parse_config(const app::Cli& cli) {
  Config c;
  c.model = cli.str("model");
  bool segmentation = models::find_model(c.model).task == models::Task::segmentation;
  c.size = cli.integer("size");
  c.batch = cli.integer("batch");
  // Defaults as the toolkit uses them: RGB masks-out for segmentation, RGB + mask for classes.
  c.in_channels = cli.is_set("in-channels") ? cli.integer("in-channels") : segmentation ? 3 : 4;
  c.classes = cli.is_set("classes") ? cli.integer("classes") : segmentation ? 1 : 3;
  std::string mode = cli.str("mode");
  SONO_CHECK(mode == "train" || mode == "infer", "--mode is train or infer, got '", mode, "'");
  c.train = mode == "train";
  c.warmup = cli.integer("warmup");
  c.repeats = cli.integer("repeats");
  SONO_CHECK(c.repeats >= 1, "--repeats must be at least 1");
  c.threads = cli.is_set("threads") ? cli.integer("threads") : omp_get_max_threads();
  c.profile_kernels = cli.is_set("profile-kernels");
  c.device = app::select_device(cli.str("device"));
  c.amp = cli.str("amp");
  SONO_CHECK(!c.profile_kernels || c.device == Device::cpu,
             "--profile-kernels times the CPU backend's kernels only");
  set_autocast(c.device, parse_precision(c.amp));
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  app::Cli cli("model_bench", "Times a training step or an inference of a model; one JSON line.");
  cli.option("model", "mit_b2", "registry name (mit_b2, convnext_base, ...)")
      .option("size", "256", "image side in pixels")
      .option("batch", "1", "batch size")
      .option("mode", "train", "train (forward, loss, backward, optimiser step) or infer")
      .option("in-channels", "", "input channels (default: 3 segmentation, 4 classification)")
      .option("classes", "", "output classes (default: 1 segmentation, 3 classification)")
      .option("warmup", "2", "untimed steps first")
      .option("repeats", "5", "timed steps; the median is reported")
      .option("threads", "", "OpenMP threads (default: OpenMP's own default)")
      .option("device", "cpu", "cpu or cuda")
      .option("amp", "off", "off, or bf16 (autocast on the device; cuda only)")
      .flag("profile-kernels", "after timing, run the repeats again timing every kernel");
  json line;
  int status = 0;
  try {
    if (!cli.parse(argc, argv)) return 0;
    Config config = parse_config(cli);
    omp_set_num_threads(static_cast<int>(config.threads));
    line = run_config(config);
  } catch (const std::exception& e) {
    line = {{"impl", "sono"}, {"error", e.what()}};
    status = 1;
  }
  std::cout << line.dump() << std::endl;
  return status;
}
