#include "cuda/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>

#include "cuda/check.h"
#include "cuda/cuda_backend.h"
#include "cuda/shared_library.h"
#include "tensor/error.h"

namespace sono::cuda {

namespace {

// The NCCL functions used, from libnccl.so.2 (dlopen; see the header).
struct Nccl {
  std::string error;  // why it did not load; "" when it did
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) init_rank = nullptr;
  decltype(&ncclCommDestroy) destroy = nullptr;
  decltype(&ncclCommAbort) abort = nullptr;
  decltype(&ncclCommGetAsyncError) async_error = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclBroadcast) broadcast = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
};

Nccl load() {
  SharedLibrary library("libnccl.so.2");
  Nccl n;
  library.find("ncclGetUniqueId", n.get_unique_id);
  library.find("ncclCommInitRank", n.init_rank);
  library.find("ncclCommDestroy", n.destroy);
  library.find("ncclCommAbort", n.abort);
  library.find("ncclCommGetAsyncError", n.async_error);
  library.find("ncclGetErrorString", n.error_string);
  library.find("ncclAllReduce", n.all_reduce);
  library.find("ncclBroadcast", n.broadcast);
  library.find("ncclGroupStart", n.group_start);
  library.find("ncclGroupEnd", n.group_end);
  n.error = library.error();
  return n;
}

const Nccl& library() {
  static const Nccl n = load();
  return n;
}

const Nccl& nccl() {
  SONO_CHECK(library().error.empty(), "NCCL: ", library().error);
  return library();
}

void check(ncclResult_t result, const char* call) {
  SONO_CHECK(result == ncclSuccess, "NCCL: ", call, ": ", nccl().error_string(result));
}

cudaStream_t backend_stream() { return static_cast<cudaStream_t>(stream_handle()); }

}  // namespace

std::string nccl_unavailable_reason() {
  if (!library().error.empty()) return library().error;
  if (device_count() == 0) return "no GPU on this machine";
  return "";
}

NcclId make_nccl_id() {
  ncclUniqueId id;
  check(nccl().get_unique_id(&id), "ncclGetUniqueId");
  static_assert(sizeof(id) == sizeof(NcclId));
  NcclId bytes;
  std::memcpy(bytes.data(), &id, sizeof(id));
  return bytes;
}

struct NcclCommunicator::State {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t queued = nullptr, finished = nullptr;  // on the backend's stream, on NCCL's

  // NCCL's stream first waits for the backend's work so far (the buffer it reads is made there).
  cudaStream_t after_backend() {
    SONO_CUDA_CHECK(cudaEventRecord(queued, backend_stream()));
    SONO_CUDA_CHECK(cudaStreamWaitEvent(stream, queued, 0));
    return stream;
  }
};

NcclCommunicator::NcclCommunicator(const NcclId& id, int rank, int size) : state_(std::make_unique<State>()) {
  ncclUniqueId unique;
  std::memcpy(&unique, id.data(), sizeof(unique));
  check(nccl().init_rank(&state_->comm, size, unique, rank), "ncclCommInitRank");
  SONO_CUDA_CHECK(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking));
  SONO_CUDA_CHECK(cudaEventCreateWithFlags(&state_->queued, cudaEventDisableTiming));
  SONO_CUDA_CHECK(cudaEventCreateWithFlags(&state_->finished, cudaEventDisableTiming));
}

NcclCommunicator::~NcclCommunicator() {
  if (state_->comm) nccl().destroy(state_->comm);
}

void NcclCommunicator::start_sum(float* values, size_t count) {
  check(nccl().all_reduce(values, values, count, ncclFloat, ncclSum, state_->comm, state_->after_backend()),
        "ncclAllReduce");
}

void NcclCommunicator::start_gather(float* values, const std::vector<size_t>& counts) {
  cudaStream_t stream = state_->after_backend();
  check(nccl().group_start(), "ncclGroupStart");
  size_t offset = 0;
  for (size_t root = 0; root < counts.size(); offset += counts[root++])
    check(nccl().broadcast(values + offset, values + offset, counts[root], ncclFloat, static_cast<int>(root),
                           state_->comm, stream),
          "ncclBroadcast");
  check(nccl().group_end(), "ncclGroupEnd");
}

bool NcclCommunicator::done() {
  ncclResult_t async = ncclSuccess;
  check(nccl().async_error(state_->comm, &async), "ncclCommGetAsyncError");
  check(async, "a collective in flight");
  const cudaError_t status = cudaStreamQuery(state_->stream);
  if (status == cudaErrorNotReady) return false;
  SONO_CUDA_CHECK(status);
  return true;
}

void NcclCommunicator::join() {
  SONO_CUDA_CHECK(cudaEventRecord(state_->finished, state_->stream));
  SONO_CUDA_CHECK(cudaStreamWaitEvent(backend_stream(), state_->finished, 0));
}

void NcclCommunicator::abort() {
  nccl().abort(state_->comm);
  state_->comm = nullptr;
}

}  // namespace sono::cuda
