// timm's ResNet classifier (models/resnet.h, ResNetClassifier) by numbers: parameter counts,
// timm's initialisation and drop-path schedule, and float64 parity of logits, loss, gradients
// and running stats against tests/reference/resnet_classifier_goldens.py (formula weights).
#include <map>

#include "formula_weights.h"
#include "helpers.h"
#include "layers/activation.h"
#include "layers/safetensors.h"
#include "models/registry.h"
#include "models/resnet.h"

using namespace sono;
using namespace sono::models;
using namespace sono::test;

namespace {

std::shared_ptr<nn::UnaryModule> classifier(const std::string& name, double drop_path_rate = 0.0) {
  return create_model(name, {.in_channels = 4, .num_classes = 3, .drop_path_rate = drop_path_rate},
                      Task::classification);
}

}  // namespace

TEST_CASE("parameter counts equal timm's resnet18..resnet50 with 4 input channels and 3 classes") {
  const std::map<std::string, int64_t> timm_counts = {
      {"resnet18", 11'181'187}, {"resnet34", 21'289'347}, {"resnet50", 23'517'315}};
  for (auto& [name, count] : timm_counts) {
    INFO(name);
    auto model = classifier(name);
    CHECK(model->num_parameters() == count);
    CHECK(model->state_dict().count("fc.weight") == 1);
  }
}

TEST_CASE("the name resnet18 is smp's DeepLabV3+ for segmentation and timm's classifier for classes") {
  CHECK(dynamic_cast<ResNetClassifier*>(classifier("resnet18").get()));
  CHECK(find_model("resnet18", Task::segmentation).task == Task::segmentation);
  CHECK_THROWS_WITH_AS(find_model("resnet18"), doctest::Contains("give the task"), Error);
  CHECK_THROWS_WITH_AS(find_model("mit_b0", Task::classification),
                       doctest::Contains("unknown architecture 'mit_b0' for classification (known: convnext_atto"), Error);
  CHECK(find_model("convnext_atto").task == Task::classification);  // a one-task name needs none
}

TEST_CASE("initialisation as timm: fan-out normal convs (the 4-channel stem too), last BN of each block 0") {
  manual_seed(3);
  auto model = classifier("resnet18");
  int convs = 0, zeroed = 0;
  for (auto& [name, p] : model->named_parameters()) {
    INFO(name);
    if (p.dim() == 4) {
      CHECK(rms(p) == doctest::Approx(std::sqrt(2.0 / static_cast<double>(p.size(0) * p.size(2) * p.size(3)))).epsilon(0.1));
      ++convs;
    } else if (name.ends_with("bn2.weight")) {
      CHECK(max_abs(p) == 0);
      ++zeroed;
    } else if (name.ends_with("bn1.weight") || name.ends_with("downsample.1.weight")) {
      CHECK(max_abs(add(p, -1.0)) == 0);
    }
  }
  CHECK(convs == 20);  // conv1, 16 block convs, 3 downsample convs
  CHECK(zeroed == 8);
}

TEST_CASE("drop path rises linearly over the blocks, as timm's, and acts in training only") {
  auto model = classifier("resnet18", 0.1);
  auto rate = [&](const char* layer, const char* block) {
    return dynamic_cast<const nn::DropPath&>(model->child(layer).child(block).child("drop_path")).p;
  };
  CHECK_THROWS_AS(model->child("layer1").child("0").child("drop_path"), Error);  // the first block: rate 0
  CHECK(rate("layer1", "1") == doctest::Approx(0.1 / 7));
  CHECK(rate("layer3", "0") == doctest::Approx(0.4 / 7));
  CHECK(rate("layer4", "1") == doctest::Approx(0.1));
  auto often = classifier("resnet18", 0.5);  // at 0.1 two samples often keep every block
  often->load_state_dict(formula_state(*often, DType::f32));  // timm's init zeroes every residual branch
  const Tensor x = rand64({2, 64, 64, 4}, 7).to(DType::f32);
  autograd::NoGradGuard no_grad;
  often->eval();
  CHECK(max_abs_diff(often->forward(x), often->forward(x)) == 0);
  often->train();
  CHECK(max_abs_diff(often->forward(x), often->forward(x)) > 0);  // other blocks dropped each time
}

TEST_CASE("resnet18 classifier: float64 logits, loss, gradients and running stats equal timm's (formula weights)") {
  const nn::StateDict ref =
      nn::load_safetensors(source_path("tests/golden/resnet18_cls_formula.safetensors")).tensors;
  auto model = classifier("resnet18");
  model->to(DType::f64);
  model->load_state_dict(formula_state(*model, DType::f64));
  const Tensor x = formula_input({2, 64, 48, 4}, DType::f64);
  model->train();
  const Tensor logits = model->forward(x);
  const Tensor loss = cross_entropy(logits, Tensor::from_labels({0, 2}));
  loss.backward();
  CHECK(max_abs_diff(logits, ref.at("logits_train")) < 1e-10);
  CHECK(std::abs(loss.item() - ref.at("loss").item()) < 1e-12);

  nn::NamedTensors sums;
  for (auto& [name, p] : model->named_parameters()) {
    REQUIRE(ref.count("gradsum." + name));  // every parameter is in timm's model, by its name
    sums.emplace_back(name, gradient_sum(p.grad()));
  }
  double largest = 0;
  for (auto& [name, t] : ref)
    if (name.starts_with("gradsum.")) largest = std::max(largest, max_abs(t));
  const auto grad = worst_error(sums, ref, "gradsum.", 1e-6 * largest);
  const auto conv1 = worst_error({{"conv1.weight", model->named_parameters().front().second.grad()}}, ref, "grad.");
  int buffers = 0;
  for (auto& [name, b] : model->named_buffers()) buffers += ref.count("running." + name) ? 1 : 0;
  const auto running = worst_error(model->named_buffers(), ref, "running.");
  MESSAGE("worst gradient-sum rel err " << grad.second << " (" << grad.first << "), conv1 gradient " << conv1.second
                                        << ", running stats " << running.second);
  CHECK(sums.size() + buffers == ref.size() - 4);  // less the logits, the loss and the conv1 gradient
  CHECK(grad.second < 1e-6);
  CHECK(conv1.second < 1e-6);
  CHECK(running.second < 1e-6);

  model->eval();
  autograd::NoGradGuard no_grad;
  CHECK(max_abs_diff(model->forward(x), ref.at("logits_eval")) < 1e-10);
}
