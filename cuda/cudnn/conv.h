#pragma once
// cuDNN's dense convolutions, the alternative to our own (kernels/conv.cuh) that conv_impl.h
// chooses per shape. NHWC activations and weights in cuDNN's NHWC filter layout
// [Cout, KH, KW, Cin/groups] (the caller permutes PyTorch's [Cout, Cin/groups, KH, KW]): with an
// NCHW filter cuDNN has no backward algorithm for NHWC activations, and its forward transposes
// the activations to NCHW. Operands float32 (FMA or TF32 math) or bfloat16, per ConvPrecision.
// Built only where cuDNN is found (SONO_HAVE_CUDNN).
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
  // backward_weight (x, grad_y) -> grad_w; all bfloat16 for ConvPrecision::bf16, float32
  // otherwise. Returns false, having written nothing, when cuDNN has no algorithm for this
  // shape within the workspace limit; throws on a failure at run time, naming the call.
  bool run(ConvPass pass, const Conv2dGeometry& g, ConvPrecision precision, const void* a,
           const void* b, void* out, const WorkspaceFn& workspace);

 private:
  struct Plans;  // the algorithm chosen per pass and shape
  void* handle_ = nullptr;  // cudnnHandle_t, kept out of this header
  std::unique_ptr<Plans> plans_;
};

}  // namespace sono::cuda
