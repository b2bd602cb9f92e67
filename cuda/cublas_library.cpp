#include "cuda/cublas_library.h"

#include "cuda/cuda_backend.h"
#include "cuda/shared_library.h"
#include "tensor/error.h"

// cublas_v2.h renames some functions by macro (cublasCreate -> cublasCreate_v2): the symbol to
// look up is the name after expansion.
#define SONO_SYMBOL_NAME(name) #name
#define SONO_CUBLAS_SYMBOL(function) SONO_SYMBOL_NAME(function)

namespace sono::cuda {

namespace {

struct LoadedCublas {
  CublasFunctions functions;
  std::string error;  // "" where every function was found
};

LoadedCublas load() {
  // The major version of the headers built against, whose declarations the pointers take.
  SharedLibrary library("libcublas.so." + std::to_string(CUBLAS_VER_MAJOR));
  LoadedCublas loaded;
  CublasFunctions& f = loaded.functions;
  library.find(SONO_CUBLAS_SYMBOL(cublasCreate), f.create);
  library.find(SONO_CUBLAS_SYMBOL(cublasSetStream), f.set_stream);
  library.find(SONO_CUBLAS_SYMBOL(cublasGetStatusString), f.status_string);
  library.find(SONO_CUBLAS_SYMBOL(cublasSgemmStridedBatched), f.sgemm_strided_batched);
  library.find(SONO_CUBLAS_SYMBOL(cublasDgemmStridedBatched), f.dgemm_strided_batched);
  library.find(SONO_CUBLAS_SYMBOL(cublasGemmStridedBatchedEx), f.gemm_strided_batched_ex);
  loaded.error = library.error();
  return loaded;
}

const LoadedCublas& loaded() {
  static const LoadedCublas cublas = load();
  return cublas;
}

}  // namespace

const CublasFunctions& cublas_functions() {
  SONO_CHECK(loaded().error.empty(), "cuBLAS: ", loaded().error);
  return loaded().functions;
}

std::string cublas_unavailable_reason() { return loaded().error; }

}  // namespace sono::cuda
