#include "cuda/cudnn/conv.h"

#include <cudnn.h>

#include <climits>
#include <map>
#include <memory>
#include <utility>

// cuDNN 9 marks its descriptor-based convolution API deprecated in favour of the graph API; it
// still ships, and is the small API this fallback needs. Only this file silences the warning.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace sono::cuda {

namespace {

constexpr size_t kMaxWorkspace = size_t(256) << 20;

bool ok(cudnnStatus_t s) { return s == CUDNN_STATUS_SUCCESS; }

void check(const char* call, cudnnStatus_t s) {
  if (!ok(s)) fail("cuDNN: ", call, " failed: ", cudnnGetErrorString(s));
}

cudnnHandle_t as_handle(void* h) { return static_cast<cudnnHandle_t>(h); }

// The four descriptors of one convolution, destroyed with it.
class Descriptors {
 public:
  Descriptors() {
    check("cudnnCreateTensorDescriptor", cudnnCreateTensorDescriptor(&x));
    check("cudnnCreateTensorDescriptor", cudnnCreateTensorDescriptor(&y));
    check("cudnnCreateFilterDescriptor", cudnnCreateFilterDescriptor(&w));
    check("cudnnCreateConvolutionDescriptor", cudnnCreateConvolutionDescriptor(&conv));
  }
  ~Descriptors() {
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;

  // False where cuDNN refuses the geometry (or a size exceeds its int range).
  bool describe(const Conv2dGeometry& g, ConvPrecision precision) {
    for (int64_t v : {g.n, g.h, g.w, g.cin, g.cout, g.oh, g.ow, g.kh, g.kw})
      if (v > INT_MAX) return false;
    auto i = [](int64_t v) { return static_cast<int>(v); };
    const cudnnDataType_t data =
        precision == ConvPrecision::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    // FMA math keeps float32 exact to float32; tensor-op math lets float32 data run in TF32.
    const cudnnMathType_t math =
        precision == ConvPrecision::f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
    return ok(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NHWC, data, i(g.n), i(g.cin), i(g.h),
                                         i(g.w))) &&
           ok(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NHWC, data, i(g.n), i(g.cout), i(g.oh),
                                         i(g.ow))) &&
           ok(cudnnSetFilter4dDescriptor(w, data, CUDNN_TENSOR_NHWC, i(g.cout),
                                         i(g.cin / g.groups), i(g.kh), i(g.kw))) &&
           ok(cudnnSetConvolution2dDescriptor(conv, i(g.padding), i(g.padding), i(g.stride),
                                              i(g.stride), i(g.dilation), i(g.dilation),
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) &&
           ok(cudnnSetConvolutionGroupCount(conv, i(g.groups))) &&
           ok(cudnnSetConvolutionMathType(conv, math));
  }

  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
};

// The first algorithm of cuDNN's heuristic ranking that supports the shape within the
// workspace limit: its number and workspace bytes.
struct Plan {
  int algo;
  size_t workspace;
};

template <typename Perf, typename Query>
std::optional<Plan> first_supported(Query&& query) {
  Perf perf[16];
  int count = 0;
  if (!ok(query(16, &count, perf))) return std::nullopt;
  for (int i = 0; i < count; ++i)
    if (ok(perf[i].status) && perf[i].memory <= kMaxWorkspace)
      return Plan{static_cast<int>(perf[i].algo), perf[i].memory};
  return std::nullopt;
}

std::optional<Plan> plan_for(cudnnHandle_t h, ConvPass pass, Descriptors& d) {
  switch (pass) {
    case ConvPass::forward:
      return first_supported<cudnnConvolutionFwdAlgoPerf_t>([&](int n, int* count, auto* perf) {
        return cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, n, count, perf);
      });
    case ConvPass::backward_input:
      return first_supported<cudnnConvolutionBwdDataAlgoPerf_t>([&](int n, int* count, auto* perf) {
        return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, n, count, perf);
      });
    case ConvPass::backward_weight:
      return first_supported<cudnnConvolutionBwdFilterAlgoPerf_t>([&](int n, int* count, auto* perf) {
        return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w, n, count, perf);
      });
  }
  return std::nullopt;
}

void execute(cudnnHandle_t h, ConvPass pass, Descriptors& d, const Plan& plan, const void* a,
             const void* b, void* out, void* ws) {
  // alpha and beta are float for float32 and bfloat16 data alike.
  const float one = 1.0f, zero = 0.0f;
  switch (pass) {
    case ConvPass::forward:  // a = x, b = w, out = y
      return check("cudnnConvolutionForward",
                   cudnnConvolutionForward(h, &one, d.x, a, d.w, b, d.conv,
                                           static_cast<cudnnConvolutionFwdAlgo_t>(plan.algo), ws,
                                           plan.workspace, &zero, d.y, out));
    case ConvPass::backward_input:  // a = grad_y, b = w, out = grad_x
      return check("cudnnConvolutionBackwardData",
                   cudnnConvolutionBackwardData(h, &one, d.w, b, d.y, a, d.conv,
                                                static_cast<cudnnConvolutionBwdDataAlgo_t>(plan.algo),
                                                ws, plan.workspace, &zero, d.x, out));
    case ConvPass::backward_weight:  // a = x, b = grad_y, out = grad_w
      return check("cudnnConvolutionBackwardFilter",
                   cudnnConvolutionBackwardFilter(h, &one, d.x, a, d.y, b, d.conv,
                                                  static_cast<cudnnConvolutionBwdFilterAlgo_t>(plan.algo),
                                                  ws, plan.workspace, &zero, d.w, out));
  }
}

}  // namespace

// Per pass and shape: its descriptors and algorithm, or no plan where cuDNN refuses the shape.
// Kept because describing the shape and querying the heuristic cost more host time than a
// launch.
struct CudnnConv::Plans {
  struct Entry {
    Descriptors descriptors;
    std::optional<Plan> plan;
  };
  std::map<ConvKey, Entry> by_key;
};

CudnnConv::CudnnConv(cudaStream_t stream) : plans_(std::make_unique<Plans>()) {
  cudnnHandle_t h = nullptr;
  check("cudnnCreate", cudnnCreate(&h));
  handle_ = h;
  check("cudnnSetStream", cudnnSetStream(h, stream));
}

CudnnConv::~CudnnConv() { cudnnDestroy(as_handle(handle_)); }

bool CudnnConv::run(ConvPass pass, const Conv2dGeometry& g, ConvPrecision precision,
                    const void* a, const void* b, void* out, const WorkspaceFn& workspace) {
  auto [it, fresh] = plans_->by_key.try_emplace(ConvKey{pass, g, precision});
  Plans::Entry& entry = it->second;
  if (fresh && entry.descriptors.describe(g, precision))
    entry.plan = plan_for(as_handle(handle_), pass, entry.descriptors);
  if (!entry.plan) return false;
  workspace(entry.plan->workspace, [&](void* ws) {
    execute(as_handle(handle_), pass, entry.descriptors, *entry.plan, a, b, out, ws);
  });
  return true;
}

}  // namespace sono::cuda
