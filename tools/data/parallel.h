#pragma once
// Runs fn(0..n-1) on a few threads; the first exception (lowest index) is rethrown in the caller.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <thread>
#include <vector>

namespace sono::data {

inline int default_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

inline void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(n);
  auto work = [&] {
    for (size_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  int count = static_cast<int>(std::min<size_t>(std::max(threads, 1), n));
  for (int t = 1; t < count; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// parallel_for on the OpenMP team the CPU kernels run on, in place of threads of its own: beside
// that team they would oversubscribe the cores while its idle threads spin at their barriers.
inline void parallel_for_openmp(size_t n, const std::function<void(size_t)>& fn) {
  std::vector<std::exception_ptr> errors(n);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
    try {
      fn(static_cast<size_t>(i));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace sono::data
