#include "cuda/check.h"
#include "cuda/cublas_library.h"

#include <cstdlib>
#include <cstring>

#include "tensor/error.h"

namespace sono::cuda {

namespace {
// SONO_CUDA_SYNC=1: wait for every kernel, so an error in its execution names it (slow).
bool sync_after_launch() {
  static const bool sync = [] {
    const char* v = std::getenv("SONO_CUDA_SYNC");
    return v && std::strcmp(v, "0") != 0;
  }();
  return sync;
}
}  // namespace

void fail_call(const char* call, cudaError_t status) {
  fail("CUDA: ", call, " failed: ", cudaGetErrorString(status), " (", cudaGetErrorName(status),
       ")");
}

void fail_call(const char* call, cublasStatus_t status) {
  fail("CUDA: ", call, " failed: ", cublas_functions().status_string(status));
}

void check_launch(const char* kernel, cudaError_t launch_status, cudaStream_t stream) {
  if (launch_status != cudaSuccess)
    fail("CUDA: launch of kernel ", kernel, " failed: ", cudaGetErrorString(launch_status), " (",
         cudaGetErrorName(launch_status), ")");
  if (!sync_after_launch()) return;
  const cudaError_t run_status = cudaStreamSynchronize(stream);
  if (run_status != cudaSuccess)
    fail("CUDA: kernel ", kernel, " failed: ", cudaGetErrorString(run_status), " (",
         cudaGetErrorName(run_status), ")");
}

}  // namespace sono::cuda
