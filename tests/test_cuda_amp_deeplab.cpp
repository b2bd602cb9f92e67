// bf16 storage of saved activations under autocast, DeepLabV3+/mit_b0 (see amp_training.h).
#include "amp_training.h"

namespace sono::test::amp {
namespace {

TEST_CASE("bf16 storage: DeepLabV3+ mit_b0 saves bf16 activations, same gradients, fewer bytes") {
  expect_bf16_storage_trains(kDeeplab);
}

}  // namespace
}  // namespace sono::test::amp
