#pragma once
// BatchNorm with batch statistics (training), channels last: x is [rows, C] with rows = N H W.
// Per-channel sums take two stages, as the weight gradients do: partial sums over chunks of rows
// (a block of (32 channels, kTileRows rows) per chunk), then a sum over the chunks in double.
// Forward: the mean, then the biased variance around it (two passes, as the CPU's composition
// computes them), then y = (x - mean) inv_std w + b in one pass. Backward: the sums of grad_y
// and grad_y x_hat, then grad_x in one pass. x and y may be bfloat16 (autocast's activations);
// statistics and gradients are float32.
#include "cuda/kernels/bf16.cuh"
#include "cuda/kernels/reduce.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

// partial[chunk][c] = sum over the chunk's rows r of term(r, c).
template <typename Term>
__global__ void channel_partial_sums_kernel(int64_t rows, int64_t cols, int64_t chunk_rows,
                                            Term term, float* partial) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t first = blockIdx.y * chunk_rows;
  const int64_t last = first + chunk_rows < rows ? first + chunk_rows : rows;
  float acc = 0.0f;
  if (c < cols)
    for (int64_t r = first + threadIdx.y; r < last; r += kTileRows) acc += term(r, c);
  acc = sum_over_tile_rows(acc);
  if (threadIdx.y == 0 && c < cols) partial[blockIdx.y * cols + c] = acc;
}

// Chunks of rows: enough to fill the GPU.
inline int64_t channel_sum_chunks(int64_t rows, int64_t cols) {
  return fill_chunks(rows, ceil_div(cols, kWarp), kTileRows, kTileRows * kMinLaneSteps);
}
// Floats of scratch channel_sums needs.
inline int64_t channel_sums_workspace(int64_t rows, int64_t cols) {
  return channel_sum_chunks(rows, cols) * cols;
}

// out[c] = sum over rows r of term(r, c).
template <typename Term>
void channel_sums(int64_t rows, int64_t cols, const Term& term, float* out, float* workspace,
                  cudaStream_t stream) {
  const int64_t chunks = channel_sum_chunks(rows, cols);
  const int64_t chunk_rows = ceil_div(rows, chunks);
  launch("channel_partial_sums", channel_partial_sums_kernel<Term>,
         {dim3(static_cast<unsigned>(ceil_div(cols, kWarp)), static_cast<unsigned>(chunks)),
          dim3(kWarp, kTileRows), 0, stream,
          looped(double(rows * cols) * Term::bytes, chunks * cols * 4.0,
                 chunks * cols * kTileRows, ceil_div(chunk_rows, kTileRows))},
         rows, cols, chunk_rows, term, workspace);
  column_sums(workspace, chunks, cols, out, stream);
}

// The summed terms.
template <typename X>
struct XTerm {  // x
  static constexpr int bytes = sizeof(X);  // read per term, for the launch audit
  const X* x;
  int64_t cols;
  __device__ float operator()(int64_t r, int64_t c) const { return load_float(x[r * cols + c]); }
};
template <typename X>
struct CenteredSquareTerm {  // (x - mean)^2
  static constexpr int bytes = sizeof(X);
  const X* x;
  const float* mean;
  int64_t cols;
  __device__ float operator()(int64_t r, int64_t c) const {
    const float d = load_float(x[r * cols + c]) - mean[c];
    return d * d;
  }
};
struct GradTerm {  // grad_y
  static constexpr int bytes = sizeof(float);
  const float* grad_y;
  int64_t cols;
  __device__ float operator()(int64_t r, int64_t c) const { return grad_y[r * cols + c]; }
};
template <typename X>
struct GradXhatTerm {  // grad_y (x - mean) inv_std
  static constexpr int bytes = sizeof(X) + sizeof(float);
  const X* x;
  const float *grad_y, *mean, *inv_std;
  int64_t cols;
  __device__ float operator()(int64_t r, int64_t c) const {
    const int64_t i = r * cols + c;
    return grad_y[i] * (load_float(x[i]) - mean[c]) * inv_std[c];
  }
};

// mean = sum / rows; then, from the centered squares' sum, var = sum_sq / rows and inv_std =
// 1 / sqrt(var + eps). (Templates, as every kernel in a header: T = float.)
template <typename T>
__global__ void batch_mean_kernel(int64_t cols, int64_t rows, const T* sum, T* mean) {
  for (int64_t c = global_thread(); c < cols; c += grid_threads()) mean[c] = sum[c] / rows;
}
template <typename T>
__global__ void batch_var_kernel(int64_t cols, int64_t rows, T eps, const T* sum_sq, T* var,
                                 T* inv_std) {
  for (int64_t c = global_thread(); c < cols; c += grid_threads()) {
    var[c] = sum_sq[c] / rows;
    inv_std[c] = 1.0f / sqrtf(var[c] + eps);
  }
}

// y = (x - mean) inv_std w + b; w and b may be null.
template <typename X, typename Y>
__global__ void batch_norm_apply_kernel(int64_t n, int64_t cols, const X* x, const float* mean,
                                        const float* inv_std, const float* w, const float* b,
                                        Y* y) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t c = divide(i, cols).remainder;
    float v = (load_float(x[i]) - mean[c]) * inv_std[c];
    if (w) v *= w[c];
    if (b) v += b[c];
    store_float(y[i], v);
  }
}

// grad_x = w inv_std (grad_y - sum_dy / rows - x_hat sum_dy_xhat / rows); w may be null.
template <typename X>
__global__ void batch_norm_grad_input_kernel(int64_t n, int64_t cols, int64_t rows, const X* x,
                                             const float* mean, const float* inv_std,
                                             const float* w, const float* grad_y,
                                             const float* sum_dy, const float* sum_dy_xhat,
                                             float* grad_x) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t c = divide(i, cols).remainder;
    const float xhat = (load_float(x[i]) - mean[c]) * inv_std[c];
    const float scale = (w ? w[c] : 1.0f) * inv_std[c];
    grad_x[i] = scale * (grad_y[i] - sum_dy[c] / rows - xhat * sum_dy_xhat[c] / rows);
  }
}

// Floats of scratch batch_norm_forward and batch_norm_backward need.
inline int64_t batch_norm_workspace(int64_t rows, int64_t cols) {
  return channel_sums_workspace(rows, cols) + 2 * cols;
}

// mean, var, inv_std: [cols] outputs; y: [rows, cols].
template <typename X, typename Y>
void batch_norm_forward(int64_t rows, int64_t cols, const X* x, const float* w, const float* b,
                        float eps, Y* y, float* mean, float* var, float* inv_std,
                        float* workspace, cudaStream_t stream) {
  float* sums = workspace + channel_sums_workspace(rows, cols);
  const LaunchConfig per_channel = elementwise_config(cols, 4, 8, stream);
  channel_sums(rows, cols, XTerm<X>{x, cols}, sums, workspace, stream);
  launch("batch_norm_mean", batch_mean_kernel<float>, per_channel, cols, rows, sums, mean);
  channel_sums(rows, cols, CenteredSquareTerm<X>{x, mean, cols}, sums, workspace, stream);
  launch("batch_norm_var", batch_var_kernel<float>, per_channel, cols, rows, eps, sums, var,
         inv_std);
  const int64_t n = rows * cols;
  launch("batch_norm_apply", batch_norm_apply_kernel<X, Y>,
         elementwise_config(n, sizeof(X), sizeof(Y), stream), n,
         cols, x, mean, inv_std, w, b, y);
}

// grad_x, grad_w, grad_b may each be null (not wanted).
template <typename X>
void batch_norm_backward(int64_t rows, int64_t cols, const X* x, const float* w,
                         const float* mean, const float* inv_std, const float* grad_y,
                         float* grad_x, float* grad_w, float* grad_b, float* workspace,
                         cudaStream_t stream) {
  // The sums are the parameter gradients: written there when those are wanted.
  float* scratch = workspace + channel_sums_workspace(rows, cols);
  float* sum_dy = grad_b ? grad_b : scratch;
  float* sum_dy_xhat = grad_w ? grad_w : scratch + cols;
  channel_sums(rows, cols, GradTerm{grad_y, cols}, sum_dy, workspace, stream);
  channel_sums(rows, cols, GradXhatTerm<X>{x, grad_y, mean, inv_std, cols}, sum_dy_xhat,
               workspace, stream);
  const int64_t n = rows * cols;
  if (grad_x)
    launch("batch_norm_grad_input", batch_norm_grad_input_kernel<X>,
           elementwise_config(n, sizeof(X) + 4, 4, stream), n, cols, rows, x, mean, inv_std, w, grad_y, sum_dy,
           sum_dy_xhat, grad_x);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
