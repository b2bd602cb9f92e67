#pragma once
// One torch.optim.AdamW step (amsgrad off) for many tensors in one launch: a table of chunks in
// device memory gives each block its (tensor, chunk), as PyTorch's and apex's multi-tensor
// optimisers do. The float arithmetic follows PyTorch's CPU AdamW operation by
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

// One parameter to step, with its own step count (from 1), as torch keeps one per parameter.
struct AdamWTensor {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t numel;
  int64_t step;
};

// The scalars one parameter group shares, as PyTorch rounds them to float.
struct AdamWScalars {
  float decay;            // 1 - lr * weight_decay (not applied when weight_decay == 0)
  bool apply_decay;
  float avg_weight;       // lerp weight 1 - beta1
  float beta2;
  float sq_weight;        // 1 - beta2
  float eps;
};

// The scalars that depend on a parameter's step (its bias corrections).
struct AdamWBias {
  float neg_step_size;    // -lr / (1 - beta1^step)
  float bias_correction2_sqrt;
};

inline AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps,
                                  double weight_decay) {
  return {static_cast<float>(1.0 - lr * weight_decay), weight_decay != 0.0,
          static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
          static_cast<float>(1.0 - beta2), static_cast<float>(eps)};
}

inline AdamWBias adamw_bias(double lr, double beta1, double beta2, int64_t step) {
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return {static_cast<float>(-(lr / bias_correction1)),
          static_cast<float>(std::pow(bias_correction2, 0.5))};
}

// torch.lerp(a, b, w) as PyTorch's vectorised CPU kernel computes it: fma(w, b - a, a) for
// |w| < 0.5, else fma(w - 1, b - a, b).
__device__ __forceinline__ float lerp_torch(float a, float b, float w) {
  const float diff = __fsub_rn(b, a);
  return fabsf(w) < 0.5f ? __fmaf_rn(w, diff, a) : __fmaf_rn(__fsub_rn(w, 1.0f), diff, b);
}

__device__ __forceinline__ void adamw_update(const AdamWScalars& s, const AdamWBias& b, float& p,
                                             float g, float& m, float& v) {
  if (s.apply_decay) p = __fmul_rn(p, s.decay);
  m = lerp_torch(m, g, s.avg_weight);
  v = __fmaf_rn(__fmul_rn(s.sq_weight, g), g, __fmul_rn(v, s.beta2));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), b.bias_correction2_sqrt), s.eps);
  p = __fadd_rn(p, __fdiv_rn(__fmul_rn(b.neg_step_size, m), denom));
}

constexpr int kAdamWThreads = 256;
constexpr int64_t kAdamWChunk = 64 * kAdamWThreads;  // elements per block

// One block's work: up to kAdamWChunk elements of one parameter, pointers already offset to
// the chunk's first element. The table of chunks lives in device memory, so one launch covers
// any number of parameters (a table in the kernel's parameters would cap it at 4 KiB).
struct AdamWChunk {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t numel;
  AdamWBias bias;
};

// The chunk table for `tensors`, built on the host; upload it and pass it to adamw_multi_tensor.
inline std::vector<AdamWChunk> adamw_chunks(const std::vector<AdamWTensor>& tensors, double lr,
                                            double beta1, double beta2) {
  std::vector<AdamWChunk> table;
  for (const AdamWTensor& t : tensors) {
    const AdamWBias bias = adamw_bias(lr, beta1, beta2, t.step);
    for (int64_t first = 0; first < t.numel; first += kAdamWChunk)
      table.push_back({t.param + first, t.grad + first, t.exp_avg + first, t.exp_avg_sq + first,
                       t.numel - first < kAdamWChunk ? t.numel - first : kAdamWChunk, bias});
  }
  return table;
}

template <typename T>
__global__ void adamw_kernel(const AdamWChunk* table, AdamWScalars s) {
  const AdamWChunk c = table[blockIdx.x];
  for (int64_t i = threadIdx.x; i < c.numel; i += blockDim.x) {
    float p = c.param[i], m = c.exp_avg[i], v = c.exp_avg_sq[i];
    adamw_update(s, c.bias, p, c.grad[i], m, v);
    c.param[i] = p;
    c.exp_avg[i] = m;
    c.exp_avg_sq[i] = v;
  }
}

// Steps every chunk of `table` (device memory, `chunks` entries) in one launch, a block each.
inline void adamw_multi_tensor(const AdamWChunk* table, int64_t chunks, const AdamWScalars& s,
                               cudaStream_t stream) {
  SONO_CHECK(chunks < (int64_t{1} << 31), "adamw: ", chunks, " chunks exceed one grid");
  // Each chunk is at most kAdamWChunk elements, each reading 4 floats and writing 3; the cost
  // counts full chunks (the host knows only the count here).
  const int64_t elements = chunks * kAdamWChunk;
  launch("adamw_multi_tensor", adamw_kernel<float>,
         {dim3(static_cast<unsigned>(chunks)), dim3(kAdamWThreads), 0, stream,
          looped(16.0 * elements, 12.0 * elements, chunks * kAdamWThreads,
                 kAdamWChunk / kAdamWThreads)},
         table, s);
}

}  // namespace SONO_KERNEL_TARGET
}  // namespace sono::cuda
