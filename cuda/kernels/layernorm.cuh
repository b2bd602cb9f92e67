#pragma once
// LayerNorm over the last dim of contiguous rows (channels-last): a warp per row. Forward
// saves mean and rstd; backward gives the input gradient per row and the weight and bias
// gradients as column sums in two stages (partial sums over chunks of rows, then a sum over
// the chunks), so any number of rows keeps the GPU busy. x may be bfloat16 (autocast's
// activations, read as they are: torch's LayerNorm reads them in float32 too); everything else
// is float32.
#include "cuda/kernels/bf16.cuh"
#include "cuda/kernels/reduce.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

constexpr int kLayerNormWarps = 4;  // rows per block

// weight and bias may be null (1 and 0).
template <typename X>
__global__ void layer_norm_forward_kernel(int64_t rows, int64_t cols, const X* x,
                                          const float* weight, const float* bias, float eps,
                                          float* y, float* mean, float* rstd) {
  const int lane = threadIdx.x % kWarp;
  SONO_FOR_EACH_WARP_ROW(row, rows) {
    const X* xr = x + row * cols;
    float* yr = y + row * cols;
    float sum = 0.0f;
    for (int64_t c = lane; c < cols; c += kWarp) sum += load_float(xr[c]);
    const float mu = warp_sum(sum) / cols;
    float sq = 0.0f;  // two passes: the variance of centred values loses no digits
    for (int64_t c = lane; c < cols; c += kWarp) {
      const float d = load_float(xr[c]) - mu;
      sq += d * d;
    }
    const float r = 1.0f / sqrtf(warp_sum(sq) / cols + eps);
    if (lane == 0) {
      mean[row] = mu;
      rstd[row] = r;
    }
    for (int64_t c = lane; c < cols; c += kWarp) {
      float v = (load_float(xr[c]) - mu) * r;
      if (weight) v *= weight[c];
      if (bias) v += bias[c];
      yr[c] = v;
    }
  }
}

// The threads sharing a row of the backward input kernel: a warp, kLayerNormWarps rows per
// block; or, where rows are too few for warps to fill the GPU (ConvNeXt's last stage: 784 rows
// of 1024), the whole block.
template <bool BlockPerRow>
struct RowLanes {
  __device__ int lane() const { return BlockPerRow ? threadIdx.x : threadIdx.x % kWarp; }
  __device__ int count() const { return BlockPerRow ? blockDim.x : kWarp; }
  __device__ int64_t first_row() const {
    return BlockPerRow ? blockIdx.x : blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  }
  __device__ int64_t row_step() const {
    return BlockPerRow ? gridDim.x : static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  }
  __device__ float sum(float v) const {
    return BlockPerRow ? block_reduce(v, 0.0f, SumOp{}) : warp_sum(v);
  }
};
constexpr int kLayerNormBlockRowThreads = 128;

// grad_x = rstd (g - mean(g) - xhat mean(g xhat)), g = grad_y * weight.
template <typename X, bool BlockPerRow>
__global__ void layer_norm_backward_input_kernel(int64_t rows, int64_t cols, const X* x,
                                                 const float* weight, const float* mean,
                                                 const float* rstd, const float* grad_y,
                                                 float* grad_x) {
  const RowLanes<BlockPerRow> lanes;
  const int lane = lanes.lane();
  for (int64_t row = lanes.first_row(); row < rows; row += lanes.row_step()) {
    const X* xr = x + row * cols;
    const float* gr = grad_y + row * cols;
    const float mu = mean[row], r = rstd[row];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int64_t c = lane; c < cols; c += lanes.count()) {
      const float g = weight ? gr[c] * weight[c] : gr[c];
      sum_g += g;
      sum_gx += g * (load_float(xr[c]) - mu) * r;
    }
    const float mean_g = lanes.sum(sum_g) / cols, mean_gx = lanes.sum(sum_gx) / cols;
    for (int64_t c = lane; c < cols; c += lanes.count()) {
      const float g = weight ? gr[c] * weight[c] : gr[c];
      grad_x[row * cols + c] = r * (g - mean_g - (load_float(xr[c]) - mu) * r * mean_gx);
    }
  }
}

// Block (32, kTileRows) sums grad_y * xhat and grad_y over one chunk of rows for 32 columns.
template <typename X>
__global__ void layer_norm_param_partial_kernel(int64_t rows, int64_t cols, int64_t chunk_rows,
                                                const X* x, const float* mean, const float* rstd,
                                                const float* grad_y, float* partial_w,
                                                float* partial_b) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t first = blockIdx.y * chunk_rows;
  const int64_t last = first + chunk_rows < rows ? first + chunk_rows : rows;
  float sum_w = 0.0f, sum_b = 0.0f;
  if (c < cols) {
    for (int64_t r = first + threadIdx.y; r < last; r += kTileRows) {
      const float g = grad_y[r * cols + c];
      sum_w += g * (load_float(x[r * cols + c]) - mean[r]) * rstd[r];
      sum_b += g;
    }
  }
  sum_w = sum_over_tile_rows(sum_w);
  sum_b = sum_over_tile_rows(sum_b);
  if (threadIdx.y == 0 && c < cols) {
    partial_w[blockIdx.y * cols + c] = sum_w;
    partial_b[blockIdx.y * cols + c] = sum_b;
  }
}

// A warp per row, each lane looping over the row; a row reads and writes the bytes given.
inline LaunchConfig layer_norm_config(int64_t rows, int64_t cols, double row_read,
                                      double row_written, cudaStream_t stream) {
  return {dim3(grid_blocks(rows, kLayerNormWarps)), dim3(kLayerNormWarps * kWarp), 0, stream,
          looped(rows * row_read, rows * row_written, rows * kWarp, ceil_div(cols, kWarp))};
}

template <typename X>
void layer_norm_forward(int64_t rows, int64_t cols, const X* x, const float* weight,
                        const float* bias, float eps, float* y, float* mean, float* rstd,
                        cudaStream_t stream) {
  launch("layer_norm_forward", layer_norm_forward_kernel<X>,
         layer_norm_config(rows, cols, cols * sizeof(X), cols * 4.0 + 8, stream), rows, cols, x, weight, bias, eps, y, mean, rstd);
}

// Chunks of rows for the parameter gradients' first stage: enough to fill the GPU.
inline int64_t layer_norm_param_chunks(int64_t rows, int64_t cols) {
  return fill_chunks(rows, ceil_div(cols, kWarp), kTileRows, kTileRows * kMinLaneSteps);
}
// Floats of scratch layer_norm_backward needs.
inline int64_t layer_norm_backward_workspace(int64_t rows, int64_t cols) {
  return 2 * layer_norm_param_chunks(rows, cols) * cols;
}

// Any of grad_x, grad_weight, grad_bias may be null (not wanted); weight may be null (1).
template <typename X>
void layer_norm_backward(int64_t rows, int64_t cols, const X* x, const float* weight,
                         const float* mean, const float* rstd, const float* grad_y,
                         float* grad_x, float* grad_weight, float* grad_bias, float* workspace,
                         cudaStream_t stream) {
  if (grad_x) {
    const double row_read = cols * (sizeof(X) + 4.0) + 8, row_written = cols * 4.0;
    if (rows >= kFillBlocks)
      launch("layer_norm_backward_input", layer_norm_backward_input_kernel<X, false>,
             layer_norm_config(rows, cols, row_read, row_written, stream), rows, cols, x, weight,
             mean, rstd, grad_y, grad_x);
    else
      launch("layer_norm_backward_input", layer_norm_backward_input_kernel<X, true>,
             {dim3(static_cast<unsigned>(rows)), dim3(kLayerNormBlockRowThreads), 0, stream,
              looped(rows * row_read, rows * row_written, rows * kLayerNormBlockRowThreads,
                     ceil_div(cols, kLayerNormBlockRowThreads))},
             rows, cols, x, weight, mean, rstd, grad_y, grad_x);
  }
  if (!grad_weight && !grad_bias) return;
  const int64_t chunks = layer_norm_param_chunks(rows, cols);
  float* partial_w = workspace;
  float* partial_b = workspace + chunks * cols;
  const int64_t chunk_rows = ceil_div(rows, chunks);
  launch("layer_norm_param_partial", layer_norm_param_partial_kernel<X>,
         {dim3(static_cast<unsigned>(ceil_div(cols, kWarp)), static_cast<unsigned>(chunks)),
          dim3(kWarp, kTileRows), 0, stream,
          looped(rows * cols * (sizeof(X) + 4.0), 2.0 * chunks * cols * 4,
                 chunks * cols * kTileRows, ceil_div(chunk_rows, kTileRows))},
         rows, cols, chunk_rows, x, mean, rstd, grad_y, partial_w, partial_b);
  if (grad_weight) column_sums(partial_w, chunks, cols, grad_weight, stream);
  if (grad_bias) column_sums(partial_b, chunks, cols, grad_bias, stream);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
