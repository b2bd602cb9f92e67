// timm's ConvNeXt by numbers: names, shapes and parameter counts of every variant, forward,
// loss and gradient parity against goldens from tests/reference/convnext_goldens.py, checkpoint
// round trips and pretrained-weight adaptation.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "helpers.h"
#include "layers/init.h"
#include "layers/safetensors.h"
#include "models/convnext.h"
#include "models/registry.h"

using namespace sono;
using namespace sono::models;
namespace fs = std::filesystem;

namespace {

// The committed golden's configuration (see convnext_goldens.py).
ConvNeXtConfig tiny_config(bool conv_mlp = false) {
  return {.depths = {1, 1, 2, 1}, .dims = {8, 12, 16, 20}, .conv_mlp = conv_mlp, .in_channels = 4, .num_classes = 3};
}

ConvNeXtConfig variant_config(const std::string& variant, int64_t in_channels = 4) {
  ConvNeXtConfig c = convnext_config(variant);
  c.in_channels = in_channels;
  c.num_classes = 3;
  return c;
}

nn::StateDict with_prefix(const nn::StateDict& all, const std::string& prefix) {
  nn::StateDict out;
  for (auto& [k, v] : all)
    if (k.rfind(prefix, 0) == 0) out[k.substr(prefix.size())] = v;
  return out;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

struct Run {
  Tensor logits_train, logits_eval, loss;
};

// As run() in convnext_goldens.py: train-mode logits, cross-entropy, backward; eval logits.
Run run(ConvNeXt& model, const Tensor& input, const Tensor& labels) {
  model.zero_grad();
  model.train();
  Run r;
  r.logits_train = model(input);
  r.loss = cross_entropy(r.logits_train, labels);
  r.loss.backward();
  model.eval();
  autograd::NoGradGuard no_grad;
  r.logits_eval = model(input);
  return r;
}

// Worst over parameters of max|ours - ref| / max|ref| (normwise relative error).
std::pair<std::string, double> worst_grad_error(const ConvNeXt& model, const nn::StateDict& ref) {
  std::pair<std::string, double> worst{"", 0.0};
  for (auto& [name, p] : model.named_parameters()) {
    INFO("parameter " << name);
    REQUIRE(p.grad().defined());
    const Tensor& r = ref.at("grad." + name);
    const double err = test::max_abs_diff(p.grad(), r) / std::max(max_abs(r), 1e-30);
    if (err > worst.second) worst = {name, err};
  }
  return worst;
}

struct Parity {
  double logits, loss;
  std::pair<std::string, double> grad;
};

// Runs `model` (already holding the reference parameters) and compares with a reference run.
Parity compare(ConvNeXt& model, const Tensor& input, const Tensor& labels, const nn::StateDict& ref) {
  Run r = run(model, input, labels);
  Parity p{std::max(test::max_abs_diff(r.logits_train, ref.at("logits_train")),
                    test::max_abs_diff(r.logits_eval, ref.at("logits_eval"))),
           std::abs(r.loss.item() - ref.at("loss").item()), worst_grad_error(model, ref)};
  MESSAGE("logits max abs err " << p.logits << ", loss err " << p.loss << ", worst gradient rel err "
                                << p.grad.second << " (" << p.grad.first << ")");
  return p;
}

struct TinyGolden {
  nn::SafetensorsFile f32 = nn::load_safetensors(test::source_path("tests/golden/convnext_tiny.safetensors"));
  nn::StateDict f64 = nn::load_safetensors(test::source_path("tests/golden/convnext_tiny_f64.safetensors")).tensors;
  nn::StateDict params = with_prefix(f32.tensors, "param.");
  Tensor input = f32.tensors.at("input"), labels = f32.tensors.at("labels");
};

std::shared_ptr<ConvNeXt> tiny_model(const TinyGolden& g, DType dtype, bool conv_mlp = false) {
  auto model = std::make_shared<ConvNeXt>(tiny_config(conv_mlp));
  model->to(dtype);
  model->load_state_dict(g.params);
  return model;
}

// Lines "count <arch> <n>" and "key <arch> <name> <d0,d1,..>" written by convnext_goldens.py.
struct KeyGolden {
  std::map<std::string, int64_t> counts;
  std::map<std::string, std::vector<std::pair<std::string, Shape>>> keys;
  KeyGolden() {
    std::ifstream in(test::source_path("tests/golden/convnext_keys.txt"));
    REQUIRE(in);
    std::string kind, arch;
    while (in >> kind >> arch) {
      if (kind == "count") {
        in >> counts[arch];
        continue;
      }
      std::string name, dims;
      in >> name >> dims;
      Shape shape;
      std::stringstream ss(dims);
      for (std::string d; std::getline(ss, d, ',');) shape.push_back(std::stoll(d));
      keys[arch].emplace_back(name, shape);
    }
  }
};

std::string temp_path(const std::string& name) { return (fs::temp_directory_path() / ("sono_convnext_" + name)).string(); }

// Building a model costs seconds per 100M parameters (initialisation): convnext_small and
// convnext_large (base's depths with tiny's / wider dims) are built only in slow runs
// (SONO_FULL_PARITY=1), as is the full-size convnext_base parity.
bool slow_tests_enabled() { return test::full_parity_enabled(); }

}  // namespace

TEST_CASE("every variant's parameter count, and atto's and base's names, order and shapes, equal timm's") {
  KeyGolden golden;
  REQUIRE(golden.counts.size() == 8);
  CHECK(golden.counts.at("convnext_base") == 87'571'587);
  for (const ModelEntry& e : convnext_variants()) {
    INFO(e.name);
    CHECK(e.task == Task::classification);
    if ((e.name == "convnext_small" || e.name == "convnext_large") && !slow_tests_enabled()) continue;
    auto model = e.build({.in_channels = 4, .num_classes = 3});
    CHECK(model->num_parameters() == golden.counts.at(e.name));
    CHECK(model->named_buffers().empty());
    if (!golden.keys.count(e.name)) continue;
    const auto& expected = golden.keys.at(e.name);
    const nn::NamedTensors ours = model->named_parameters();
    REQUIRE(ours.size() == expected.size());
    for (size_t i = 0; i < ours.size(); ++i) {
      CHECK(ours[i].first == expected[i].first);
      CHECK(shape_str(ours[i].second.shape()) == shape_str(expected[i].second));
    }
  }
}

TEST_CASE("initialisation follows timm: trunc_normal(0.02) weights, zero biases, layer scale 1e-6") {
  ConvNeXtConfig c = variant_config("atto");
  c.head_init_scale = 0.5;
  ConvNeXt model(c);
  for (auto& [name, p] : model.named_parameters()) {
    INFO(name);
    auto v = p.to_vector();
    if (p.dim() >= 2 && p.numel() >= 10000) {
      double ss = 0;
      for (double x : v) ss += x * x;
      CHECK(std::sqrt(ss / v.size()) == doctest::Approx(0.02).epsilon(0.05));
    } else if (name.ends_with("gamma")) {
      CHECK(max_abs(add(p, -1e-6)) < 1e-12);
    } else if (name.ends_with(".bias")) {
      CHECK(max_abs(p) == 0);
    } else if (p.dim() == 1) {
      CHECK(max_abs(add(p, -1.0)) == 0);  // LayerNorm weight
    }
  }
  const Tensor head = model.state_dict().at("head.fc.weight");
  double ss = 0;
  for (double x : head.to_vector()) ss += x * x;
  CHECK(std::sqrt(ss / head.numel()) == doctest::Approx(0.01).epsilon(0.15));
}

TEST_CASE("tiny config: float64 logits, loss and every gradient equal timm's to 1e-10") {
  TinyGolden g;
  auto model = tiny_model(g, DType::f64);
  Parity p = compare(*model, g.input.to(DType::f64), g.labels, g.f64);
  CHECK(p.logits < 1e-10);
  CHECK(p.loss < 1e-10);
  CHECK(p.grad.second < 1e-10);
}

TEST_CASE("tiny config: float32 logits within 1e-4, gradients within 1e-3 relative") {
  TinyGolden g;
  auto model = tiny_model(g, DType::f32);
  Parity p = compare(*model, g.input, g.labels, g.f64);
  CHECK(p.logits < 1e-4);
  CHECK(p.loss < 1e-4);
  CHECK(p.grad.second < 1e-3);
  model->eval();
  autograd::NoGradGuard no_grad;
  const double vs_torch_f32 = test::max_abs_diff((*model)(g.input), g.f32.tensors.at("f32.logits_eval"));
  MESSAGE("float32 logits against torch float32: max abs err " << vs_torch_f32);
  CHECK(vs_torch_f32 < 1e-4);
}

TEST_CASE("conv_mlp (atto..nano) runs the same maths with [out, in, 1, 1] MLP weights") {
  TinyGolden g;
  auto model = std::make_shared<ConvNeXt>(tiny_config(true));
  model->to(DType::f64);
  nn::StateDict reshaped = g.params;
  for (auto& [k, v] : reshaped)
    if (k.find(".mlp.fc") != std::string::npos && v.dim() == 2) v = v.reshape({v.size(0), v.size(1), 1, 1});
  model->load_state_dict(reshaped);
  model->eval();
  autograd::NoGradGuard no_grad;
  CHECK(test::max_abs_diff((*model)(g.input.to(DType::f64)), g.f64.at("conv_mlp.logits_eval")) < 1e-10);
}

TEST_CASE("drop path acts in training only, rising from 0 at the first block") {
  TinyGolden g;
  ConvNeXtConfig c = tiny_config();
  c.drop_path_rate = 0.9;
  ConvNeXt model(c);
  model.to(DType::f64);
  model.load_state_dict(g.params);
  autograd::NoGradGuard no_grad;
  const Tensor x = g.input.to(DType::f64);
  model.eval();
  CHECK(test::max_abs_diff(model(x), g.f64.at("logits_eval")) < 1e-10);
  model.train();
  CHECK(test::max_abs_diff(model(x), g.f64.at("logits_eval")) > 1e-3);
}

TEST_CASE("without a classifier the model returns the normalised pooled features") {
  ConvNeXtConfig c = tiny_config();
  c.num_classes = 0;
  ConvNeXt model(c);
  CHECK(model.state_dict().count("head.fc.weight") == 0);
  CHECK(model(Tensor::zeros({2, 33, 65, 4})).shape() == Shape{2, 20});
  CHECK_THROWS_WITH_AS(model(Tensor::zeros({2, 32, 32, 3})), doctest::Contains("[N, H, W, 4], got [2, 32, 32, 3]"), Error);
}

TEST_CASE("registry builds every ConvNeXt variant by name") {
  const ModelEntry& e = find_model("convnext_base");
  CHECK(e.task == Task::classification);
  auto model = std::dynamic_pointer_cast<ConvNeXt>(create_model("convnext_atto", {.in_channels = 1, .num_classes = 7}));
  REQUIRE(model);
  CHECK(model->config().conv_mlp);
  CHECK((*model)(Tensor::zeros({1, 32, 32, 1})).shape() == Shape{1, 7});
  CHECK_THROWS_WITH_AS(convnext_config("huge"), doctest::Contains("known: atto"), Error);
}

TEST_CASE("a checkpoint we write loads back and gives the same output; timm reads it too") {
  manual_seed(11);
  ConvNeXt model(variant_config("atto"));
  // Raise the layer scale from 1e-6 so that every block shows in the output.
  for (auto& [name, p] : model.named_parameters())
    if (name.ends_with("gamma")) nn::init::assign(p, Tensor::full(p.shape(), 0.5));
  model.eval();
  autograd::NoGradGuard no_grad;
  Generator gen(5);
  const Tensor x = randn({2, 64, 64, 4}, gen);
  const Tensor logits = model(x);

  // Beside the build, for `convnext_goldens.py --roundtrip <state> <io>` to load into timm.
  const std::string state = std::string(SONO_BINARY_DIR) + "/convnext_roundtrip_state.safetensors";
  nn::save_safetensors(state, model.state_dict());
  nn::save_safetensors(std::string(SONO_BINARY_DIR) + "/convnext_roundtrip_io.safetensors",
                       {{"input", x}, {"logits", logits}},
                       {{"arch", "convnext_atto"}, {"in_chans", "4"}, {"num_classes", "3"}});
  ConvNeXt reloaded(variant_config("atto"));
  reloaded.load_state_dict(nn::load_safetensors(state).tensors);
  reloaded.eval();
  CHECK(test::max_abs_diff(reloaded(x), logits) == 0);
}

TEST_CASE("a checkpoint of another architecture or input width is refused naming key and shapes") {
  ConvNeXt atto(variant_config("atto"));
  ConvNeXt femto(variant_config("femto"));
  ConvNeXt atto_rgb(variant_config("atto", 3));
  CHECK_THROWS_WITH_AS(femto.load_state_dict(atto.state_dict()),
                       doctest::Contains("'head.fc.weight' has shape [3, 320] but the model expects [3, 384]"), Error);
  CHECK_THROWS_WITH_AS(atto.load_state_dict(atto_rgb.state_dict()),
                       doctest::Contains("'stem.0.weight' has shape [40, 3, 4, 4] but the model expects [40, 4, 4, 4]"), Error);

  // The pretrained loader adapts the stem and the head, nothing else.
  TinyGolden g;
  ConvNeXt conv_mlp(tiny_config(true));
  CHECK_THROWS_WITH_AS(
      load_pretrained(conv_mlp, g.params, convnext_pretrained_layout()),
      doctest::Contains("'stages.0.blocks.0.mlp.fc1.weight' has shape [32, 8] but the model expects [32, 8, 1, 1]"), Error);
  nn::StateDict incomplete = g.params;
  incomplete.erase("stages.2.blocks.1.gamma");
  const std::string path = temp_path("incomplete.safetensors");
  nn::save_safetensors(path, incomplete);
  ConvNeXt tiny(tiny_config());
  CHECK_THROWS_WITH_AS(load_pretrained(tiny, path, convnext_pretrained_layout()),
                       doctest::Contains((path + ": pretrained weights do not fit the model: state dict is missing key "
                                          "'stages.2.blocks.1.gamma' (expected shape [16])").c_str()),
                       Error);
  fs::remove(path);
}

TEST_CASE("adapt_input_conv equals timm's for 1, 2, 4 and 5 input channels") {
  TinyGolden g;
  const Tensor rgb = g.params.at("stem.0.weight").slice(1, 0, 3);
  for (int64_t c : {1, 2, 4, 5}) {
    INFO(c << " channels");
    const Tensor& expected = g.f64.at("adapt_input_conv.in" + std::to_string(c));
    CHECK(test::max_abs_diff(adapt_input_conv(rgb, c), expected) < 1e-7);
  }
  CHECK(test::max_abs_diff(adapt_input_conv(rgb, 3), rgb) == 0);
}

TEST_CASE("pretrained RGB weights load into a 4-channel model with a fresh 3-class head") {
  TinyGolden g;
  // An "ImageNet" checkpoint: the golden's weights with an RGB stem and a 5-class head.
  nn::StateDict pretrained = g.params;
  pretrained["stem.0.weight"] = g.params.at("stem.0.weight").slice(1, 0, 3).contiguous();
  pretrained["head.fc.weight"] = Tensor::zeros({5, 20});
  pretrained["head.fc.bias"] = Tensor::zeros({5});
  const std::string path = temp_path("pretrained.safetensors");
  nn::save_safetensors(path, pretrained);

  ConvNeXt model(tiny_config());
  const nn::StateDict fresh = model.state_dict();
  const Tensor fresh_head = fresh.at("head.fc.weight").clone();
  load_pretrained(model, path, convnext_pretrained_layout());
  fs::remove(path);
  for (auto& [name, t] : model.state_dict()) {
    INFO(name);
    if (name == "stem.0.weight") CHECK(test::max_abs_diff(t, g.f64.at("adapt_input_conv.in4")) < 1e-7);
    else if (name == "head.fc.weight") CHECK(test::max_abs_diff(t, fresh_head) == 0);
    else if (name != "head.fc.bias") CHECK(test::max_abs_diff(t, g.params.at(name)) == 0);
  }
}

TEST_CASE("timm's own pretrained loading path (convnext_atto, RGB 1000 classes -> 4 channels, 3 classes; "
          "goldens of convnext_goldens.py --full)" *
          doctest::skip(!test::has_ref_goldens({"convnext_atto_in3_pretrained.safetensors",
                                                "convnext_atto_in4_from_pretrained.safetensors"}))) {
  const std::string src = test::ref_golden("convnext_atto_in3_pretrained.safetensors");
  const std::string timm_loaded = test::ref_golden("convnext_atto_in4_from_pretrained.safetensors");
  ConvNeXt model(variant_config("atto"));
  load_pretrained(model, src, convnext_pretrained_layout());
  const nn::StateDict expected = nn::load_safetensors(timm_loaded).tensors;
  for (auto& [name, t] : model.state_dict())
    if (name.rfind("head.fc.", 0) != 0) {
      INFO(name);
      CHECK(test::max_abs_diff(t, expected.at(name)) < 1e-7);
    }
}

namespace {

// Full-size parity against `convnext_goldens.py --full` goldens (outside the repo).
void full_size_parity(const std::string& variant, DType dtype, double logits_tol, double grad_tol) {
  const std::string case_path = test::ref_golden("convnext_" + variant + "_case.safetensors");
  const nn::StateDict c = nn::load_safetensors(case_path).tensors;
  ConvNeXt model(variant_config(variant));
  model.to(dtype);
  model.load_state_dict(with_prefix(c, "param."));
  for (const std::string ref_dtype : {"f32", "f64"}) {
    const std::string ref_path = test::ref_golden("convnext_" + variant + "_" + ref_dtype + ".safetensors");
    if (!fs::exists(ref_path)) continue;
    if (dtype == DType::f64 && ref_dtype == "f32") continue;
    MESSAGE(variant << " ours " << std::string(dtype_name(dtype)) << " against torch " << ref_dtype << ":");
    Parity p = compare(model, c.at("input").to(dtype), c.at("labels"), nn::load_safetensors(ref_path).tensors);
    CHECK(p.logits < logits_tol);
    CHECK(p.loss < logits_tol);
    CHECK(p.grad.second < grad_tol);
  }
}

}  // namespace

TEST_CASE("convnext_atto at 64x64, batch 2: float32 and float64 parity with timm (goldens of "
          "convnext_goldens.py --full)" *
          doctest::skip(!test::has_ref_goldens({"convnext_atto_case.safetensors"}))) {
  full_size_parity("atto", DType::f32, 1e-4, 1e-3);
  full_size_parity("atto", DType::f64, 1e-10, 1e-10);
}

TEST_CASE("convnext_base at 224x224, batch 1: float32 parity with timm (SONO_FULL_PARITY=1 and "
          "goldens of convnext_goldens.py --full)" *
          doctest::skip(!slow_tests_enabled() ||
                        !test::has_ref_goldens({"convnext_base_case.safetensors"}))) {
  full_size_parity("base", DType::f32, 1e-4, 1e-3);
}
