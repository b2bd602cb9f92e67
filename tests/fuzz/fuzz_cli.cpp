// libFuzzer target: the tools' command line. The input, one argument per line, goes through the
// option parser with the training tools' flags (seg_train's: the flags seg_train and cls_train
// share plus --device, --threads, --amp), then through the checks and runtime settings a tool
// applies before its work, then into one OpenMP parallel region as the tool's first kernel
// opens: --threads takes effect there.
#include <omp.h>

#include <atomic>
#include <vector>

#include "fuzz_input.h"
#include "tensor/autocast.h"
#include "tools/app/cli.h"
#include "tools/app/training.h"

namespace {

std::vector<std::string> split_lines(const uint8_t* data, size_t size) {
  std::vector<std::string> args{"seg_train"};
  std::string arg;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] != '\n') {
      arg.push_back(static_cast<char>(data[i]));
      continue;
    }
    args.push_back(arg);
    arg.clear();
  }
  if (!arg.empty()) args.push_back(arg);
  return args;
}

void run_first_kernel() {
  std::atomic<int> threads{0};
#pragma omp parallel
  threads.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int default_threads = omp_get_max_threads();
  std::vector<std::string> args = split_lines(data, size);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  sono::fuzz::expect_clean_outcome("seg_train's options", [&] {
    sono::app::Cli cli("seg_train", "fuzzed");
    sono::app::add_training_options(cli, {"mit_b0", 4, 1e-2, 0.1});
    if (!cli.parse(static_cast<int>(args.size()), argv.data())) return;
    sono::app::read_training_options(cli);
    run_first_kernel();
  });
  // The next input starts from the defaults, as a fresh process would.
  omp_set_num_threads(default_threads);
  sono::set_autocast(sono::Device::cpu, sono::Precision::f32);
  return 0;
}
