// bf16 activations under autocast, convnext_atto (see amp_training.h); also the writer of the
// golden fingerprints of both models (float32 activations: the code before bf16 storage).
#include <cstdlib>

#include "amp_training.h"

namespace sono::test::amp {
namespace {

TEST_CASE("bf16 autocast: convnext_atto trains on bf16 activations, close gradients, fewer bytes") {
  expect_bf16_activations_train(kConvnext);
}

TEST_CASE("bf16 autocast: gradient fingerprints (golden writer)") {
  if (!std::getenv("SONO_WRITE_BF16_GOLDEN")) return;
  TestDevice dev;
  nn::StateDict golden;
  for (const ModelCase* c : {&kConvnext, &kDeeplab}) {
    const AmpRun run = train(*c, AutocastActivations::f32, 5);
    golden.merge(fingerprints(*c, run.gradients));
    golden[c->name + "/losses"] = Tensor::from_vector(run.losses, {5}, DType::f64);
  }
  nn::save_safetensors(kGolden, golden);
  MESSAGE("wrote " << golden.size() << " fingerprints to " << kGolden);
}

}  // namespace
}  // namespace sono::test::amp
