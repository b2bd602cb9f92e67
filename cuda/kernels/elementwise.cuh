#pragma once
// Elementwise kernels: strided copy (with dtype conversion), fill, unary and broadcasting
// binary maps, and the bias + activation epilogue of a Linear or conv layer's output (forward
// and GELU's input grad), which also reads and writes autocast's bfloat16 activations.
#include <array>
#include <type_traits>
#include <vector>

#include "cuda/kernels/bf16.cuh"
#include "cuda/kernels/common.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

constexpr int kMaxDims = 8;

// An iteration space (sizes, outermost first) and K operands' strides over it, in elements.
template <int K>
struct StridedSpace {
  int rank = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[K][kMaxDims] = {};

  // i < the space's size, so what is left of i at the outermost dim is its index there: no
  // division for it (divide() says what one costs).
  __host__ __device__ void offsets(int64_t i, int64_t (&off)[K]) const {
    for (int k = 0; k < K; ++k) off[k] = 0;
    for (int d = rank - 1; d > 0; --d) {
      const QuotientRemainder at = divide(i, size[d]);
      i = at.quotient;
      for (int k = 0; k < K; ++k) off[k] += at.remainder * stride[k][d];
    }
    if (rank > 0)
      for (int k = 0; k < K; ++k) off[k] += i * stride[k][0];
  }
};

template <int K>
StridedSpace<K> make_space(const std::vector<int64_t>& sizes,
                           const std::array<std::vector<int64_t>, K>& strides) {
  SONO_CHECK(sizes.size() <= kMaxDims, "CUDA: ", sizes.size(), " dims after merging; kernels take ",
             kMaxDims);
  StridedSpace<K> s;
  s.rank = static_cast<int>(sizes.size());
  for (int d = 0; d < s.rank; ++d) {
    s.size[d] = sizes[d];
    for (int k = 0; k < K; ++k) s.stride[k][d] = strides[k][d];
  }
  return s;
}

constexpr int kElementwiseThreads = 256;

// A thread per element, grid-stride; each element reads `read` and writes `written` bytes.
inline LaunchConfig elementwise_config(int64_t n, double read, double written,
                                       cudaStream_t stream) {
  return {dim3(grid_blocks(n, kElementwiseThreads)), dim3(kElementwiseThreads), 0, stream,
          per_element(n, read, written)};
}

// ---- copy and fill ------------------------------------------------------------------------------

// x as a D: a plain conversion, or through float32 where either side is bfloat16.
template <typename D, typename S>
__device__ __forceinline__ D convert(S x) {
  if constexpr (std::is_same_v<S, D>) {
    return x;
  } else if constexpr (std::is_same_v<D, bfloat16>) {
    return bf16_from_float(static_cast<float>(x));
  } else if constexpr (std::is_same_v<S, bfloat16>) {
    return static_cast<D>(bf16_to_float(x));
  } else {
    return static_cast<D>(x);
  }
}

template <typename S, typename D>
__global__ void copy_kernel(StridedSpace<2> space, int64_t n, const S* src, D* dst) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[2];
    space.offsets(i, off);
    dst[off[1]] = convert<D>(src[off[0]]);
  }
}

template <typename S, typename D>
void copy(const StridedSpace<2>& space, int64_t n, const S* src, D* dst, cudaStream_t stream) {
  launch("copy", copy_kernel<S, D>, elementwise_config(n, sizeof(S), sizeof(D), stream), space, n, src, dst);
}

template <typename T>
__global__ void fill_kernel(StridedSpace<1> space, int64_t n, T* dst, T value) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[1];
    space.offsets(i, off);
    dst[off[0]] = value;
  }
}

template <typename T>
void fill(const StridedSpace<1>& space, int64_t n, T* dst, T value, cudaStream_t stream) {
  launch("fill", fill_kernel<T>, elementwise_config(n, 0, sizeof(T), stream), space, n, dst, value);
}

// ---- unary maps (contiguous) --------------------------------------------------------------------

// GELU, erf form (torch.nn.GELU()), and its derivative Phi(x) + x phi(x).
__host__ __device__ inline float gelu_erf(float x) {
  return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}
__host__ __device__ inline float gelu_erf_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  const float pdf = expf(-0.5f * x * x) * 0.3989422804014327f;
  return cdf + x * pdf;
}

namespace unary {
struct Neg { __device__ float operator()(float x) const { return -x; } };
struct Exp { __device__ float operator()(float x) const { return expf(x); } };
struct Log { __device__ float operator()(float x) const { return logf(x); } };
struct Sqrt { __device__ float operator()(float x) const { return sqrtf(x); } };
struct Abs { __device__ float operator()(float x) const { return fabsf(x); } };
struct Sign {
  __device__ float operator()(float x) const { return float((x > 0.0f) - (x < 0.0f)); }
};
struct Tanh { __device__ float operator()(float x) const { return tanhf(x); } };
struct Sigmoid {  // no overflow for large |x|
  __device__ float operator()(float x) const {
    return x >= 0.0f ? 1.0f / (1.0f + expf(-x)) : expf(x) / (1.0f + expf(x));
  }
};
struct Softplus {  // log(1 + e^x) without overflow
  __device__ float operator()(float x) const {
    return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x));
  }
};
struct AddScalar { float a; __device__ float operator()(float x) const { return x + a; } };
struct MulScalar { float a; __device__ float operator()(float x) const { return x * a; } };
struct PowScalar { float a; __device__ float operator()(float x) const { return powf(x, a); } };
struct GtScalar { float a; __device__ float operator()(float x) const { return float(x > a); } };
}  // namespace unary

template <typename Op>
__global__ void unary_kernel(int64_t n, const float* x, float* y, Op op) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) y[i] = op(x[i]);
}

template <typename Op>
void unary_map(int64_t n, const float* x, float* y, Op op, cudaStream_t stream) {
  launch("unary", unary_kernel<Op>, elementwise_config(n, 4, 4, stream), n, x, y, op);
}

// ---- binary maps (strided: broadcast operands have stride 0) ------------------------------------

namespace binary {
struct Add { __device__ float operator()(float a, float b) const { return a + b; } };
struct Sub { __device__ float operator()(float a, float b) const { return a - b; } };
struct Mul { __device__ float operator()(float a, float b) const { return a * b; } };
struct Div { __device__ float operator()(float a, float b) const { return a / b; } };
struct Eq { __device__ float operator()(float a, float b) const { return float(a == b); } };
struct ReluGrad { __device__ float operator()(float a, float b) const { return b > 0.0f ? a : 0.0f; } };
struct AddRelu {
  __device__ float operator()(float a, float b) const {
    const float sum = a + b;
    return sum > 0.0f ? sum : 0.0f;
  }
};
}  // namespace binary

template <typename Op>
__global__ void binary_kernel(StridedSpace<3> space, int64_t n, const float* a, const float* b,
                              float* out, Op op) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[3];
    space.offsets(i, off);
    out[off[2]] = op(a[off[0]], b[off[1]]);
  }
}

template <typename Op>
void binary_map(const StridedSpace<3>& space, int64_t n, const float* a, const float* b,
                float* out, Op op, cudaStream_t stream) {
  launch("binary", binary_kernel<Op>, elementwise_config(n, 8, 4, stream), space, n, a, b, out, op);
}

// ---- bias + activation over rows of length cols (a Linear or NHWC conv layer's output) ----------

enum class Activation { none, gelu, relu };

template <Activation Act>
__device__ __forceinline__ float activate(float v) {
  if (Act == Activation::gelu) return gelu_erf(v);
  if (Act == Activation::relu) return v > 0.0f ? v : 0.0f;
  return v;
}

// y = act(x + bias[col]); bias may be null (a plain activation). X and Y: float, or bfloat16 for
// autocast's activations (computed in float32, rounded once on the store).
template <Activation Act, typename X, typename Y>
__global__ void bias_act_kernel(int64_t n, int64_t cols, const X* x, const float* bias, Y* y) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const float v = load_float(x[i]) + (bias ? bias[divide(i, cols).remainder] : 0.0f);
    store_float(y[i], activate<Act>(v));
  }
}

// grad_x = grad_y * GELU'(x + bias), bias null for a plain GELU; the bias gradient is
// grad_x's column sum (reduce.cuh). x may be bfloat16 (what an autocast GELU saved).
template <typename X>
__global__ void gelu_backward_kernel(int64_t n, int64_t cols, const X* x, const float* bias,
                                     const float* grad_y, float* grad_x) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const float v = load_float(x[i]) + (bias ? bias[divide(i, cols).remainder] : 0.0f);
    grad_x[i] = grad_y[i] * gelu_erf_grad(v);
  }
}

template <typename X, typename Y>
void bias_act(int64_t rows, int64_t cols, const X* x, const float* bias, Y* y, Activation act,
              cudaStream_t stream) {
  const int64_t n = rows * cols;
  const LaunchConfig cfg = elementwise_config(n, sizeof(X), sizeof(Y), stream);
  switch (act) {
    case Activation::none:
      return launch("bias_add", bias_act_kernel<Activation::none, X, Y>, cfg, n, cols, x, bias, y);
    case Activation::gelu:
      return launch("bias_gelu", bias_act_kernel<Activation::gelu, X, Y>, cfg, n, cols, x, bias, y);
    case Activation::relu:
      return launch("relu", bias_act_kernel<Activation::relu, X, Y>, cfg, n, cols, x, bias, y);
  }
}

template <typename X>
void gelu_backward(int64_t rows, int64_t cols, const X* x, const float* bias, const float* grad_y,
                   float* grad_x, cudaStream_t stream) {
  const int64_t n = rows * cols;
  launch("gelu_backward", gelu_backward_kernel<X>, elementwise_config(n, sizeof(X) + 4, 4, stream), n, cols, x,
         bias, grad_y, grad_x);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
