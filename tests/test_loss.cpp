// cross_entropy, bce_with_logits and soft_dice_loss: gradients by central differences in
// float64, forward values by hand and against PyTorch goldens (tests/reference/ops_goldens.py),
// clear errors on bad labels and shapes.
#include "helpers.h"
#include "layers/safetensors.h"

using namespace sono;
using namespace sono::test;

TEST_CASE("cross_entropy gradients with class weights and label smoothing") {
  Tensor logits = rand64({7, 5}, 1, 2.0);
  Tensor labels = Tensor::from_labels({0, 4, 2, 2, 1, 4, 3});
  Tensor weights = Tensor::from_vector({0.5, 2.0, 1.0, 0.25, 3.0}, {5}, DType::f64);
  expect_gradcheck([&](auto& v) { return cross_entropy(v[0], labels); }, {logits});
  expect_gradcheck([&](auto& v) { return cross_entropy(v[0], labels, weights, 0.2); }, {logits});
  Tensor one = rand64({1, 3}, 2);  // batch of 1
  expect_gradcheck([](auto& v) { return cross_entropy(v[0], Tensor::from_labels({2}), {}, 0.1); }, {one});
}

TEST_CASE("cross_entropy by hand") {
  // Equal logits: every class has probability 1/C, the loss is log C whatever the smoothing.
  Tensor flat = Tensor::zeros({3, 7}, DType::f64);
  Tensor labels = Tensor::from_labels({0, 6, 3});
  check_values(cross_entropy(flat, labels), {std::log(7.0)}, 1e-12);
  check_values(cross_entropy(flat, labels, {}, 0.3), {std::log(7.0)}, 1e-12);
  // Weighted mean divides by the weights of the labels present: (2 a + 1 b) / 3.
  Tensor logits = Tensor::from_vector({2, 0, 0, 1}, {2, 2}, DType::f64);
  Tensor w = Tensor::from_vector({2, 1}, {2}, DType::f64);
  const double a = std::log1p(std::exp(-2.0)), b = std::log1p(std::exp(1.0));
  check_values(cross_entropy(logits, Tensor::from_labels({0, 0}), w), {a / 2 + b / 2}, 1e-12);
  check_values(cross_entropy(logits, Tensor::from_labels({0, 1}), w), {(2 * a + std::log1p(std::exp(-1.0))) / 3}, 1e-12);
}

TEST_CASE("bce_with_logits and soft_dice_loss gradients (logits and targets)") {
  Tensor x = rand64({3, 5, 7}, 3, 3.0), t = rand64({3, 5, 7}, 4);
  expect_gradcheck([](auto& v) { return bce_with_logits(v[0], v[1]); }, {x, t});
  Tensor m = rand64({3, 5, 7, 1}, 5, 2.0), mt = rand64({3, 5, 7, 1}, 6);
  expect_gradcheck([](auto& v) { return soft_dice_loss(v[0], v[1], 1.0); }, {m, mt});
  Tensor m1 = rand64({1, 3, 5}, 7);
  expect_gradcheck([&](auto& v) { return soft_dice_loss(v[0], v[1], 0.5); }, {m1, rand64({1, 3, 5}, 8)});
}

TEST_CASE("bce_with_logits and soft_dice_loss by hand") {
  Tensor zero = Tensor::zeros({2, 3}, DType::f64);
  check_values(bce_with_logits(zero, Tensor::ones({2, 3}, DType::f64)), {std::log(2.0)}, 1e-12);
  // Saturated logits: exact, no overflow.
  Tensor sat = Tensor::from_vector({1000, -1000}, {2}, DType::f64);
  check_values(bce_with_logits(sat, Tensor::from_vector({1, 0}, {2}, DType::f64)), {0}, 1e-12);
  check_values(bce_with_logits(sat, Tensor::from_vector({0, 1}, {2}, DType::f64)), {1000}, 1e-12);
  // Confident and right: dice 1 per sample; an empty target with an empty prediction too.
  Tensor right = Tensor::from_vector({50, -50, -50, -50}, {2, 2}, DType::f64);
  Tensor target = Tensor::from_vector({1, 0, 0, 0}, {2, 2}, DType::f64);
  check_values(soft_dice_loss(right, target), {0}, 1e-12);
  // Wrong everywhere on sample 0 (p = 1 where t = 0): dice = 1 / (1 + 1 + 1); sample 1 is right.
  Tensor wrong = Tensor::from_vector({-50, 50, -50, -50}, {2, 2}, DType::f64);
  check_values(soft_dice_loss(wrong, target), {1.0 - (1.0 / 3.0 + 1.0) / 2}, 1e-12);
}

TEST_CASE("losses forward: PyTorch goldens") {
  nn::StateDict g = nn::load_safetensors(source_path("tests/golden/ops.safetensors")).tensors;
  const Tensor &logits = g.at("ce.logits"), &labels = g.at("ce.labels"), &w = g.at("ce.weights");
  CHECK(max_abs_diff(cross_entropy(logits, labels).reshape({1}), g.at("ce.plain")) < 1e-10);
  CHECK(max_abs_diff(cross_entropy(logits, labels, w).reshape({1}), g.at("ce.weighted")) < 1e-10);
  CHECK(max_abs_diff(cross_entropy(logits, labels, {}, 0.1).reshape({1}), g.at("ce.smoothed")) < 1e-10);
  CHECK(max_abs_diff(cross_entropy(logits, labels, w, 0.15).reshape({1}), g.at("ce.weighted_smoothed")) < 1e-10);
  CHECK(max_abs_diff(bce_with_logits(g.at("bce.logits"), g.at("bce.target")).reshape({1}), g.at("bce.loss")) < 1e-10);
  CHECK(max_abs_diff(soft_dice_loss(g.at("dice.logits"), g.at("dice.target")).reshape({1}), g.at("dice.loss")) < 1e-10);
}

TEST_CASE("losses: clear errors") {
  Tensor logits = Tensor::zeros({3, 5});
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::from_labels({0, 5, 1})),
                       doctest::Contains("label 5 at index 1 is out of range for 5 classes"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::from_labels({0, -1, 1})),
                       doctest::Contains("label -1"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::from_labels({0, 1})),
                       doctest::Contains("labels must be int64 [3]"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::zeros({3})), doctest::Contains("got float32 [3]"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::from_labels({0, 1, 2}), Tensor::ones({4})),
                       doctest::Contains("class_weights has shape [4], expected [5]"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(Tensor::zeros({3, 5, 2}), Tensor::from_labels({0, 1, 2})),
                       doctest::Contains("logits must be [N, C]"), Error);
  CHECK_THROWS_WITH_AS(bce_with_logits(logits, Tensor::zeros({3, 4})),
                       doctest::Contains("target shape [3, 4] must equal logits shape [3, 5]"), Error);
  CHECK_THROWS_WITH_AS(soft_dice_loss(logits, Tensor::zeros({5, 3})), doctest::Contains("soft_dice_loss"), Error);
}
