// launch_audit: records every kernel launch and cuBLAS/cuDNN call of one training step (or
// inference) of a model on the emulated CUDA device, without running them (a dry run: shapes
// do not depend on values), and prints each kernel's estimated H200 time (cost_model.h) beside
// ncu's measured time where a launch of that name, grid and block was measured, the step's
// estimate beside the measured step times, the starved launches and the peak device memory
// (the emulated device's allocator is the GPU's, so it is the measured one). Exit status 1 with
// --fail-on-starved when a launch is starved or declares no cost, with --fail-over-torch-memory
// when the peak exceeds PyTorch's measured one.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>

#include "cuda/emulated/emulated_backend.h"
#include "tensor/autocast.h"
#include "tools/app/cli.h"
#include "tools/audit/cost_model.h"
#include "tools/bench/model_step.h"

namespace {

using namespace sono;
using cuda::LaunchRecord;

// Launches of one name, grid and block (library calls: of one name).
struct Group {
  std::string name, shape;
  int64_t launches = 0, threads = 0;
  double bytes = 0, flops = 0, estimated_us = 0;
  bool starved = false, undeclared = false;
};

struct RecordedStep {
  std::vector<LaunchRecord> launches;
  double peak_mib;  // the emulated device's peak of tensor bytes over both steps
};

// Two steps, the second recorded: the first creates the optimizer state, so the second is a
// steady step (as ncu's, after a warm-up step) and the peak is model_bench's.
RecordedStep record_step(const bench::StepConfig& config) {
  bench::ModelStep step(config);
  cuda::launch_audit::start(cuda::launch_audit::Mode::dry_run);
  step.run();
  cuda::launch_audit::start(cuda::launch_audit::Mode::dry_run);  // a fresh log: the second step's
  step.run();
  return {cuda::launch_audit::stop(), cuda::emulated_memory_stats().peak / 1048576.0};
}

std::vector<Group> group_launches(const std::vector<LaunchRecord>& records) {
  std::map<std::string, Group> groups;
  for (const LaunchRecord& r : records) {
    const std::string key = r.library ? r.name : audit::launch_key(r);
    Group& g = groups[key];
    g.name = r.name;
    g.shape = r.library ? "(library)" : key.substr(r.name.size() + 1);
    g.launches += 1;
    g.threads = r.threads();
    g.bytes += r.cost.bytes_read + r.cost.bytes_written;
    g.flops += r.cost.flops;
    g.estimated_us += audit::estimate_us(r);
    g.starved = g.starved || audit::starved(r);
    g.undeclared = g.undeclared || audit::undeclared(r);
  }
  std::vector<Group> out;
  for (auto& [key, g] : groups) out.push_back(g);
  std::sort(out.begin(), out.end(),
            [](const Group& a, const Group& b) { return a.estimated_us > b.estimated_us; });
  return out;
}

std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

// One table row; `measured` null where ncu has no launch of that name, grid and block.
void print_row(const Group& g, const audit::Measured* measured) {
  std::string flags = g.starved ? "STARVED" : "";
  if (g.undeclared) flags += " NO-COST";
  std::printf("%-30s %-22s %6lld %9s %9.1f %8.2f %11.1f %11s %7s %6s %s\n", g.name.c_str(),
              g.shape.c_str(), static_cast<long long>(g.launches),
              g.shape == "(library)" ? "" : std::to_string(g.threads).c_str(), g.bytes / 1e6,
              g.flops / 1e9, g.estimated_us,
              measured ? format("%.1f", measured->total_us).c_str() : "",
              measured ? std::to_string(measured->invocations).c_str() : "",
              measured ? format("%.2f", g.estimated_us / measured->total_us).c_str() : "",
              flags.c_str());
}

struct Totals {
  double estimated_us = 0, matched_estimate_us = 0, matched_measured_us = 0;
  int64_t starved = 0, undeclared = 0;
};

Totals print_table(const std::vector<Group>& groups, const audit::MeasuredLaunches& ncu,
                   size_t rows) {
  std::printf("%-30s %-22s %6s %9s %9s %8s %11s %11s %7s %6s\n", "kernel", "grid block",
              "calls", "threads", "MB", "GFLOP", "est us", "ncu us", "ncu n", "ratio");
  Totals t;
  double library_us = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    const Group& g = groups[i];
    const bool library = g.shape == "(library)";
    const auto it = library ? ncu.end() : ncu.find(g.name + " " + g.shape);
    const audit::Measured* m = it == ncu.end() ? nullptr : &it->second;
    if (i < rows || g.starved || g.undeclared) print_row(g, m);
    t.estimated_us += g.estimated_us;
    if (library) library_us += g.estimated_us;
    if (m) t.matched_estimate_us += g.estimated_us, t.matched_measured_us += m->total_us;
    t.starved += g.starved ? g.launches : 0;
    t.undeclared += g.undeclared ? g.launches : 0;
  }
  if (groups.size() > rows) std::printf("(%zu more groups)\n", groups.size() - rows);
  if (const auto lib = ncu.find("library"); lib != ncu.end()) {
    std::printf("all cuBLAS/cuDNN calls: estimated %.1f us, ncu %.1f us over %lld kernels\n",
                library_us, lib->second.total_us,
                static_cast<long long>(lib->second.invocations));
    t.matched_estimate_us += library_us;
    t.matched_measured_us += lib->second.total_us;
  }
  return t;
}

double total_us(const audit::MeasuredLaunches& ncu) {
  double us = 0;
  for (const auto& [key, m] : ncu) us += m.total_us;
  return us;
}

void print_step(const Totals& t, const audit::MeasuredLaunches& ncu,
                const audit::StepTimes& step, double peak_mib) {
  std::printf("\nstep: estimated %.1f ms", t.estimated_us / 1e3);
  if (!ncu.empty())
    std::printf("; ncu kernel time %.1f ms (matched launches: estimated %.1f ms, measured %.1f ms)",
                total_us(ncu) / 1e3, t.matched_estimate_us / 1e3, t.matched_measured_us / 1e3);
  std::printf("\n");
  if (step.ours_ms > 0)
    std::printf("measured step on the H200: ours %.1f ms (estimate/ours %.2f), PyTorch %.1f ms "
                "(estimate/PyTorch %.2f)\n",
                step.ours_ms, t.estimated_us / 1e3 / step.ours_ms, step.torch_ms,
                t.estimated_us / 1e3 / step.torch_ms);
  std::printf("peak device memory: %.0f MiB", peak_mib);
  if (step.ours_mib > 0)
    std::printf(" (measured on the H200: ours %.0f MiB, PyTorch %.0f MiB)", step.ours_mib,
                step.torch_mib);
  std::printf("\n");
  std::printf("starved launches: %lld; launches without a declared cost: %lld\n",
              static_cast<long long>(t.starved), static_cast<long long>(t.undeclared));
}

std::string config_key(const bench::StepConfig& c, const std::string& amp) {
  return c.model + "/" + std::to_string(c.size) + "/" + std::to_string(c.batch) + "/" +
         (c.train ? "train" : "infer") + "/" + amp;
}

}  // namespace

int main(int argc, char** argv) {
  app::Cli cli("launch_audit",
               "Records one step's kernel launches (a dry run on the emulated device) and "
               "prints their estimated H200 times beside ncu's measured ones.");
  bench::add_step_options(cli);
  cli.option("amp", "off", "off, or bf16 (autocast)")
      .option("ncu", SONO_AUDIT_DATA "/ncu_h200.csv", "ncu per-kernel times (parse_ncu.py)")
      .option("step-times", SONO_AUDIT_DATA "/step_times_h200.csv", "measured step times")
      .option("rows", "40", "table rows (starved launches are always shown)")
      .flag("fail-on-starved", "exit 1 when a launch is starved or declares no cost")
      .flag("fail-over-torch-memory",
            "exit 1 when the peak device memory exceeds PyTorch's measured one (step-times)");
  try {
    if (!cli.parse(argc, argv)) return 0;
    register_backend(Device::cuda, &cuda::emulated_backend());
    const bench::StepConfig config = bench::parse_step_config(cli, Device::cuda);
    const std::string amp = cli.str("amp");
    set_autocast(Device::cuda, parse_precision(amp));
    const std::string key = config_key(config, amp);
    const audit::MeasuredLaunches ncu = audit::read_ncu_csv(cli.str("ncu"), key);
    const RecordedStep recorded = record_step(config);
    std::printf("%s: %zu launches recorded (dense convs as our implicit GEMM; the GPU may pick "
                "cuDNN for float32 ones)\n\n",
                key.c_str(), recorded.launches.size());
    const Totals t = print_table(group_launches(recorded.launches), ncu, cli.integer("rows"));
    const audit::StepTimes measured = audit::read_step_times(cli.str("step-times"), key);
    print_step(t, ncu, measured, recorded.peak_mib);
    const bool starved = t.starved || t.undeclared;
    const bool over_torch = measured.torch_mib > 0 && recorded.peak_mib > measured.torch_mib;
    if (over_torch) std::printf("peak device memory over PyTorch's\n");
    return (cli.is_set("fail-on-starved") && starved) ||
                   (cli.is_set("fail-over-torch-memory") && over_torch)
               ? 1
               : 0;
  } catch (const std::exception& e) {
    std::cerr << "launch_audit: " << e.what() << "\n";
    return 2;
  }
}
