#pragma once
// cuDNN's dense convolutions, the alternative to our implicit-GEMM kernels that
// conv_impl.h chooses per shape. float32 NHWC activations and PyTorch-layout weights
// [Cout, Cin/groups, KH, KW] (cuDNN's NCHW filter format), FMA math (no TF32, as our float32
// kernels). Built only where cuDNN is found (SONO_HAVE_CUDNN).
#include <cuda_runtime_api.h>

#include <functional>
#include <memory>

#include "cuda/conv_impl.h"

namespace sono::cuda {

// Device scratch for cuDNN's workspace: returns `bytes` of device memory that stays valid until
// the call returns, and frees it then.
using WorkspaceFn = std::function<void(size_t bytes, const std::function<void(void*)>& use)>;

class CudnnConv {
 public:
  explicit CudnnConv(cudaStream_t stream);
  ~CudnnConv();
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;

  // out = the pass of g over (a, b): forward (x, w) -> y, backward_input (grad_y, w) -> grad_x,
  // backward_weight (x, grad_y) -> grad_w. Returns false, having written nothing, when cuDNN
  // has no algorithm for this shape within the workspace limit; throws on a failure at run
  // time, naming the call.
  bool run(ConvPass pass, const Conv2dGeometry& g, const float* a, const float* b, float* out,
           const WorkspaceFn& workspace);

 private:
  struct Plans;  // the algorithm chosen per pass and shape
  void* handle_ = nullptr;  // cudnnHandle_t, kept out of this header
  std::unique_ptr<Plans> plans_;
};

}  // namespace sono::cuda
