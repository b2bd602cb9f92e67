// bf16 activations under autocast, convnext_atto (see amp_training.h).
#include "amp_training.h"

namespace sono::test::amp {
namespace {

TEST_CASE("bf16 autocast: convnext_atto trains on bf16 activations, close gradients, fewer bytes") {
  expect_bf16_activations_train(kConvnext);
}

}  // namespace
}  // namespace sono::test::amp
