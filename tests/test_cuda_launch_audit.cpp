// The launch audit (cuda/launch_audit.h, tools/audit/cost_model.h): the recorder, the dry run,
// and the H200 cost model against launches ncu measured on an H200 (tools/audit/ncu_h200.csv).
#include <vector>

#include "cuda/kernels/conv.cuh"
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

double measured_mean_us(const std::string& key, const std::string& path = kNcu,
                        const std::string& config = kConvnext) {
  const audit::MeasuredLaunches ncu = audit::read_ncu_csv(path, config);
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

// MiT-B2's stage-3 spatial reduction (2x2, stride 2, 320 channels, batch 8 at 16x16), whose
// input gradient the H200 measured (run 4, tools/audit/ncu_h200.csv) as the implicit GEMM that
// walked every (tap, pixel) pair. The model puts that launch at about 0.55 of its measured time,
// so the gains estimated against it are not inflated by the baseline. What replaced it: for a
// one-group conv, grad_y w as one library GEMM and col2im's gather, far below; for a grouped
// one, the stride-phased implicit GEMM, a quarter of the loads at this stride (then limited by
// its 320 blocks; at MiT's stride 8 it gathers 1/64).
TEST_CASE("the strided conv input gradient: no slower than measured before, far faster now") {
  const cuda::ConvGeometry g{8, 16, 16, 320, 320, 2, 2, 8, 8, 2, 0, 1, 1};
  LaunchRecord old;
  old.name = "conv_backward_input";
  old.grid[0] = 32, old.grid[1] = 5, old.grid[2] = 7;
  old.block[0] = old.block[1] = 16, old.block[2] = 1;
  old.cost = cuda::implicit_gemm_cost({2048, 320, 1280, 1, 7}, 32 * 5 * 7);
  const std::string key = "conv_backward_input 32x5x7 16x16x1";
  CHECK(audit::launch_key(old) == key);
  const double estimate = audit::estimate_us(old);
  const double measured =
      measured_mean_us(key, std::string(SONO_SOURCE_DIR) + "/tools/audit/ncu_h200.csv",
                       "mit_b2/256/8/train/off");
  INFO("estimated ", estimate, " us, measured ", measured, " us");
  CHECK(estimate > measured / 2);
  CHECK(estimate <= measured);
  const auto total_us = [](const std::vector<LaunchRecord>& launches) {
    double us = 0;
    for (const LaunchRecord& launch : launches) {
      CHECK_FALSE(audit::starved(launch));
      CHECK_FALSE(audit::undeclared(launch));
      us += audit::estimate_us(launch);
    }
    return us;
  };
  const double phased = total_us(dry_records([&] {
    cuda::conv_backward_input(g, nullptr, nullptr, nullptr, nullptr, nullptr);
  }));
  // grad_cols [512, 1280] = grad_y [512, 320] w [320, 1280], as KernelBackend::gemm declares it.
  LaunchRecord gemm;
  gemm.name = "cublas_gemm";
  gemm.library = true;
  gemm.cost.flops = 2.0 * 512 * 1280 * 320;
  gemm.cost.bytes_read = 4.0 * (512 * 320 + 320 * 1280);
  gemm.cost.bytes_written = 4.0 * 512 * 1280;
  const double im2col_path =
      audit::estimate_us(gemm) +
      total_us(dry_records([&] { cuda::col2im(g, nullptr, nullptr, nullptr); }));
  INFO("by phase ", phased, " us, GEMM and col2im ", im2col_path, " us");
  CHECK(phased < estimate);
  CHECK(im2col_path < estimate / 5);
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
