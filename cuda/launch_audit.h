#pragma once
// The launch audit: every launch() (cuda/launch.h) and every cuBLAS/cuDNN call declares what it
// costs (bytes, FLOPs, the longest serial loop of one thread); while a recording is on, each is
// appended to a log with its grid and block. tools/audit turns the log into estimated H200
// times, so a GPU performance signal exists on machines without a GPU. In a dry run the
// launches are recorded but not executed: shapes do not depend on values, so the emulated
// device records a whole training step at full size in seconds.
//
// Plain C++ (no CUDA types): the nvcc and the emulator builds share one recorder.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sono::cuda {

// What a launch moves and computes, declared by its launcher (which knows the shapes).
struct LaunchCost {
  double bytes_read = 0, bytes_written = 0;  // to and from device memory, at least once each
  double flops = 0;
  bool tensor_cores = false;  // FLOPs on bfloat16 tensor cores (library GEMMs), else FP32 FMA
  // The serial chain: `items` independent units of work shared out over the launch's threads
  // (grid-stride), each a loop of `per_item` dependent iterations. The busiest thread runs
  // ceil(items / threads) * per_item iterations in sequence.
  int64_t items = 0;
  int64_t per_item = 1;
};

// n elements, each read_bytes in and written_bytes out and `flops` FLOPs: the elementwise maps,
// one element per thread per grid-stride step.
inline LaunchCost per_element(int64_t n, double read_bytes, double written_bytes,
                              double flops = 0) {
  const double e = static_cast<double>(n);
  return {e * read_bytes, e * written_bytes, e * flops, false, n, 1};
}

// `items` units of work, each a loop of `per_item` iterations, reading and writing the bytes
// given in all.
inline LaunchCost looped(double bytes_read, double bytes_written, int64_t items, int64_t per_item,
                         double flops = 0) {
  return {bytes_read, bytes_written, flops, false, items, per_item};
}

struct LaunchRecord {
  std::string name;
  unsigned grid[3] = {0, 0, 0}, block[3] = {0, 0, 0};  // zero for library calls
  size_t smem = 0;
  LaunchCost cost;
  bool library = false;  // cuBLAS/cuDNN: the grid is theirs, unknown here

  int64_t threads() const {
    return int64_t{grid[0]} * grid[1] * grid[2] * block[0] * block[1] * block[2];
  }
  int64_t serial_iterations() const;  // of the busiest thread
};

namespace launch_audit {

enum class Mode { off, record, dry_run };

// Starts a fresh log. dry_run: launches and library calls are recorded, never executed.
void start(Mode mode);
// Ends the recording and hands back its log.
std::vector<LaunchRecord> stop();
Mode mode();
inline bool recording() { return mode() != Mode::off; }
inline bool dry_run() { return mode() == Mode::dry_run; }

void record(const char* name, const unsigned grid[3], const unsigned block[3], size_t smem,
            const LaunchCost& cost);
void record_library(const char* name, const LaunchCost& cost);

// Not recorded while one lives: work the emulator does that the GPU would not (its stand-in
// for cuBLAS converts operands with our kernels).
class Pause {
 public:
  Pause();
  ~Pause();
  Pause(const Pause&) = delete;
  Pause& operator=(const Pause&) = delete;

 private:
  Mode saved_;
};

}  // namespace launch_audit
}  // namespace sono::cuda
