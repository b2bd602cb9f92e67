// The launch audit (cuda/launch_audit.h, tools/audit/cost_model.h): the recorder, the dry run,
// and the H200 cost model against launches ncu measured on an H200 (tools/audit/ncu_h200.csv).
#include <vector>

#include "cuda/kernels/reduce.cuh"
#include "helpers.h"
#include "tools/audit/cost_model.h"

using namespace sono;
using cuda::LaunchRecord;
namespace launch_audit = cuda::launch_audit;

namespace {

// ncu of the kernels of 28af8de, before the reductions were split: the old kernels must be
// estimated as slow as they measured.
const std::string kNcu = std::string(SONO_SOURCE_DIR) + "/tools/audit/ncu_h200_28af8de.csv";
const std::string kConvnext = "convnext_base/224/16/train/bf16";

// The records of the launches `launcher` makes, in a dry run.
template <typename F>
std::vector<LaunchRecord> dry_records(F&& launcher) {
  launch_audit::start(launch_audit::Mode::dry_run);
  launcher();
  return launch_audit::stop();
}
template <typename F>
LaunchRecord dry_record(F&& launcher) {
  std::vector<LaunchRecord> log = dry_records(launcher);
  REQUIRE(log.size() == 1);
  return log[0];
}

// A bias gradient of ConvNeXt-Base's backward as the kernel ncu measured (28af8de) launched
// and declared it: a thread per channel walking all `rows` pixels.
LaunchRecord per_thread_bias_gradient(int64_t rows, int64_t cols) {
  LaunchRecord r;
  r.name = "reduce_per_thread";
  r.grid[0] = static_cast<unsigned>(cuda::ceil_div(cols, 256));
  r.grid[1] = r.grid[2] = r.block[1] = r.block[2] = 1;
  r.block[0] = 256;
  r.cost = cuda::looped(4.0 * rows * cols, 4.0 * cols, cols, rows);
  return r;
}

double measured_mean_us(const std::string& key) {
  const audit::MeasuredLaunches ncu = audit::read_ncu_csv(kNcu, kConvnext);
  const auto it = ncu.find(key);
  REQUIRE(it != ncu.end());
  return it->second.total_us / static_cast<double>(it->second.invocations);
}

}  // namespace

TEST_CASE("a dry run records launches without running them; a recording runs them") {
  std::vector<float> x(6, 1.0f), out(3, -7.0f);  // [2, 3]: column sums 2
  auto sum = [&] { cuda::column_sums(x.data(), 2, 3, out.data(), nullptr); };
  const LaunchRecord r = dry_record(sum);
  CHECK(out == std::vector<float>(3, -7.0f));
  CHECK(r.name == "column_sums");
  CHECK(r.grid[0] == 1);
  CHECK(r.block[0] == 32);
  CHECK(r.block[1] == 8);
  CHECK(r.cost.bytes_read == 24);
  CHECK(r.cost.bytes_written == 12);
  CHECK(r.serial_iterations() == 1);  // 2 rows over the block's 8 rows of threads

  launch_audit::start(launch_audit::Mode::record);
  sum();
  CHECK(launch_audit::stop().size() == 1);
  CHECK(out == std::vector<float>(3, 2.0f));
  sum();  // not recording: nothing logged
  launch_audit::start(launch_audit::Mode::record);
  CHECK(launch_audit::stop().empty());
}

TEST_CASE("the cost model predicts the old reduce_per_thread launches as slow as ncu measured") {
  // Stage 4's 4096-channel MLP bias over 16 x 7 x 7 pixels, stage 3's 512 channels over
  // 16 x 14 x 14: one thread per channel walks every pixel.
  for (auto [rows, cols, key] : {std::tuple<int64_t, int64_t, const char*>{
                                     784, 4096, "reduce_per_thread 16x1x1 256x1x1"},
                                 {3136, 512, "reduce_per_thread 2x1x1 256x1x1"}}) {
    const LaunchRecord r = per_thread_bias_gradient(rows, cols);
    CHECK(audit::launch_key(r) == key);
    const double estimate = audit::estimate_us(r), measured = measured_mean_us(key);
    INFO(key, ": estimated ", estimate, " us, measured ", measured, " us");
    CHECK(estimate > measured / 1.5);
    CHECK(estimate < measured * 1.5);
    CHECK(audit::starved(r));
    // The two-stage reduction that replaced it fills the GPU.
    const std::vector<LaunchRecord> now = dry_records([&] {
      cuda::reduce_sum(cuda::make_reduce_space({rows, cols}, {cols, 1}, {1, cols}), nullptr,
                       nullptr, nullptr, nullptr);
    });
    double now_us = 0;
    for (const LaunchRecord& launch : now) {
      INFO(launch.name);
      CHECK_FALSE(audit::starved(launch));
      CHECK_FALSE(audit::undeclared(launch));
      now_us += audit::estimate_us(launch);
    }
    CHECK(now_us < estimate / 10);
  }
}

TEST_CASE("a launch that fills the GPU is not starved and streams at the bandwidth") {
  const int64_t n = 16 * 56 * 56 * 128;  // a ConvNeXt stage-1 activation
  const LaunchRecord r = dry_record([&] {
    cuda::unary_map(n, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
                    cuda::unary::Neg{}, nullptr);
  });
  CHECK_FALSE(audit::starved(r));
  CHECK_FALSE(audit::undeclared(r));
  const audit::Gpu gpu;
  CHECK(audit::estimate_us(r) == doctest::Approx(gpu.launch_us + 1e6 * 8.0 * n / gpu.bandwidth));
}
