// The per-shape choice between our dense-conv kernels and cuDNN (cuda/conv_impl.h), with the
// launches faked: which candidates run, how often, and which one a shape keeps. The real
// launches (cuda/cuda_backend.cu, cuda/cudnn/conv.cpp) need a GPU.
#include <vector>

#include "cuda/conv_impl.h"
#include "helpers.h"

namespace sono::test {

using cuda::ConvImpl;
using cuda::ConvImplCache;
using cuda::ConvKey;
using cuda::ConvPass;
using cuda::ConvPolicy;
using cuda::ConvPrecision;

namespace {

// A launch that takes ours_ms / cudnn_ms (nullopt: cuDNN refuses the shape) and logs each call.
struct FakeLaunch {
  double ours_ms;
  std::optional<double> cudnn_ms;
  std::vector<std::pair<ConvImpl, bool>> calls = {};

  std::optional<double> operator()(ConvImpl impl, bool timed) {
    calls.emplace_back(impl, timed);
    return impl == ConvImpl::ours ? std::optional(ours_ms) : cudnn_ms;
  }
};

ConvKey key(ConvPass pass, int64_t cin, ConvPrecision precision = ConvPrecision::f32) {
  const Conv2dGeometry g{2, 17, 13, cin, 24, 3, 3, 17, 13, 1, 2, 2, 1};
  return {pass, g, precision};
}

using Calls = std::vector<std::pair<ConvImpl, bool>>;
constexpr ConvImpl ours = ConvImpl::ours, cudnn = ConvImpl::cudnn;

}  // namespace

TEST_CASE("conv impl: a new shape times both twice and keeps the faster one") {
  ConvImplCache cache(ConvPolicy::automatic);
  FakeLaunch slow_cudnn{1.0, 2.0};
  CHECK(cache.run(key(ConvPass::forward, 8), slow_cudnn) == ours);
  CHECK(slow_cudnn.calls == Calls{{ours, false}, {ours, true}, {cudnn, false}, {cudnn, true}});

  FakeLaunch fast_cudnn{1.0, 0.5};
  CHECK(cache.run(key(ConvPass::backward_weight, 8), fast_cudnn) == cudnn);
  CHECK(*cache.chosen(key(ConvPass::backward_weight, 8)) == cudnn);

  SUBCASE("then runs only the kept one, once, untimed") {
    FakeLaunch again{1.0, 0.5};
    CHECK(cache.run(key(ConvPass::forward, 8), again) == ours);
    CHECK(again.calls == Calls{{ours, false}});
    FakeLaunch again_cudnn{1.0, 0.5};
    CHECK(cache.run(key(ConvPass::backward_weight, 8), again_cudnn) == cudnn);
    CHECK(again_cudnn.calls == Calls{{cudnn, false}});
  }
  SUBCASE("other passes, channels or precisions are other shapes") {
    CHECK_FALSE(cache.chosen(key(ConvPass::backward_input, 8)));
    CHECK_FALSE(cache.chosen(key(ConvPass::forward, 9)));
    for (ConvPrecision other : {ConvPrecision::tf32, ConvPrecision::bf16, ConvPrecision::bf16_exact})
      CHECK_FALSE(cache.chosen(key(ConvPass::forward, 8, other)));
  }
}

TEST_CASE("conv impl: ties and shapes cuDNN refuses stay ours") {
  ConvImplCache cache(ConvPolicy::automatic);
  FakeLaunch tie{1.0, 1.0};
  CHECK(cache.run(key(ConvPass::forward, 8), tie) == ours);

  FakeLaunch refused{1.0, std::nullopt};
  CHECK(cache.run(key(ConvPass::backward_input, 8), refused) == ours);
  CHECK(refused.calls == Calls{{ours, false}, {ours, true}, {cudnn, false}});
  FakeLaunch later{1.0, 0.1};
  CHECK(cache.run(key(ConvPass::backward_input, 8), later) == ours);
  CHECK(later.calls == Calls{{ours, false}});  // not asked again
}

TEST_CASE("conv impl: SONO_CONV_IMPL forces one side; cuDNN refusing falls back to ours") {
  ConvImplCache forced_ours(ConvPolicy::ours);
  FakeLaunch a{1.0, 0.1};
  CHECK(forced_ours.run(key(ConvPass::forward, 8), a) == ours);
  CHECK(a.calls == Calls{{ours, false}});

  ConvImplCache forced_cudnn(ConvPolicy::cudnn);
  FakeLaunch b{0.1, 1.0};
  CHECK(forced_cudnn.run(key(ConvPass::forward, 8), b) == cudnn);
  CHECK(b.calls == Calls{{cudnn, false}});
  FakeLaunch c{0.1, std::nullopt};
  CHECK(forced_cudnn.run(key(ConvPass::forward, 8), c) == ours);
  CHECK(c.calls == Calls{{cudnn, false}, {ours, false}});

  CHECK(cuda::conv_policy_from(nullptr) == ConvPolicy::automatic);
  CHECK(cuda::conv_policy_from("cudnn") == ConvPolicy::cudnn);
  CHECK_THROWS_WITH_AS(cuda::conv_policy_from("fast"),
                       doctest::Contains("SONO_CONV_IMPL is 'fast': expected auto, ours or cudnn"),
                       Error);
}

TEST_CASE("conv impl: SONO_ALLOW_TF32 is on unless 0, as torch.backends.cudnn.allow_tf32") {
  CHECK(cuda::allow_tf32_from(nullptr));
  CHECK(cuda::allow_tf32_from("1"));
  CHECK_FALSE(cuda::allow_tf32_from("0"));
  CHECK_THROWS_WITH_AS(cuda::allow_tf32_from("yes"),
                       doctest::Contains("SONO_ALLOW_TF32 is 'yes': expected 0 or 1"), Error);
}

TEST_CASE("conv impl: SONO_IM2COL_SLAB_BYTES bounds the im2col matrix, 64 MiB unless set") {
  CHECK(cuda::im2col_slab_bytes_from(nullptr) == 64 << 20);
  CHECK(cuda::im2col_slab_bytes_from("4096") == 4096);
  for (const char* bad : {"0", "-5", "64M", ""})
    CHECK_THROWS_WITH_AS(cuda::im2col_slab_bytes_from(bad),
                         doctest::Contains("expected a positive number of bytes"), Error);
}

}  // namespace sono::test
