#pragma once
// Error checks for CUDA runtime and cuBLAS calls: a failing call throws sono::Error naming the
// call and the error, e.g. "CUDA: cudaMemcpyAsync(...) failed: an illegal memory access was
// encountered (cudaErrorIllegalAddress)".
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

namespace sono::cuda {

[[noreturn]] void fail_call(const char* call, cudaError_t status);
[[noreturn]] void fail_call(const char* call, cublasStatus_t status);

}  // namespace sono::cuda

// Success is 0 for both the runtime and cuBLAS.
#define SONO_CUDA_CHECK(call)                                              \
  do {                                                                     \
    const auto sono_status_ = (call);                                      \
    if (sono_status_ != decltype(sono_status_){})                          \
      ::sono::cuda::fail_call(#call, sono_status_);                        \
  } while (0)
