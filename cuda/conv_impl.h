#pragma once
// Which implementation runs a dense convolution pass of a given shape on the GPU: our
// implicit-GEMM kernels (kernels/conv.cuh) or cuDNN. As torch.backends.cudnn.benchmark does,
// the first time a pass and shape are seen both run twice on the real arguments, timed, and
// the faster one is remembered for that shape. Plain C++: the policy is tested without a GPU
// (test_cuda_kernels), with the launches faked.
//
// SONO_CONV_IMPL in the environment picks the policy: auto (the default), ours or cudnn.
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

// A pass of one convolution shape; bf16 when the operands are bfloat16 (autocast).
struct ConvKey {
  ConvPass pass;
  Conv2dGeometry g;
  bool bf16;

  auto tied() const {
    return std::tuple(pass, g.n, g.h, g.w, g.cin, g.cout, g.kh, g.kw, g.stride, g.padding,
                      g.dilation, g.groups, bf16);
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
  // kernels' first launch); ties go to ours. Both compute the same output.
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
