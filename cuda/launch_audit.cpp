#include "cuda/launch_audit.h"

#include <atomic>
#include <mutex>

namespace sono::cuda {

int64_t LaunchRecord::serial_iterations() const {
  const int64_t t = threads();
  if (cost.items <= 0 || t <= 0) return cost.per_item;
  return (cost.items + t - 1) / t * cost.per_item;
}

namespace launch_audit {
namespace {

std::atomic<Mode> current{Mode::off};
std::mutex log_mutex;
std::vector<LaunchRecord> log;

void append(LaunchRecord r) {
  std::lock_guard<std::mutex> lock(log_mutex);
  log.push_back(std::move(r));
}

}  // namespace

void start(Mode m) {
  std::lock_guard<std::mutex> lock(log_mutex);
  log.clear();
  current = m;
}

std::vector<LaunchRecord> stop() {
  std::lock_guard<std::mutex> lock(log_mutex);
  current = Mode::off;
  return std::move(log);
}

Mode mode() { return current.load(std::memory_order_relaxed); }

void record(const char* name, const unsigned grid[3], const unsigned block[3], size_t smem,
            const LaunchCost& cost) {
  LaunchRecord r{name, {grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]}, smem, cost};
  append(std::move(r));
}

void record_library(const char* name, const LaunchCost& cost) {
  LaunchRecord r{name, {}, {}, 0, cost, true};
  append(std::move(r));
}

Pause::Pause() : saved_(current.exchange(Mode::off)) {}
Pause::~Pause() { current = saved_; }

}  // namespace launch_audit
}  // namespace sono::cuda
