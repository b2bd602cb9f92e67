#pragma once
// One torch.optim.AdamW step (amsgrad off) for many tensors in one launch: the block table maps
// each block to a (tensor, chunk). The float arithmetic follows PyTorch's CPU AdamW operation by
// operation: scalars computed in double and rounded to float once; then mul_, lerp_, mul_,
// addcmul_, sqrt, div, add_, addcdiv_, with lerp_ and addcmul_ each one FMA as in PyTorch's
// vectorised CPU kernels, and every other rounding spelled with __f*_rn so that nvcc fuses
// nothing else. The result equals torch.optim.AdamW(fused=True) on
// the CPU to the bit; the default for-loop AdamW differs by an ulp where MKL's sqrt is not
// correctly rounded.
#include <cmath>
#include <vector>

#include "cuda/kernels/common.cuh"

namespace sono::cuda {
inline namespace SONO_KERNEL_TARGET {

struct AdamWTensor {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t numel;
};

// The per-step scalars, as PyTorch rounds them to float.
struct AdamWScalars {
  float decay;            // 1 - lr * weight_decay (not applied when weight_decay == 0)
  bool apply_decay;
  float avg_weight;       // lerp weight 1 - beta1
  float beta2;
  float sq_weight;        // 1 - beta2
  float bias_correction2_sqrt;
  float eps;
  float neg_step_size;    // -lr / (1 - beta1^step)
};

inline AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps,
                                  double weight_decay, int64_t step) {
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return {static_cast<float>(1.0 - lr * weight_decay), weight_decay != 0.0,
          static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
          static_cast<float>(1.0 - beta2), static_cast<float>(std::pow(bias_correction2, 0.5)),
          static_cast<float>(eps), static_cast<float>(-(lr / bias_correction1))};
}

// torch.lerp(a, b, w) as PyTorch's vectorised CPU kernel computes it: fma(w, b - a, a) for
// |w| < 0.5, else fma(w - 1, b - a, b).
__device__ __forceinline__ float lerp_torch(float a, float b, float w) {
  const float diff = __fsub_rn(b, a);
  return fabsf(w) < 0.5f ? __fmaf_rn(w, diff, a) : __fmaf_rn(__fsub_rn(w, 1.0f), diff, b);
}

__device__ __forceinline__ void adamw_update(const AdamWScalars& s, float& p, float g, float& m,
                                             float& v) {
  if (s.apply_decay) p = __fmul_rn(p, s.decay);
  m = lerp_torch(m, g, s.avg_weight);
  v = __fmaf_rn(__fmul_rn(s.sq_weight, g), g, __fmul_rn(v, s.beta2));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bias_correction2_sqrt), s.eps);
  p = __fadd_rn(p, __fdiv_rn(__fmul_rn(s.neg_step_size, m), denom));
}

constexpr int kAdamWMaxTensors = 24;
constexpr int kAdamWMaxBlocks = 320;  // the table keeps the kernel's parameters under 4 KiB
constexpr int kAdamWThreads = 256;
constexpr int64_t kAdamWChunk = 64 * kAdamWThreads;  // elements per block

struct AdamWBatch {
  AdamWTensor tensors[kAdamWMaxTensors];
  int blocks = 0;
  unsigned char block_tensor[kAdamWMaxBlocks];
  int block_chunk[kAdamWMaxBlocks];
};

template <typename T>
__global__ void adamw_kernel(AdamWBatch batch, AdamWScalars s) {
  const AdamWTensor& t = batch.tensors[batch.block_tensor[blockIdx.x]];
  const int64_t first = static_cast<int64_t>(batch.block_chunk[blockIdx.x]) * kAdamWChunk;
  const int64_t last = first + kAdamWChunk < t.numel ? first + kAdamWChunk : t.numel;
  for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
    float p = t.param[i], m = t.exp_avg[i], v = t.exp_avg_sq[i];
    adamw_update(s, p, t.grad[i], m, v);
    t.param[i] = p;
    t.exp_avg[i] = m;
    t.exp_avg_sq[i] = v;
  }
}

// Steps every tensor (same hyperparameters and step), packing as many as fit in each launch.
inline void adamw_step(const std::vector<AdamWTensor>& tensors, const AdamWScalars& s,
                       cudaStream_t stream) {
  AdamWBatch batch;
  int count = 0;
  auto flush = [&] {
    launch("adamw_step", adamw_kernel<float>,
           {dim3(static_cast<unsigned>(batch.blocks)), dim3(kAdamWThreads), 0, stream}, batch, s);
    batch.blocks = 0;
    count = 0;
  };
  for (const AdamWTensor& t : tensors) {
    const int64_t chunks = ceil_div(t.numel, kAdamWChunk);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      if (batch.blocks == kAdamWMaxBlocks || (chunk == 0 && count == kAdamWMaxTensors)) flush();
      if (chunk == 0 || batch.blocks == 0) batch.tensors[count++] = t;
      batch.block_tensor[batch.blocks] = static_cast<unsigned char>(count - 1);
      batch.block_chunk[batch.blocks++] = static_cast<int>(chunk);
    }
  }
  if (batch.blocks) flush();
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
