// AdamW, Adam, the cosine-warmup schedule and gradient clipping against PyTorch/timm goldens
// (tests/reference/optim_goldens.py), and an exact resume from saved optimizer state.
#include <filesystem>

#include "helpers.h"
#include "layers/optim.h"
#include "layers/safetensors.h"

using namespace sono;
using namespace sono::nn;

namespace {

const StateDict& goldens() {
  static const StateDict g = load_safetensors(test::source_path("tests/golden/optim.safetensors")).tensors;
  return g;
}

// A module holding the given parameters under its own names ("weight", "bias").
struct Params : Module {
  Params(const Shape& weight, std::optional<Shape> bias, DType dtype) {
    register_parameter("weight", Tensor::zeros(weight, dtype));
    if (bias) register_parameter("bias", Tensor::zeros(*bias, dtype));
  }
  Tensor get(const std::string& name) const {
    for (auto& [n, t] : named_parameters())
      if (n == name) return t;
    return {};
  }
};

// The golden script's problem: h = x W1^T + b1, out = h W2^T,
// loss = mean((out - z)^2) + mean((s d - e)^2); frozen.weight is not in the loss.
struct Problem : Module {
  explicit Problem(DType dtype) : dtype(dtype) {
    fc = register_module("fc", std::make_shared<Params>(Shape{3, 5}, Shape{3}, dtype));
    head = register_module("head", std::make_shared<Params>(Shape{4, 3}, std::nullopt, dtype));
    norm = register_module("norm", std::make_shared<Params>(Shape{7}, std::nullopt, dtype));
    frozen = register_module("frozen", std::make_shared<Params>(Shape{2, 2}, std::nullopt, dtype));
    StateDict init;
    for (auto& [name, t] : state_dict()) init[name] = goldens().at("init." + name);
    load_state_dict(init);
  }
  Tensor data(const std::string& name) const { return goldens().at("data." + name).to(dtype); }
  Tensor loss() const {
    Tensor out = linear(linear(data("x"), fc->get("weight"), fc->get("bias")), head->get("weight"), {});
    Tensor fit = mean(pow(sub(out, data("z")), 2.0));
    return add(fit, mean(pow(sub(mul(norm->get("weight"), data("d")), data("e")), 2.0)));
  }
  void train_step(Optimizer& opt) const {
    opt.zero_grad();
    loss().backward();
    opt.step();
  }
  DType dtype;
  std::shared_ptr<Params> fc, head, norm, frozen;
};

const AdamOptions kOptions{.lr = 0.05, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};

std::unique_ptr<Optimizer> make_adamw(const Module& m) {
  return std::make_unique<AdamW>(param_groups_weight_decay(m, kOptions.weight_decay), kOptions);
}

std::unique_ptr<Optimizer> make_adam(const Module& m) {
  return std::make_unique<Adam>(single_group(m), kOptions);
}

// Max abs difference to torch over all trainable parameters and all ten steps.
double max_error_over_ten_steps(const std::string& prefix, DType dtype,
                                std::unique_ptr<Optimizer> (*make)(const Module&)) {
  Problem model(dtype);
  auto opt = make(model);
  double worst = 0;
  for (int step = 1; step <= 10; ++step) {
    model.train_step(*opt);
    for (auto& [name, p] : model.named_parameters()) {
      if (name == "frozen.weight") continue;
      worst = std::max(worst, test::max_abs_diff(p, goldens().at(prefix + "." + std::to_string(step) + "." + name)));
    }
  }
  CHECK(test::max_abs_diff(model.frozen->get("weight"), goldens().at("init.frozen.weight").to(dtype)) == 0);
  return worst;
}

}  // namespace

TEST_CASE("weight-decay groups follow timm: 1-D and bias parameters get none") {
  Problem model(DType::f64);
  auto groups = param_groups_weight_decay(model, 0.1, {"head.weight"});
  REQUIRE(groups.size() == 2);
  auto names = [](const ParamGroup& g) {
    std::vector<std::string> out;
    for (auto& [n, t] : g.params) out.push_back(n);
    return out;
  };
  CHECK(*groups[0].weight_decay == 0.0);
  CHECK(names(groups[0]) == std::vector<std::string>{"fc.bias", "head.weight", "norm.weight"});
  CHECK(*groups[1].weight_decay == 0.1);
  CHECK(names(groups[1]) == std::vector<std::string>{"fc.weight", "frozen.weight"});
}

TEST_CASE("ten steps match torch: AdamW with timm's groups, Adam with L2 weight decay") {
  using Make = std::unique_ptr<Optimizer> (*)(const Module&);
  for (auto [name, make] : {std::pair<std::string, Make>{"adamw", make_adamw}, {"adam", make_adam}}) {
    double f64 = max_error_over_ten_steps(name + ".f64", DType::f64, make);
    double f32 = max_error_over_ten_steps(name + ".f32", DType::f32, make);
    MESSAGE(name << " max abs error over ten steps: float64 " << f64 << ", float32 " << f32);
    CHECK(f64 < 1e-12);
    CHECK(f32 < 1e-6);
  }
}

TEST_CASE("cosine schedule with warmup matches timm's CosineLRScheduler") {
  CosineWarmupSchedule schedule{.base_lr = 0.1, .warmup_steps = 3, .total_steps = 12,
                                .min_lr = 1e-3, .warmup_lr_init = 1e-4};
  std::vector<double> expected = goldens().at("cosine.lr").to_vector();
  for (size_t t = 0; t < expected.size(); ++t) {
    INFO("t = " << t);
    CHECK(schedule(static_cast<int64_t>(t)) == doctest::Approx(expected[t]).epsilon(1e-14));
  }
  CHECK_THROWS_WITH_AS((CosineWarmupSchedule{0.1, 5, 5})(0), doctest::Contains("warmup_steps < total_steps"), Error);
}

TEST_CASE("clip_grad_norm returns the total norm and scales grads as torch") {
  for (std::string max_norm : {"0.5", "1000"}) {
    Problem model(DType::f64);
    model.loss().backward();
    double norm = clip_grad_norm(model.parameters(), std::stod(max_norm));
    CHECK(norm == doctest::Approx(goldens().at("clip." + max_norm + ".norm").item()).epsilon(1e-13));
    for (auto& [name, p] : model.named_parameters()) {
      INFO(name << " at max_norm " << max_norm);
      if (name == "frozen.weight") CHECK_FALSE(p.grad().defined());
      else CHECK(test::max_abs_diff(p.grad(), goldens().at("clip." + max_norm + "." + name)) < 1e-13);
    }
  }
}

TEST_CASE("optimizer state saved after two steps and loaded resumes exactly like three steps") {
  Problem straight(DType::f32), resumed(DType::f32);
  auto opt = make_adamw(straight);
  for (int i = 0; i < 3; ++i) straight.train_step(*opt);

  auto first = make_adamw(resumed);
  for (int i = 0; i < 2; ++i) resumed.train_step(*first);
  const std::string path = (std::filesystem::temp_directory_path() / "sono_test_optim.safetensors").string();
  save_safetensors(path, first->state_dict());
  StateDict saved = load_safetensors(path).tensors;
  std::filesystem::remove(path);
  CHECK(saved.at("steps").item() == 2);
  CHECK(saved.at("fc.weight.step").item() == 2);
  CHECK(saved.count("fc.weight.exp_avg_sq") == 1);
  CHECK(saved.count("frozen.weight.exp_avg") == 0);  // never had a grad: no state, as torch

  auto second = make_adamw(resumed);
  second->load_state_dict(saved);
  CHECK(second->steps() == 2);
  resumed.train_step(*second);
  for (auto& [name, p] : straight.named_parameters()) {
    INFO(name);
    CHECK(test::max_abs_diff(p, resumed.state_dict().at(name)) == 0);
  }
}

TEST_CASE("optimizer state with wrong keys or shapes is refused by name") {
  Problem model(DType::f32);
  auto opt = make_adamw(model);
  model.train_step(*opt);
  StateDict s = opt->state_dict();
  s["fc.bias.exp_avg"] = Tensor::zeros({4});
  CHECK_THROWS_WITH_AS(opt->load_state_dict(s), doctest::Contains("'fc.bias.exp_avg' has shape [4] but the parameter has shape [3]"), Error);
  s = opt->state_dict();
  s["gone.weight.exp_avg"] = Tensor::zeros({1});
  CHECK_THROWS_WITH_AS(opt->load_state_dict(s), doctest::Contains("unexpected key 'gone.weight.exp_avg'"), Error);
  s = opt->state_dict();
  s.erase("head.weight.exp_avg_sq");
  CHECK_THROWS_WITH_AS(opt->load_state_dict(s), doctest::Contains("missing key 'head.weight.exp_avg_sq'"), Error);
}

// ZeRO-1's building block (tools/app/distributed.h): an optimizer that owns some parameters
// steps and keeps state for those alone, and takes them from a whole optimizer's state.
TEST_CASE("keep_only: the owned parameters step and keep moments, the others are left alone") {
  Problem whole_model(DType::f32), owned_model(DType::f32);
  auto whole = make_adamw(whole_model), owned = make_adamw(owned_model);
  auto owns = [](const std::string& name) { return name.rfind("fc.", 0) == 0; };
  owned->keep_only(owns);
  for (int i = 0; i < 2; ++i) {
    whole_model.train_step(*whole);
    owned_model.train_step(*owned);
  }
  const StateDict initial = Problem(DType::f32).state_dict();
  for (auto& [name, p] : owned_model.named_parameters()) {
    INFO(name);
    CHECK(owned->state_dict().count(name + ".exp_avg") == size_t(owns(name) && whole->state_dict().count(name + ".exp_avg")));
    if (!owns(name)) CHECK(test::max_abs_diff(p, initial.at(name)) == 0);  // not stepped
    if (owns(name)) CHECK(test::max_abs_diff(p, initial.at(name)) > 0);
  }
  StateDict loaded_whole = whole->state_dict();
  auto loaded = make_adamw(owned_model);
  loaded->keep_only(owns);
  loaded->load_state_dict(loaded_whole);
  for (auto& [key, t] : loaded->state_dict()) CHECK((key == "steps" || owns(key)));
  CHECK(loaded->state_dict().size() > 1);
}
