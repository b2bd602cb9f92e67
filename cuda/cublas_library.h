#pragma once
// The cuBLAS functions the CUDA backend calls, from libcublas opened on the first GEMM
// (shared_library.h says why it is not linked).
#include <cublas_v2.h>

#include <string>

namespace sono::cuda {

// The C function: C++ also sees an inline overload of it (the compute type as cudaDataType).
using CublasGemmStridedBatchedEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                                      int, const void*, const void*, cudaDataType, int, long long,
                                                      const void*, cudaDataType, int, long long, const void*, void*,
                                                      cudaDataType, int, long long, int, cublasComputeType_t,
                                                      cublasGemmAlgo_t);

struct CublasFunctions {
  decltype(&cublasCreate) create = nullptr;
  decltype(&cublasSetStream) set_stream = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
  decltype(&cublasSgemmStridedBatched) sgemm_strided_batched = nullptr;
  decltype(&cublasDgemmStridedBatched) dgemm_strided_batched = nullptr;
  CublasGemmStridedBatchedEx gemm_strided_batched_ex = nullptr;
};

// Opens the library once; fails with one line naming it and the reason where it cannot
// (cublas_unavailable_reason in cuda_backend.h says it without failing).
const CublasFunctions& cublas_functions();

}  // namespace sono::cuda
