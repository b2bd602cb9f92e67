// DeepLabV3+ on MiT against segmentation_models_pytorch 0.6: parameter counts, names and shapes,
// initialisation, forward (train and eval), loss, gradient and BN running-stat parity with
// goldens from tests/reference/deeplab_goldens.py, checkpoint round trips and clear errors.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "formula_weights.h"
#include "helpers.h"
#include "layers/safetensors.h"
#include "models/deeplabv3plus.h"
#include "models/unet.h"

using namespace sono;
using namespace sono::models;
using namespace sono::test;
namespace fs = std::filesystem;

namespace {

// The committed golden's configuration (TINY / TINY_DECODER in deeplab_goldens.py).
DeepLabV3PlusConfig tiny_config(double drop_path_rate = 0.0) {
  DeepLabV3PlusConfig c;
  c.encoder = MitConfig{.dims = {4, 8, 12, 16}, .heads = {1, 2, 3, 4}, .depths = {1, 2, 1, 1},
               .drop_path_rate = drop_path_rate, .output_stride = 16};
  c.decoder_channels = 8;
  c.atrous_rates = {2, 4, 6};
  c.aspp_dropout = 0.0;
  return c;
}

// smp's model with our defaults except randomness: the goldens run without dropout and drop path.
DeepLabV3PlusConfig variant_config(const std::string& variant, int64_t encoder_depth = 5) {
  DeepLabV3PlusConfig c =
      deeplabv3plus_config(variant, {.in_channels = 3, .num_classes = 1, .encoder_depth = encoder_depth});
  c.aspp_dropout = 0.0;
  return c;
}

// The goldens' target: sample n is a disc of radius H/4 centred at (0.4 H + 5n, 0.55 W - 3n).
Tensor formula_target(int64_t n, int64_t h, int64_t w, DType dtype) {
  std::vector<double> v;
  for (int64_t s = 0; s < n; ++s)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        const double cy = 0.4 * h + 5 * s, cx = 0.55 * w - 3 * s, r = h / 4.0;
        v.push_back((y - cy) * (y - cy) + (x - cx) * (x - cx) < r * r ? 1.0 : 0.0);
      }
  return Tensor::from_vector(v, {n, h, w, 1}, dtype);
}

struct Run {
  Tensor out_train, out_eval, loss;
};

// As run() in deeplab_goldens.py: train forward, BCE + Dice, backward; then eval forward.
Run run(nn::UnaryModule& model, const Tensor& x) {
  const Tensor target = formula_target(x.size(0), x.size(1), x.size(2), x.dtype());
  model.zero_grad();
  model.train();
  Run r;
  r.out_train = model(x);
  r.loss = add(bce_with_logits(r.out_train, target), soft_dice_loss(r.out_train, target, 1.0));
  r.loss.backward();
  model.eval();
  autograd::NoGradGuard no_grad;
  r.out_eval = model(x);
  return r;
}

struct Tolerance {
  double out, grad, running;  // absolute on outputs and loss; relative on gradients, running stats
  // Some gradients are zero but for rounding (encoder.norm4.bias: every ASPP branch is conv +
  // train-mode BN, which removes a constant shift), so gradient errors are relative to at least
  // this fraction of the model's largest gradient.
  double grad_floor;
};

// Runs `model` (holding the reference parameters) as the golden script did and checks every
// figure; the gradients against `grad_ref` (torch's run in the same dtype, see the golden script).
void expect_parity(DeepLabV3Plus& model, const Tensor& x, const nn::StateDict& ref, const nn::StateDict& grad_ref,
                   Tolerance tol) {
  Run r = run(model, x);
  nn::NamedTensors grads;
  for (auto& [name, p] : model.named_parameters()) grads.emplace_back(name, p.grad());
  const double out_train = test::max_abs_diff(r.out_train, ref.at("out_train"));
  const double out_eval = test::max_abs_diff(r.out_eval, ref.at("out_eval"));
  const double loss = std::abs(r.loss.item() - ref.at("loss").item());
  double largest = 0;
  for (auto& [name, t] : grad_ref) largest = std::max(largest, max_abs(t));
  const auto grad = worst_error(grads, grad_ref, "grad.", tol.grad_floor * largest);
  const auto running = worst_error(model.named_buffers(), ref, "running.");
  MESSAGE("out train max abs err " << out_train << ", out eval " << out_eval << ", loss " << loss
                                   << ", worst gradient rel err " << grad.second << " (" << grad.first
                                   << "), worst running-stat rel err " << running.second << " (" << running.first << ")");
  CHECK(out_train < tol.out);
  CHECK(out_eval < tol.out);
  CHECK(loss < tol.out);
  CHECK(grad.second < tol.grad);
  CHECK(running.second < tol.running);
}

struct TinyGolden {
  nn::StateDict weights = nn::load_safetensors(test::source_path("tests/golden/deeplab_tiny_weights.safetensors")).tensors;
  nn::StateDict ref = [] {
    nn::StateDict r = nn::load_safetensors(test::source_path("tests/golden/deeplab_tiny_train.safetensors")).tensors;
    r.merge(nn::load_safetensors(test::source_path("tests/golden/deeplab_tiny_eval.safetensors")).tensors);
    return r;
  }();
  nn::StateDict grad_f32 = nn::load_safetensors(test::source_path("tests/golden/deeplab_tiny_grad_f32.safetensors")).tensors;
  Shape input_shape{2, 48, 32, 3};
};

std::shared_ptr<DeepLabV3Plus> tiny_model(const TinyGolden& g, DType dtype, double drop_path_rate = 0.0) {
  auto model = std::make_shared<DeepLabV3Plus>(tiny_config(drop_path_rate));
  model->to(dtype);
  model->load_state_dict(g.weights);
  return model;
}

// Lines "<key> <d0,d1,...>" (a scalar has an empty shape) in smp's state_dict order.
std::vector<std::pair<std::string, std::string>> smp_keys(const std::string& encoder) {
  std::ifstream in(test::source_path("tests/golden/deeplab_" + encoder + "_keys.txt"));
  REQUIRE(in);
  std::vector<std::pair<std::string, std::string>> keys;
  for (std::string line; std::getline(in, line);) {
    const size_t space = line.find(' ');
    keys.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  return keys;
}

std::string dims(const Shape& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out;
}

bool is_buffer(const std::string& key) {
  return key.ends_with("running_mean") || key.ends_with("running_var") || key.ends_with("num_batches_tracked");
}

}  // namespace

TEST_CASE("parameter counts equal smp's DeepLabV3Plus for every MiT variant") {
  const std::map<std::string, int64_t> smp_counts = {
      {"mit_b0", 4'136'049},   {"mit_b1", 14'304'209}, {"mit_b2", 25'349'073},
      {"mit_b3", 45'224'913}, {"mit_b4", 61'995'473}, {"mit_b5", 82'595'793}};
  std::map<std::string, std::shared_ptr<nn::UnaryModule>> built;
  for (const ModelEntry& e : deeplab_variants()) {
    INFO(e.name);
    CHECK(e.task == Task::segmentation);
    if (e.name == "mit_b0" || e.name == "mit_b2") built[e.name] = e.build({.in_channels = 3, .num_classes = 1});
  }
  for (auto& [name, model] : built) CHECK(model->num_parameters() == smp_counts.at(name));
  // b1 and b3..b5 differ from b2 only in depths (building them costs seconds): count their blocks.
  std::array<int64_t, 4> block_params{};
  for (auto& [name, p] : built.at("mit_b2")->named_parameters())
    for (int s = 0; s < 4; ++s)
      if (name.starts_with("encoder.block" + std::to_string(s + 1) + ".0.")) block_params[s] += p.numel();
  for (const std::string name : {"mit_b1", "mit_b3", "mit_b4", "mit_b5"}) {
    int64_t count = smp_counts.at("mit_b2");
    for (int s = 0; s < 4; ++s) count += (mit_config(name).depths[s] - mit_config("mit_b2").depths[s]) * block_params[s];
    CHECK(count == smp_counts.at(name));
  }
  CHECK(create_model("mit_b2", {.in_channels = 1, .num_classes = 3})->num_parameters() == 25'343'315);
}

TEST_CASE("mit_b2 and resnet34: parameter and buffer names, order and shapes equal smp's state_dict") {
  for (auto [encoder, entries] : {std::pair{"mit_b2", 393}, {"resnet34", 277}}) {
    INFO(encoder);
    auto model = create_model(encoder, {.in_channels = 3, .num_classes = 1}, Task::segmentation);
    std::vector<std::pair<std::string, std::string>> params, buffers;
    for (auto& [key, shape] : smp_keys(encoder)) (is_buffer(key) ? buffers : params).emplace_back(key, shape);
    for (auto [ours, expected] : {std::pair{model->named_parameters(), params}, {model->named_buffers(), buffers}}) {
      REQUIRE(ours.size() == expected.size());
      for (size_t i = 0; i < ours.size(); ++i) {
        CHECK(ours[i].first == expected[i].first);
        CHECK(dims(ours[i].second.shape()) == expected[i].second);
      }
    }
    CHECK(params.size() + buffers.size() == entries);
  }
}

TEST_CASE("initialisation as smp: MiT trunc_normal / fan-out normal, decoder and head torch defaults") {
  manual_seed(3);
  auto model = create_model("mit_b0", {.in_channels = 3, .num_classes = 1});
  for (auto& [name, p] : model->named_parameters()) {
    INFO(name);
    const bool encoder = name.starts_with("encoder."), large = p.numel() >= 4096;
    if (p.dim() == 1 && encoder) {
      CHECK(max_abs(add(p, name.ends_with(".weight") ? -1.0 : 0.0)) == 0);  // biases 0, LayerNorm 1/0
    } else if (p.dim() == 2 && large) {
      CHECK(rms(p) == doctest::Approx(0.02).epsilon(0.05));  // Linear: trunc_normal(std 0.02)
    } else if (p.dim() == 4 && encoder && large) {
      const bool depthwise = p.size(1) == 1;
      const double fan_out = static_cast<double>(p.size(2) * p.size(3) * (depthwise ? 1 : p.size(0)));
      CHECK(rms(p) == doctest::Approx(std::sqrt(2.0 / fan_out)).epsilon(0.05));
    } else if (p.dim() == 4 && large) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(p.size(1) * p.size(2) * p.size(3)));
      CHECK(max_abs(p) <= bound);
      CHECK(rms(p) == doctest::Approx(bound / std::sqrt(3.0)).epsilon(0.05));  // U(-bound, bound)
    }
  }
  // The head's bias is torch's default U(+-1/sqrt(256)), not zero: smp 0.6 never calls initialize().
  const Tensor head_bias = model->state_dict().at("segmentation_head.0.bias");
  CHECK(max_abs(head_bias) > 0);
  CHECK(max_abs(head_bias) <= 1.0 / 16);

  // in_channels != 3: smp re-creates the first conv with torch's default init, bias included.
  auto gray = create_model("mit_b0", {.in_channels = 1, .num_classes = 1});
  const nn::StateDict s = gray->state_dict();
  CHECK(s.at("encoder.patch_embed1.proj.weight").shape() == Shape{32, 1, 7, 7});
  CHECK(max_abs(s.at("encoder.patch_embed1.proj.weight")) <= 1.0 / 7);
  CHECK(rms(s.at("encoder.patch_embed1.proj.weight")) == doctest::Approx(1.0 / 7 / std::sqrt(3.0)).epsilon(0.1));
  CHECK(max_abs(s.at("encoder.patch_embed1.proj.bias")) > 0);
}

TEST_CASE("tiny config: float64 outputs, loss, gradients and running stats equal smp's to 1e-10") {
  TinyGolden g;
  auto model = tiny_model(g, DType::f64);
  // The reference gradients are stored as float32 (relative precision 6e-8).
  expect_parity(*model, formula_input(g.input_shape, DType::f64), g.ref, g.ref, {1e-10, 1e-6, 1e-10, 1e-6});
}

TEST_CASE("tiny config: float32 outputs within 1e-4, gradients within 1e-3 relative") {
  TinyGolden g;
  auto model = tiny_model(g, DType::f32);
  expect_parity(*model, formula_input(g.input_shape, DType::f32), g.ref, g.grad_f32, {1e-4, 1e-3, 1e-4, 1e-4});
  for (auto& [name, t] : model->named_buffers())
    if (name.ends_with("num_batches_tracked")) CHECK(t.item() == 1);
}

TEST_CASE("output stride 8 dilates stage 3 as well, its 2x2 sr conv included, as smp") {
  TinyGolden g;
  DeepLabV3PlusConfig c = tiny_config();
  std::get<MitConfig>(c.encoder).output_stride = 8;
  DeepLabV3Plus model(c);
  model.to(DType::f64);
  model.load_state_dict(g.weights);
  model.eval();
  autograd::NoGradGuard no_grad;
  const double err = test::max_abs_diff(model(formula_input({1, 32, 48, 3}, DType::f64)), g.ref.at("out_eval_os8"));
  MESSAGE("output stride 8, float64 eval: max abs err " << err);
  CHECK(err < 1e-10);
}

TEST_CASE("drop path acts in training only") {
  TinyGolden g;
  auto plain = tiny_model(g, DType::f64), dropping = tiny_model(g, DType::f64, 0.9);
  const Tensor x = formula_input(g.input_shape, DType::f64);
  autograd::NoGradGuard no_grad;
  plain->eval();
  dropping->eval();
  CHECK(test::max_abs_diff((*plain)(x), (*dropping)(x)) == 0);
  plain->train();
  dropping->train();
  CHECK(test::max_abs_diff((*plain)(x), (*dropping)(x)) > 1e-3);
}

TEST_CASE("training with batch 1 is refused with a clear message; eval with batch 1 works") {
  TinyGolden g;
  auto model = tiny_model(g, DType::f32);
  const Tensor one = formula_input({1, 64, 48, 3}, DType::f32);
  CHECK_THROWS_WITH_AS((*model)(one), doctest::Contains("training needs a batch of at least 2"), Error);
  model->eval();
  const Tensor out = (*model)(one);
  CHECK(out.shape() == Shape{1, 64, 48, 1});
  for (double v : out.to_vector()) REQUIRE(std::isfinite(v));
  CHECK_THROWS_WITH_AS((*model)(formula_input({1, 72, 48, 3}, DType::f32)),
                       doctest::Contains("must be multiples of 16; pad the images to 80x48"), Error);
}

TEST_CASE("registry builds DeepLabV3+ for mit_b0..mit_b5 with any input channels and classes") {
  CHECK(find_model("mit_b5").task == Task::segmentation);
  auto model = create_model("mit_b0", {.in_channels = 1, .num_classes = 2});
  model->eval();
  autograd::NoGradGuard no_grad;
  CHECK((*model)(Tensor::zeros({1, 32, 48, 1})).shape() == Shape{1, 32, 48, 2});
  CHECK_THROWS_WITH_AS((*model)(Tensor::zeros({1, 32, 48, 3})), doctest::Contains("[N, H, W, 1], got [1, 32, 48, 3]"), Error);
  CHECK_THROWS_WITH_AS(mit_config("mit_b7"), doctest::Contains("known: mit_b0 .. mit_b5"), Error);
}

TEST_CASE("a checkpoint we write loads back and gives the same output; smp reads it too") {
  manual_seed(17);
  auto model = create_model("mit_b0", {.in_channels = 3, .num_classes = 1});
  const Tensor x = formula_input({2, 64, 64, 3}, DType::f32);
  autograd::NoGradGuard no_grad;
  (*model)(x);  // a train-mode forward, so that the running stats are not the defaults
  model->eval();
  const Tensor out = (*model)(x);

  // Beside the build, for `deeplab_goldens.py --check-ours <build dir>` to load into smp.
  const std::string dir = SONO_BINARY_DIR;
  nn::save_safetensors(dir + "/deeplab_ours_state.safetensors", model->state_dict(), {{"arch", "mit_b0"}});
  nn::save_safetensors(dir + "/deeplab_ours_io.safetensors", {{"input", x}, {"output", out}});
  auto reloaded = create_model("mit_b0", {.in_channels = 3, .num_classes = 1});
  reloaded->load_state_dict(nn::load_safetensors(dir + "/deeplab_ours_state.safetensors").tensors);
  reloaded->eval();
  CHECK(test::max_abs_diff((*reloaded)(x), out) == 0);
}

TEST_CASE("a checkpoint of another variant or input width is refused naming the key and both shapes") {
  auto b0 = create_model("mit_b0", {.in_channels = 3, .num_classes = 1});
  auto b1 = create_model("mit_b1", {.in_channels = 3, .num_classes = 1});
  auto b0_gray = create_model("mit_b0", {.in_channels = 1, .num_classes = 1});
  CHECK_THROWS_WITH_AS(
      b1->load_state_dict(b0->state_dict()),
      doctest::Contains("'decoder.aspp.0.convs.0.0.weight' has shape [256, 256, 1, 1] but the model expects [256, 512, 1, 1]"),
      Error);
  CHECK_THROWS_WITH_AS(
      b0->load_state_dict(b0_gray->state_dict()),
      doctest::Contains("'encoder.patch_embed1.proj.weight' has shape [32, 1, 7, 7] but the model expects [32, 3, 7, 7]"),
      Error);
}

TEST_CASE("pretrained RGB MiT weights load into a 1-channel encoder as smp adapts them") {
  TinyGolden g;
  // An smp ImageNet checkpoint: encoder keys without the prefix, plus the classifier smp drops.
  nn::StateDict pretrained;
  for (auto& [k, v] : g.weights)
    if (k.starts_with("encoder.")) pretrained[k.substr(8)] = v;
  pretrained["head.weight"] = Tensor::zeros({1000, 16});
  pretrained["head.bias"] = Tensor::zeros({1000});
  DeepLabV3PlusConfig c = tiny_config();
  std::get<MitConfig>(c.encoder).in_channels = 1;
  DeepLabV3Plus model(c);
  load_pretrained(model.encoder(), pretrained, mit_pretrained_layout());
  for (auto& [name, t] : model.encoder().state_dict()) {
    INFO(name);
    const Tensor& rgb = pretrained.at(name);
    // smp's patch_first_conv for one channel: the sum over RGB.
    if (name == "patch_embed1.proj.weight") CHECK(test::max_abs_diff(t, sum(rgb, {1}, true)) < 1e-7);
    else CHECK(test::max_abs_diff(t, rgb) == 0);
  }
}

namespace {

// Full-size parity against `deeplab_goldens.py --full` goldens (outside the repo): against torch's
// float64 run where there is one (at mit_b2 size, torch's own float32 gradients are up to 1.1e-3
// off it, ours 4e-4), else against torch's float32 run.
void full_size_parity(const std::string& variant, DType dtype, Tolerance tol) {
  const std::string weights = test::ref_golden("deeplab_" + variant + "_weights.safetensors");
  std::string ref_path = test::ref_golden("deeplab_" + variant + "_f64.safetensors");
  if (dtype == DType::f32 && !fs::exists(ref_path)) ref_path = test::ref_golden("deeplab_" + variant + "_f32.safetensors");
  REQUIRE_MESSAGE(fs::exists(ref_path), "run tests/reference/deeplab_goldens.py --full to write " << ref_path);
  nn::SafetensorsFile w = nn::load_safetensors(weights);
  DeepLabV3Plus model(variant_config(variant));
  model.to(dtype);
  model.load_state_dict(w.tensors);
  const Shape shape{std::stoll(w.metadata.at("batch")), std::stoll(w.metadata.at("height")),
                    std::stoll(w.metadata.at("width")), 3};
  MESSAGE(variant << " " << shape_str(shape) << ", ours " << std::string(dtype_name(dtype)) << " against " << ref_path);
  const nn::StateDict ref = nn::load_safetensors(ref_path).tensors;
  expect_parity(model, formula_input(shape, dtype), ref, ref, tol);
}

}  // namespace

TEST_CASE("mit_b0 at 64x64, batch 2: float32 and float64 parity with smp (goldens of "
          "deeplab_goldens.py --full)" *
          doctest::skip(!test::has_ref_goldens({"deeplab_mit_b0_weights.safetensors"}))) {
  full_size_parity("mit_b0", DType::f32, {1e-4, 1e-3, 1e-4, 1e-4});
  full_size_parity("mit_b0", DType::f64, {1e-10, 1e-9, 1e-10, 1e-6});
}

TEST_CASE("mit_b2 at 256x256, batch 2: float32 parity with smp (SONO_FULL_PARITY=1 and goldens "
          "of deeplab_goldens.py --full)" *
          doctest::skip(!test::full_parity_enabled() ||
                        !test::has_ref_goldens({"deeplab_mit_b2_weights.safetensors"}))) {
  full_size_parity("mit_b2", DType::f32, {1e-4, 1e-3, 1e-4, 1e-4});
}

// ---- DeepLabV3+ on a ResNet encoder ----------------------------------------------------------

TEST_CASE("parameter counts equal smp's DeepLabV3Plus for every ResNet encoder") {
  const std::map<std::string, int64_t> smp_counts = {{"resnet18", 12'329'297},  {"resnet34", 22'437'457},
                                                     {"resnet50", 26'677'585},  {"resnet101", 45'669'713},
                                                     {"resnet152", 61'313'361}};
  std::map<std::string, int64_t> block_params;  // one non-first block of each layer of resnet50
  for (const std::string name : {"resnet18", "resnet34", "resnet50"}) {
    auto model = create_model(name, {.in_channels = 3, .num_classes = 1}, Task::segmentation);
    CHECK(model->num_parameters() == smp_counts.at(name));
    if (name == "resnet50")
      for (auto& [key, p] : model->named_parameters())
        for (const std::string layer : {"layer2", "layer3"})
          if (key.starts_with("encoder." + layer + ".1.")) block_params[layer] += p.numel();
  }
  // resnet101 and resnet152 add bottleneck blocks to layers 2 and 3 (building them costs seconds).
  CHECK(smp_counts.at("resnet50") + 17 * block_params["layer3"] == smp_counts.at("resnet101"));
  CHECK(smp_counts.at("resnet50") + 4 * block_params["layer2"] + 30 * block_params["layer3"] == smp_counts.at("resnet152"));
  CHECK(resnet_config("resnet152").layers == std::array<int64_t, 4>{3, 8, 36, 3});
  CHECK_THROWS_WITH_AS(resnet_config("resnet20"), doctest::Contains("known: resnet18, resnet34"), Error);
}

TEST_CASE("initialisation as torchvision: fan-out normal convs without bias, BatchNorm 1 / 0") {
  manual_seed(5);
  auto model = create_model("resnet18", {.in_channels = 3, .num_classes = 1}, Task::segmentation);
  int checked = 0;
  for (auto& [name, p] : model->named_parameters()) {
    if (!name.starts_with("encoder.")) continue;
    INFO(name);
    if (p.dim() == 1) {
      CHECK(max_abs(add(p, name.ends_with(".weight") ? -1.0 : 0.0)) == 0);
    } else if (p.numel() >= 4096) {
      CHECK(rms(p) == doctest::Approx(std::sqrt(2.0 / static_cast<double>(p.size(0) * p.size(2) * p.size(3)))).epsilon(0.05));
      ++checked;
    }
  }
  CHECK(checked == 20);  // conv1, 16 block convs, 3 downsample convs
  CHECK(model->state_dict().count("encoder.conv1.bias") == 0);
  // in_channels != 3: smp re-creates the first conv with torch's default init.
  auto four = create_model("resnet18", {.in_channels = 4, .num_classes = 3}, Task::segmentation);
  const Tensor w = four->state_dict().at("encoder.conv1.weight");
  CHECK(w.shape() == Shape{64, 4, 7, 7});
  CHECK(rms(w) == doctest::Approx(1.0 / 14 / std::sqrt(3.0)).epsilon(0.1));
}

namespace {

// `model` with formula weights in float64, run as the golden's run(); checks the outputs and the
// loss, and returns the model (its gradients set) for the caller's checks.
template <class Model>
std::unique_ptr<Model> expect_formula_parity(std::unique_ptr<Model> model, const nn::StateDict& ref) {
  model->to(DType::f64);
  model->load_state_dict(formula_state(*model, DType::f64));
  Run r = run(*model, formula_input({2, 64, 48, 3}, DType::f64));
  CHECK(test::max_abs_diff(r.out_train, ref.at("out_train")) < 1e-10);
  CHECK(test::max_abs_diff(r.out_eval, ref.at("out_eval")) < 1e-10);
  CHECK(std::abs(r.loss.item() - ref.at("loss").item()) < 1e-12);
  // The end of the backward chain (the reference is float32: relative precision 6e-8).
  const nn::NamedTensors params = model->named_parameters();
  const auto& [name, conv1] = params.front();
  CHECK(name == "encoder.conv1.weight");
  CHECK(worst_error({{name, conv1.grad()}}, ref, "grad.").second < 1e-6);
  return model;
}

std::unique_ptr<DeepLabV3Plus> expect_formula_parity(const std::string& encoder, const nn::StateDict& ref,
                                                     int64_t encoder_depth = 5) {
  return expect_formula_parity(std::make_unique<DeepLabV3Plus>(variant_config(encoder, encoder_depth)), ref);
}

nn::StateDict formula_golden(const std::string& tag) {
  return nn::load_safetensors(test::source_path("tests/golden/" + tag + "_formula.safetensors")).tensors;
}

// Every parameter's gradient summed over all but its first dim, and the running stats, against
// the golden's (float32; sums that train-mode BN cancels to rounding against 1e-6 of the largest).
void expect_gradient_sums_and_running_stats(nn::Module& model, const nn::StateDict& ref) {
  nn::NamedTensors sums;
  for (auto& [name, p] : model.named_parameters()) sums.emplace_back(name, gradient_sum(p.grad()));
  double largest = 0;
  for (auto& [name, t] : ref)
    if (name.starts_with("gradsum.")) largest = std::max(largest, max_abs(t));
  const auto grad = worst_error(sums, ref, "gradsum.", 1e-6 * largest);
  const auto running = worst_error(model.named_buffers(), ref, "running.");
  MESSAGE("worst gradient-sum rel err " << grad.second << " (" << grad.first << "), running stats " << running.second);
  CHECK(grad.second < 1e-6);
  CHECK(running.second < 1e-6);
}

}  // namespace

TEST_CASE("resnet18: float64 outputs, loss, gradients and running stats equal smp's (formula weights)") {
  auto model = expect_formula_parity("resnet18", formula_golden("deeplab_resnet18"));
  expect_gradient_sums_and_running_stats(*model, formula_golden("deeplab_resnet18"));
}

TEST_CASE("resnet50 (bottleneck blocks): float64 outputs, loss and first-conv gradient equal smp's") {
  expect_formula_parity("resnet50", formula_golden("deeplab_resnet50"));
}

TEST_CASE("U-Net on resnet18 at depth 4: outputs, loss, gradients and running stats equal smp's Unet") {
  const nn::SafetensorsFile golden = nn::load_safetensors(test::source_path("tests/golden/unet_resnet18_depth4_formula.safetensors"));
  const ModelOptions options{.encoder_depth = 4, .decoder_channels = {16, 8, 8, 4}};
  CHECK(golden.metadata.at("decoder_channels") == "16,8,8,4");
  auto model = expect_formula_parity(std::make_unique<Unet>(unet_config("resnet18", options)), golden.tensors);
  expect_gradient_sums_and_running_stats(*model, golden.tensors);
  // Our parameters are the ones smp runs, by name (the golden holds each one's gradient sum).
  size_t smp_gradients = 0;
  for (auto& [name, t] : golden.tensors) smp_gradients += name.starts_with("gradsum.");
  CHECK(model->named_parameters().size() == smp_gradients);
  for (auto& [name, p] : model->named_parameters()) CHECK(golden.tensors.count("gradsum." + name) == 1);
}

TEST_CASE("U-Net through the registry: smp's parameter counts, default decoder, the input's size out") {
  // smp runs 3,574,161 of its parameters at depth 4 with decoder 128,64,32,16 (layer4 is built, unused).
  auto small = create_model("unet_resnet18", {.encoder_depth = 4, .decoder_channels = {128, 64, 32, 16}});
  CHECK(small->num_parameters() == 3574161);
  CHECK(create_model("unet_resnet18", {})->num_parameters() == 14328209);  // smp's default Unet("resnet18")
  small->eval();
  CHECK((*small)(formula_input({1, 64, 48, 3}, DType::f32)).shape() == Shape{1, 64, 48, 1});
  CHECK_THROWS_WITH_AS((*small)(formula_input({1, 72, 48, 3}, DType::f32)), doctest::Contains("multiples of 16"), Error);
  CHECK_THROWS_WITH_AS(create_model("unet_resnet18", {.encoder_depth = 4, .decoder_channels = {8, 8}}),
                       doctest::Contains("2 decoder channels for an encoder of depth 4"), Error);
  CHECK(encoder_can_stop_early("unet_resnet34"));
  CHECK_FALSE(encoder_can_stop_early("mit_b0"));
}

TEST_CASE("resnet18 at smp's encoder_depth 4: no layer4, the ASPP on layer3, outputs equal smp's") {
  const nn::StateDict ref = formula_golden("deeplab_resnet18_depth4");
  auto model = expect_formula_parity("resnet18", ref, 4);
  // smp's state_dict also holds layer4, which it never runs: 3,600,977 of its parameters are used.
  CHECK(model->num_parameters() == 3600977);
  for (auto& [name, t] : model->state_dict()) CHECK_FALSE(name.starts_with("encoder.layer4."));
  CHECK(model->state_dict().at("decoder.aspp.0.convs.0.0.weight").size(1) == 256);
  // Depth 3 (ASPP on layer2, x2 before the skip join): smp runs 1,333,969 parameters and returns
  // the input's size.
  DeepLabV3Plus depth3(variant_config("resnet18", 3));
  depth3.eval();
  CHECK(depth3.num_parameters() == 1333969);
  CHECK(depth3(formula_input({1, 64, 48, 3}, DType::f32)).shape() == Shape{1, 64, 48, 1});
  CHECK_THROWS_WITH_AS(deeplabv3plus_config("mit_b0", {.encoder_depth = 4}),
                       doctest::Contains("encoder depth 4 is for ResNet encoders"), Error);
  CHECK_THROWS_WITH_AS(std::make_unique<DeepLabV3Plus>(variant_config("resnet18", 2)),
                       doctest::Contains("encoder depth must be 3, 4 or 5"), Error);
}

TEST_CASE("torchvision's ImageNet ResNet checkpoint loads through the registry, adapted to 4 channels") {
  // torchvision's keys: the encoder's without the prefix, plus the classifier smp drops.
  manual_seed(9);
  auto rgb = create_model("resnet18", {.in_channels = 3, .num_classes = 1}, Task::segmentation);
  nn::StateDict checkpoint;
  for (auto& [k, v] : rgb->state_dict())
    if (k.starts_with("encoder.")) checkpoint[k.substr(8)] = v;
  checkpoint["fc.weight"] = Tensor::zeros({1000, 512});
  checkpoint["fc.bias"] = Tensor::zeros({1000});
  const std::string path = std::string(SONO_BINARY_DIR) + "/resnet18_torchvision.safetensors";
  nn::save_safetensors(path, checkpoint);
  auto model = create_model("resnet18", {.in_channels = 4, .num_classes = 1}, Task::segmentation);
  load_backbone(*model, find_model("resnet18", Task::segmentation), path);
  const nn::StateDict loaded = model->state_dict();
  for (auto& [name, t] : checkpoint) {
    if (name.starts_with("fc.")) continue;
    INFO(name);
    const Tensor& ours = loaded.at("encoder." + name);
    // timm's adapt_input_conv / smp's patch_first_conv: channel i copies RGB channel i % 3, x 3/4.
    if (name == "conv1.weight") {
      CHECK(test::max_abs_diff(ours.slice(1, 0, 3), mul(t, 0.75)) < 1e-7);
      CHECK(test::max_abs_diff(ours.slice(1, 3, 4), mul(t.slice(1, 0, 1), 0.75)) < 1e-7);
    } else {
      CHECK(test::max_abs_diff(ours, t) == 0);
    }
  }
  // A segmenter cut at layer3 takes the same checkpoint; layer4's entries go unused, as in smp.
  auto shallow = create_model("resnet18", {.encoder_depth = 4}, Task::segmentation);
  load_backbone(*shallow, find_model("resnet18", Task::segmentation), path);
  const nn::StateDict cut = shallow->state_dict();
  CHECK(test::max_abs_diff(cut.at("encoder.layer3.1.conv2.weight"), checkpoint.at("layer3.1.conv2.weight")) == 0);
  CHECK_FALSE(cut.count("encoder.layer4.0.conv1.weight"));
  // A whole model still loads strictly: the same checkpoint without layer4 is refused.
  nn::StateDict short_checkpoint;
  for (auto& [k, v] : checkpoint)
    if (!k.starts_with("layer4.")) short_checkpoint[k] = v;
  CHECK_THROWS_WITH_AS(load_backbone(*model, find_model("resnet18", Task::segmentation), short_checkpoint),
                       doctest::Contains("layer4"), Error);
}
