#pragma once
// Runs fn(0..n-1) on a few threads; the first exception (lowest index) is rethrown in the caller.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
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

// Runs work(s, k) for k = 0..n-1 on `streams` threads of their own, stream s taking k = s,
// s + streams, s + 2 streams, ..., and hands each result to deliver(k, result) on the calling
// thread in the order of k. start(s) runs first on stream s's thread (its per-thread settings).
// A stream begins k only once every result up to k - 2 streams is delivered, so that a slow
// stream holds at most that many results waiting. The first exception, in the order of k, stops
// the streams and is rethrown.
template <class Start, class Work, class Deliver>
void run_in_streams(size_t n, int streams, Start start, Work work, Deliver deliver) {
  using Result = std::invoke_result_t<Work&, int, size_t>;
  struct Slot {
    std::optional<Result> result;
    std::exception_ptr error;
    bool done = false;
  };
  std::vector<Slot> slots(n);
  std::mutex mutex;
  std::condition_variable changed;
  size_t delivered = 0;
  bool stop = false;
  const size_t window = 2 * static_cast<size_t>(streams);
  auto finish = [&](size_t k, Slot slot) {
    slot.done = true;
    std::lock_guard<std::mutex> lock(mutex);
    slots[k] = std::move(slot);
    changed.notify_all();
  };
  auto stream = [&](int s) {
    try {
      start(s);
    } catch (...) {
      finish(s, Slot{std::nullopt, std::current_exception()});
      return;
    }
    for (size_t k = s; k < n; k += streams) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        changed.wait(lock, [&] { return stop || k < delivered + window; });
        if (stop) return;
      }
      Slot slot;
      try {
        slot.result.emplace(work(s, k));
      } catch (...) {
        slot.error = std::current_exception();
      }
      finish(k, std::move(slot));
    }
  };
  std::vector<std::thread> threads;
  for (int s = 0; s < streams && static_cast<size_t>(s) < n; ++s) threads.emplace_back(stream, s);
  auto join = [&] {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    changed.notify_all();
    for (auto& t : threads) t.join();
  };
  try {
    for (size_t k = 0; k < n; ++k) {
      Slot slot;
      {
        std::unique_lock<std::mutex> lock(mutex);
        changed.wait(lock, [&] { return slots[k].done; });
        slot = std::move(slots[k]);
      }
      if (slot.error) std::rethrow_exception(slot.error);
      deliver(k, *slot.result);
      std::lock_guard<std::mutex> lock(mutex);
      delivered = k + 1;
      changed.notify_all();
    }
  } catch (...) {
    join();
    throw;
  }
  join();
}

}  // namespace sono::data
