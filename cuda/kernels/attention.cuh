#pragma once
// Fused scaled-dot-product attention, forward: out = softmax(q k^T / sqrt(d)) v without the
// score matrix in memory. A block of kAttentionWarps warps takes as many query rows of one
// (batch, head); the block loads 32 keys and values at a time into shared memory, and each warp
// scores its row against them (lane j: key j), updates its running max and sum online
// (rescaling the accumulator when the max grows) and adds the weighted values (lane l: dims
// l, l + 32, ...). Also writes each row's log-sum-exp of the scaled scores, for a backward
// pass. Head dims up to 128 (MiT and ConvNeXt heads have 64).
#include "cuda/kernels/common.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

constexpr int kAttentionWarps = 4;     // query rows per block
constexpr int kAttentionMaxDim = 128;  // head dim: 4 accumulator values per lane
constexpr int kAttentionPerLane = kAttentionMaxDim / kWarp;

// q [bh, lq, d], k and v [bh, lk, d], out [bh, lq, d], lse [bh, lq] (may be null).
template <typename T>
__global__ void attention_forward_kernel(int64_t lq, int64_t lk, int d, float scale, const T* q,
                                         const T* k, const T* v, T* out, T* lse) {
  DYNAMIC_SMEM(float, smem);
  float* k_tile = smem;                      // [32][d + 1]: +1 spreads a row over banks
  float* v_tile = k_tile + kWarp * (d + 1);  // [32][d]
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  float* q_row = v_tile + kWarp * d + warp * d;  // this warp's query, pre-scaled
  const int64_t bh = blockIdx.y, row = static_cast<int64_t>(blockIdx.x) * kAttentionWarps + warp;
  const bool has_row = row < lq;  // the same for all lanes of a warp
  if (has_row)
    for (int c = lane; c < d; c += kWarp) q_row[c] = q[(bh * lq + row) * d + c] * scale;

  float acc[kAttentionPerLane] = {};
  float running_max = -INFINITY, running_sum = 0.0f;
  for (int64_t first = 0; first < lk; first += kWarp) {
    // Every thread helps load the tile, rows past the end included (no early exit: barriers).
    for (int i = threadIdx.x; i < kWarp * d; i += blockDim.x) {
      const int key = i / d, c = i % d;
      const bool in = first + key < lk;
      const int64_t at = (bh * lk + first + key) * d + c;
      k_tile[key * (d + 1) + c] = in ? static_cast<float>(k[at]) : 0.0f;
      v_tile[key * d + c] = in ? static_cast<float>(v[at]) : 0.0f;
    }
    __syncthreads();
    if (has_row) {
      const int keys = lk - first < kWarp ? static_cast<int>(lk - first) : kWarp;
      float score = -INFINITY;
      if (lane < keys) {
        score = 0.0f;
        for (int c = 0; c < d; ++c) score += q_row[c] * k_tile[lane * (d + 1) + c];
      }
      const float new_max = fmaxf(running_max, warp_reduce(score, MaxOp{}));
      const float weight = lane < keys ? expf(score - new_max) : 0.0f;
      const float rescale = expf(running_max - new_max);  // 0 for the first tile
      running_sum = running_sum * rescale + warp_sum(weight);
      running_max = new_max;
      for (int t = 0; t < kAttentionPerLane; ++t) acc[t] *= rescale;
      for (int key = 0; key < keys; ++key) {
        const float w = __shfl_sync(kFullMask, weight, key);
        for (int t = 0; t < kAttentionPerLane; ++t) {
          const int c = lane + t * kWarp;
          if (c < d) acc[t] += w * v_tile[key * d + c];
        }
      }
    }
    __syncthreads();  // the tile is overwritten next
  }
  if (!has_row) return;
  for (int t = 0; t < kAttentionPerLane; ++t) {
    const int c = lane + t * kWarp;
    if (c < d) out[(bh * lq + row) * d + c] = static_cast<T>(acc[t] / running_sum);
  }
  if (lse && lane == 0) lse[bh * lq + row] = static_cast<T>(running_max + logf(running_sum));
}

// q and out move once; each block loads every key and value tile, a thread kWarp * d /
// (threads) elements of each per tile.
inline LaunchCost attention_cost(int64_t batch_heads, int64_t lq, int64_t lk, int64_t d) {
  const int64_t blocks = ceil_div(lq, kAttentionWarps) * batch_heads;
  const int64_t threads = blocks * kAttentionWarps * kWarp;
  const double kv_loads = 2.0 * blocks * lk * d;
  return looped(4.0 * (batch_heads * lq * d + kv_loads), 4.0 * batch_heads * lq * d, threads,
                ceil_div(lk, kWarp) * ceil_div(kWarp * d, kAttentionWarps * kWarp),
                4.0 * batch_heads * lq * lk * d);
}

// batch_heads = batch * heads; scale is usually 1 / sqrt(d).
inline void attention_forward(int64_t batch_heads, int64_t lq, int64_t lk, int64_t d, float scale,
                              const float* q, const float* k, const float* v, float* out,
                              float* lse, cudaStream_t stream) {
  SONO_CHECK(d >= 1 && d <= kAttentionMaxDim, "CUDA attention: head dim ", d, " not in [1, ",
             kAttentionMaxDim, "]");
  SONO_CHECK(lk >= 1, "CUDA attention: no keys");
  SONO_CHECK(batch_heads <= 65535, "CUDA attention: ", batch_heads, " batch x heads exceeds 65535");
  const size_t smem = sizeof(float) * (kWarp * (d + 1) + kWarp * d + kAttentionWarps * d);
  launch("attention_forward", attention_forward_kernel<float>,
         {dim3(static_cast<unsigned>(ceil_div(lq, kAttentionWarps)),
               static_cast<unsigned>(batch_heads)),
          dim3(kAttentionWarps * kWarp), smem, stream, attention_cost(batch_heads, lq, lk, d)},
         lq, lk, static_cast<int>(d), scale, q, k, v, out, lse);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
