// bf16 activations under autocast, DeepLabV3+/mit_b0 (see amp_training.h).
#include "amp_training.h"

namespace sono::test::amp {
namespace {

TEST_CASE("bf16 autocast: DeepLabV3+ mit_b0 trains on bf16 activations, close gradients, fewer bytes") {
  expect_bf16_activations_train(kDeeplab);
}

}  // namespace
}  // namespace sono::test::amp
