// Module::fuse_for_inference (layers/fuse.cpp): each conv -> BatchNorm -> ReLU becomes one conv
// with the BatchNorm folded into its weights and the ReLU in its epilogue. Every model family
// with BatchNorms gives its unfused eval-mode outputs, in float64 to rounding and in float32
// with bf16 products as predict runs them; a folded BatchNorm refuses to train, and fused or
// frozen parameters are not loaded into.
#include <cmath>

#include "helpers.h"
#include "models/registry.h"
#include "tensor/autocast.h"

using namespace sono;
using namespace sono::models;
using namespace sono::test;

namespace {

struct FuseCase {
  const char* arch;
  Task task;
  ModelOptions options;
  int64_t size;
};

const FuseCase kCases[] = {
    {"resnet18", Task::classification, {.in_channels = 4, .num_classes = 3}, 64},
    {"resnet18", Task::segmentation, {.encoder_depth = 4}, 64},
    {"resnet50", Task::segmentation, {}, 64},  // bottleneck blocks, 1x1 downsample convs
    {"mit_b0", Task::segmentation, {}, 64},    // BatchNorms in the decoder only
    {"unet_resnet18", Task::segmentation, {.encoder_depth = 4, .decoder_channels = {64, 32, 16, 8}}, 64},
};

// Running statistics and affine parameters far from their initial 0 / 1, so that folding them
// changes the weights: every 1-D parameter (BatchNorm's and the biases) and running stat.
void randomise_norms(nn::Module& model, uint64_t seed) {
  autograd::NoGradGuard no_grad;
  for (auto& [name, t] : model.named_parameters())
    if (t.dim() == 1) backend_of(t).copy(rand64(t.shape(), ++seed, 0.3).to(t.dtype()), t);
  for (auto& [name, t] : model.named_buffers()) {
    if (name.ends_with("running_mean")) backend_of(t).copy(rand64(t.shape(), ++seed, 0.2).to(t.dtype()), t);
    if (name.ends_with("running_var"))
      backend_of(t).copy(add(abs(rand64(t.shape(), ++seed, 0.5)), 0.5).to(t.dtype()), t);
  }
}

std::shared_ptr<nn::UnaryModule> eval_model(const FuseCase& c, DType dtype) {
  manual_seed(11);
  auto model = create_model(c.arch, c.options, c.task);
  randomise_norms(*model, 40);
  model->to(dtype);
  model->eval();
  return model;
}

double scale_of(const Tensor& t) {
  double m = 1;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

}  // namespace

TEST_CASE("fused models give their unfused eval outputs: float64 to rounding, float32 with bf16 products") {
  for (const FuseCase& c : kCases) {
    INFO(c.arch << (c.task == Task::classification ? " classifier" : " segmenter"));
    const Tensor x = rand64({2, c.size, c.size, c.options.in_channels}, 5);
    autograd::NoGradGuard no_grad;
    {
      auto model = eval_model(c, DType::f64);
      const Tensor unfused = model->forward(x);
      model->fuse_for_inference();
      const Tensor fused = model->forward(x);
      CHECK(max_abs_diff(fused, unfused) <= 1e-12 * scale_of(unfused));
    }
    {
      auto model = eval_model(c, DType::f32);
      Autocast autocast(Device::cpu, Precision::bf16);
      const Tensor x32 = x.to(DType::f32), unfused = model->forward(x32);
      model->fuse_for_inference();
      // The folded weights round to bfloat16 with the BatchNorm's scale in them: bf16 rounding (the
      // largest difference seen, U-Net's, is 0.0024 of the outputs' scale).
      CHECK(max_abs_diff(model->forward(x32), unfused) <= 0.01 * scale_of(unfused));
    }
  }
}

TEST_CASE("a fused model refuses to train, and BatchNorms fold in eval mode only") {
  const FuseCase& c = kCases[0];
  auto model = eval_model(c, DType::f32);
  model->fuse_for_inference();
  model->train();
  const Tensor x = rand64({2, c.size, c.size, 4}, 6).to(DType::f32);
  CHECK_THROWS_WITH_AS(model->forward(x), doctest::Contains("folded into its conv for inference"), Error);

  auto training = create_model(c.arch, c.options, c.task);
  CHECK_THROWS_WITH_AS(training->fuse_for_inference(), doctest::Contains("only eval mode"), Error);

  // Fused or frozen weights are not loaded into: kernels may keep what they made of them.
  const nn::StateDict state = eval_model(c, DType::f32)->state_dict();
  CHECK_THROWS_WITH_AS(model->load_state_dict(state), doctest::Contains("fused for inference"), Error);
  auto frozen = eval_model(c, DType::f32);
  frozen->freeze_parameters();
  CHECK_THROWS_WITH_AS(frozen->load_state_dict(state), doctest::Contains("frozen for inference"), Error);
}
