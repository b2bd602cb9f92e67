#pragma once
// NCCL collectives on device buffers, for data-parallel training on GPUs (tools/app/distributed.h),
// in plain C++ (no CUDA headers). Built where CMake finds nccl.h (SONO_HAVE_NCCL). libnccl.so.2
// is opened when first used, not linked: the tools start, and train on one GPU, on machines
// without it.
#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace sono::cuda {

// Why NCCL cannot be used here ("" where it can): libnccl.so.2 not found, or no GPU.
std::string nccl_unavailable_reason();

// ncclUniqueId's bytes: rank 0 makes one and hands it to the others (over MPI).
using NcclId = std::array<char, 128>;
NcclId make_nccl_id();

// One rank's member of a communicator of `size` ranks on the current device (cuda::use_device).
// Collectives run on a stream of their own, each after the work queued so far on the backend's
// stream, so that they overlap the backend's later work.
class NcclCommunicator {
 public:
  NcclCommunicator(const NcclId& id, int rank, int size);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  void start_sum(float* values, size_t count);  // in place
  // values holds counts[r] floats of rank r after those of ranks before it; each rank's own
  // piece is in place, the others arrive (one broadcast per rank, in one NCCL group).
  void start_gather(float* values, const std::vector<size_t>& counts);
  // True when every collective started is complete; throws NCCL's error where one failed.
  bool done();
  // The backend's stream waits for the collectives started (its next work reads their results).
  void join();
  // Gives up the collectives in flight (a rank stopped answering) before the job stops.
  void abort();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace sono::cuda
