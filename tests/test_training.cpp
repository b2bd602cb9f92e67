// End-to-end training on toy tasks: engine forward, autograd, AdamW with weight-decay groups,
// the cosine-warmup schedule and gradient clipping together must drive the loss down 10x.
#include <cmath>

#include "helpers.h"
#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/linear.h"
#include "layers/norm.h"
#include "layers/optim.h"

using namespace sono;
using namespace sono::nn;

namespace {

struct Batch {
  Tensor inputs, labels;
};

// Two interleaved spirals, one per class, 1.5 turns each, with a little Gaussian noise.
Batch spirals(int64_t per_class, Generator& gen) {
  std::vector<double> points;
  std::vector<int64_t> labels;
  for (int64_t c = 0; c < 2; ++c)
    for (int64_t i = 0; i < per_class; ++i) {
      const double r = 0.1 + 0.9 * i / per_class, theta = 3.0 * M_PI * i / per_class + M_PI * c;
      points.push_back(r * std::cos(theta) + 0.02 * gen.normal());
      points.push_back(r * std::sin(theta) + 0.02 * gen.normal());
      labels.push_back(c);
    }
  return {Tensor::from_vector(points, {2 * per_class, 2}), Tensor::from_labels(labels)};
}

// NHWC single-channel images of noise with one bright bar of length 5 at a random place:
// class 0 horizontal, class 1 vertical. Orientation survives global pooling, position doesn't.
Batch bars(int64_t count, int64_t size, Generator& gen) {
  std::vector<double> pixels;
  std::vector<int64_t> labels;
  for (int64_t n = 0; n < count; ++n) {
    const int64_t label = n % 2, along = 5;
    const int64_t max_row = label ? size - along : size - 1, max_col = label ? size - 1 : size - along;
    const int64_t row = gen.next() % (max_row + 1), col = gen.next() % (max_col + 1);
    std::vector<double> image(size * size);
    for (double& v : image) v = 0.1 * gen.normal();
    for (int64_t k = 0; k < along; ++k) image[(row + (label ? k : 0)) * size + col + (label ? 0 : k)] += 1.0;
    pixels.insert(pixels.end(), image.begin(), image.end());
    labels.push_back(label);
  }
  return {Tensor::from_vector(pixels, {count, size, size, 1}), Tensor::from_labels(labels)};
}

// Full-batch training; returns {first loss, last loss}.
template <typename Model>
std::pair<double, double> train(Model& model, const Batch& batch, int64_t steps, double lr) {
  AdamW opt(param_groups_weight_decay(model, 0.01), {.lr = lr, .weight_decay = 0.01});
  CosineWarmupSchedule schedule{.base_lr = lr, .warmup_steps = steps / 20, .total_steps = steps};
  double first = 0, last = 0;
  for (int64_t t = 0; t < steps; ++t) {
    opt.set_lr(schedule(t));
    opt.zero_grad();
    Tensor loss = cross_entropy(model(batch.inputs), batch.labels);
    loss.backward();
    clip_grad_norm(model.parameters(), 5.0);
    opt.step();
    last = loss.item();
    if (t == 0) first = last;
  }
  return {first, last};
}

struct BarNet : UnaryModule {
  BarNet() {
    net = register_module("net", std::make_shared<Sequential>());
    net->append(std::make_shared<Conv2d>(1, 6, 3, Conv2dOptions{.padding = 1}, false));
    net->append(std::make_shared<BatchNorm2d>(6));
    net->append(std::make_shared<ReLU>());
    net->append(std::make_shared<Conv2d>(6, 10, 3, Conv2dOptions{.stride = 2, .padding = 1}, false));
    net->append(std::make_shared<BatchNorm2d>(10));
    net->append(std::make_shared<ReLU>());
    head = register_module("head", std::make_shared<Linear>(10, 2));
  }
  Tensor forward(const Tensor& x) override {
    Tensor pooled = global_avg_pool(net->forward(x));
    return head->forward(pooled.reshape({x.size(0), pooled.size(-1)}));
  }
  std::shared_ptr<Sequential> net;
  std::shared_ptr<Linear> head;
};

}  // namespace

TEST_CASE("an MLP learns two interleaved spirals: cross-entropy falls 10x") {
  manual_seed(11);
  Sequential mlp;
  mlp.append(std::make_shared<Linear>(2, 48));
  mlp.append(std::make_shared<ReLU>());
  mlp.append(std::make_shared<Linear>(48, 48));
  mlp.append(std::make_shared<ReLU>());
  mlp.append(std::make_shared<Linear>(48, 2));
  Generator gen(3);
  auto [first, last] = train(mlp, spirals(100, gen), 300, 0.02);
  MESSAGE("spirals MLP loss " << first << " -> " << last << " (" << first / last << "x)");
  CHECK(last < first / 10);
}

TEST_CASE("a conv net with BatchNorm tells horizontal from vertical bars: loss falls 10x") {
  manual_seed(12);
  BarNet model;
  Generator gen(5);
  Batch batch = bars(32, 11, gen);
  auto [first, last] = train(model, batch, 150, 0.02);
  MESSAGE("bars conv net loss " << first << " -> " << last << " (" << first / last << "x)");
  CHECK(last < first / 10);
  // Eval mode uses the running statistics gathered during training.
  model.eval();
  autograd::NoGradGuard no_grad;
  double eval_loss = cross_entropy(model(batch.inputs), batch.labels).item();
  MESSAGE("bars conv net eval-mode loss " << eval_loss);
  CHECK(eval_loss < first / 10);
}
