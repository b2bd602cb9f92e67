#pragma once
// Which implementation runs a dense convolution pass of a given shape on the GPU: ours
// (kernels/conv.cuh: the im2col GEMMs, or the implicit GEMM for grouped convs) or cuDNN. As torch.backends.cudnn.benchmark does,
// the first time a pass and shape are seen both run twice on the real arguments, timed, and
// the faster one is remembered for that shape. Plain C++: the policy is tested without a GPU
// (test_cuda_kernels), with the launches faked.
//
// SONO_CONV_IMPL in the environment picks the policy: auto (the default), ours or cudnn.
// SONO_ALLOW_TF32=0 or 1 (default 1, as torch.backends.cudnn.allow_tf32) lets cuDNN's float32
// convolutions multiply on the tensor cores in TF32; our float32 kernels stay FMA.
// SONO_IM2COL_SLAB_BYTES (default 64 MiB) bounds the im2col matrix our one-group convs multiply:
// their images go through in slabs whose matrix fits it (one image at least).
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <tuple>

#include "tensor/backend.h"
#include "tensor/error.h"

namespace sono::cuda {

enum class ConvPass { forward, backward_input, backward_weight };
enum class ConvImpl { ours, cudnn };
enum class ConvPolicy { automatic, ours, cudnn };

inline ConvPolicy conv_policy_from(const char* value) {
  const std::string v = value ? value : "auto";
  if (v == "auto") return ConvPolicy::automatic;
  if (v == "ours") return ConvPolicy::ours;
  if (v == "cudnn") return ConvPolicy::cudnn;
  fail("SONO_CONV_IMPL is '", v, "': expected auto, ours or cudnn");
}

inline ConvPolicy conv_policy_from_env() { return conv_policy_from(std::getenv("SONO_CONV_IMPL")); }

inline bool allow_tf32_from(const char* value) {
  const std::string v = value ? value : "1";
  if (v == "0" || v == "1") return v == "1";
  fail("SONO_ALLOW_TF32 is '", v, "': expected 0 or 1");
}
inline bool allow_tf32_from_env() { return allow_tf32_from(std::getenv("SONO_ALLOW_TF32")); }

inline int64_t im2col_slab_bytes_from(const char* value) {
  if (!value) return int64_t{64} << 20;
  char* end = nullptr;
  const long long bytes = std::strtoll(value, &end, 10);
  if (end == value || *end != '\0' || bytes < 1)
    fail("SONO_IM2COL_SLAB_BYTES is '", value, "': expected a positive number of bytes");
  return bytes;
}
inline int64_t im2col_slab_bytes_from_env() {
  return im2col_slab_bytes_from(std::getenv("SONO_IM2COL_SLAB_BYTES"));
}

// How a pass multiplies, all accumulating in float32:
// - f32: float32 operands, FMA;
// - tf32: float32 operands rounded to TF32 on the tensor cores (cuDNN, SONO_ALLOW_TF32=1);
// - bf16: bfloat16 operands and result (autocast's forward to a bfloat16 activation), the
//   float32 sum rounded once;
// - bf16_exact: autocast's passes with a float32 result (the gradients): bf16-rounded operands
//   held in float32, multiplied in TF32, where their products are exact, so the result is the
//   float32 sum of bf16 products that our bf16 kernels compute.
enum class ConvPrecision { f32, tf32, bf16, bf16_exact };

// A pass of one convolution shape at one precision.
struct ConvKey {
  ConvPass pass;
  Conv2dGeometry g;
  ConvPrecision precision;

  auto tied() const {
    return std::tuple(pass, g.n, g.h, g.w, g.cin, g.cout, g.kh, g.kw, g.stride, g.padding,
                      g.dilation, g.groups, precision);
  }
  bool operator<(const ConvKey& o) const { return tied() < o.tied(); }
};

class ConvImplCache {
 public:
  explicit ConvImplCache(ConvPolicy policy) : policy_(policy) {}

  // Runs the pass through launch(impl, timed), which returns nullopt when impl cannot take
  // this shape (cuDNN reports it unsupported) and otherwise the milliseconds it took when
  // `timed` (anything when not); each run overwrites the output. Returns the implementation
  // chosen for the shape.
  template <typename Launch>
  ConvImpl run(const ConvKey& key, Launch&& launch) {
    if (policy_ == ConvPolicy::ours) return launch_ours(launch);
    if (policy_ == ConvPolicy::cudnn) return launch(ConvImpl::cudnn, false) ? ConvImpl::cudnn : launch_ours(launch);
    auto known = chosen_.find(key);
    if (known != chosen_.end()) return known->second == ConvImpl::cudnn ? launch_cudnn(launch) : launch_ours(launch);
    return chosen_[key] = measure(launch);
  }

  // The implementation chosen for key so far, if any (for reports and tests).
  std::optional<ConvImpl> chosen(const ConvKey& key) const {
    auto it = chosen_.find(key);
    return it == chosen_.end() ? std::nullopt : std::optional(it->second);
  }

 private:
  template <typename Launch>
  static ConvImpl launch_ours(Launch& launch) {
    launch(ConvImpl::ours, false);
    return ConvImpl::ours;
  }
  // cuDNN took this shape when it was measured; should it refuse it now, ours runs.
  template <typename Launch>
  static ConvImpl launch_cudnn(Launch& launch) {
    return launch(ConvImpl::cudnn, false) ? ConvImpl::cudnn : launch_ours(launch);
  }

  // Each candidate twice, the second run timed (the first pays for cuDNN's plan and our
  // kernels' first launch); ties go to ours. Both compute the same output (up to the order of
  // the float32 sums, and TF32's rounding where allowed).
  template <typename Launch>
  static ConvImpl measure(Launch& launch) {
    launch(ConvImpl::ours, false);
    const double ours_ms = *launch(ConvImpl::ours, true);
    if (!launch(ConvImpl::cudnn, false)) return ConvImpl::ours;
    const std::optional<double> cudnn_ms = launch(ConvImpl::cudnn, true);
    return cudnn_ms && *cudnn_ms < ours_ms ? ConvImpl::cudnn : ConvImpl::ours;
  }

  ConvPolicy policy_;
  std::map<ConvKey, ConvImpl> chosen_;
};

}  // namespace sono::cuda
