#include "models/convnext.h"

#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/init.h"
#include "layers/linear.h"
#include "layers/norm.h"
#include "models/registry.h"
#include "tensor/ops.h"

namespace sono::models {

namespace {

constexpr double kNormEps = 1e-6;  // every LayerNorm in timm's ConvNeXt
constexpr int64_t kMlpRatio = 4;
constexpr int64_t kKernelSize = 7;

// timm's Mlp layers: a Linear, or with conv_mlp a 1x1 convolution on the NHWC map, which is the
// same product with the weight stored [out, in, 1, 1]. The Linear is initialised as
// torch.nn.Linear (the random draws keep every later parameter's init where it was), the conv
// with zeros; ConvNeXt re-initialises both.
class Pointwise : public nn::UnaryModule {
 public:
  Pointwise(int64_t in, int64_t out, bool conv) {
    weight = register_parameter("weight", conv ? Tensor::zeros({out, in, 1, 1})
                                               : nn::init::default_for_fan_in({out, in}, in));
    bias = register_parameter("bias", conv ? Tensor::zeros({out}) : nn::init::default_for_fan_in({out}, in));
  }
  Tensor forward(const Tensor& x) override { return linear(x, matrix(), bias); }
  // gelu(forward(x)): one kernel where no gradient is recorded.
  Tensor forward_gelu(const Tensor& x) { return linear_gelu(x, matrix(), bias); }
  Tensor weight, bias;

 private:
  Tensor matrix() const { return weight.reshape({weight.size(0), weight.size(1)}); }
};

// timm's Mlp: fc1 -> GELU -> fc2.
class Mlp : public nn::UnaryModule {
 public:
  Mlp(int64_t dim, int64_t hidden, bool conv) {
    fc1_ = register_module("fc1", std::make_shared<Pointwise>(dim, hidden, conv));
    fc2_ = register_module("fc2", std::make_shared<Pointwise>(hidden, dim, conv));
  }
  Tensor forward(const Tensor& x) override { return fc2_->forward(fc1_->forward_gelu(x)); }

 private:
  std::shared_ptr<Pointwise> fc1_, fc2_;
};

// x + drop_path(gamma * mlp(norm(conv_dw(x)))).
class Block : public nn::UnaryModule {
 public:
  Block(int64_t dim, bool conv_mlp, double ls_init_value, double drop_path) {
    gamma_ = register_parameter("gamma", Tensor::full({dim}, ls_init_value));
    conv_dw_ = register_module("conv_dw", std::make_shared<nn::Conv2d>(
        dim, dim, kKernelSize, Conv2dOptions{.padding = kKernelSize / 2, .groups = dim}));
    norm_ = register_module("norm", std::make_shared<nn::LayerNorm>(dim, kNormEps));
    mlp_ = register_module("mlp", std::make_shared<Mlp>(dim, kMlpRatio * dim, conv_mlp));
    drop_path_ = register_module("drop_path", std::make_shared<nn::DropPath>(drop_path));
  }
  Tensor forward(const Tensor& x) override {
    Tensor y = mlp_->forward(norm_->forward(conv_dw_->forward(x)));
    return add(drop_path_->forward(mul(y, gamma_)), x);
  }

 private:
  Tensor gamma_;
  std::shared_ptr<nn::Conv2d> conv_dw_;
  std::shared_ptr<nn::LayerNorm> norm_;
  std::shared_ptr<Mlp> mlp_;
  std::shared_ptr<nn::DropPath> drop_path_;
};

// Stages 1-3 open with LayerNorm + 2x2 stride-2 conv ("downsample"); stage 0 has none.
class Stage : public nn::UnaryModule {
 public:
  Stage(int64_t in, int64_t out, const std::vector<double>& drop_paths, const ConvNeXtConfig& c) {
    if (in != out) {
      downsample_ = register_module("downsample", std::make_shared<nn::Sequential>());
      downsample_->append(std::make_shared<nn::LayerNorm>(in, kNormEps));
      downsample_->append(std::make_shared<nn::Conv2d>(in, out, 2, Conv2dOptions{.stride = 2}));
    }
    blocks_ = register_module("blocks", std::make_shared<nn::Sequential>());
    for (double p : drop_paths) blocks_->append(std::make_shared<Block>(out, c.conv_mlp, c.ls_init_value, p));
  }
  Tensor forward(const Tensor& x) override {
    return blocks_->forward(downsample_ ? downsample_->forward(x) : x);
  }

 private:
  std::shared_ptr<nn::Sequential> downsample_, blocks_;
};

// Global average pool -> LayerNorm -> dropout -> fc, as timm's NormMlpClassifierHead.
class Head : public nn::UnaryModule {
 public:
  Head(int64_t in, int64_t num_classes, double drop_rate) {
    norm_ = register_module("norm", std::make_shared<nn::LayerNorm>(in, kNormEps));
    drop_ = register_module("drop", std::make_shared<nn::Dropout>(drop_rate));
    if (num_classes > 0) fc_ = register_module("fc", std::make_shared<nn::Linear>(in, num_classes));
  }
  Tensor forward(const Tensor& x) override {
    Tensor pooled = global_avg_pool(x).reshape({x.size(0), x.size(3)});
    Tensor features = drop_->forward(norm_->forward(pooled));
    return fc_ ? fc_->forward(features) : features;
  }

 private:
  std::shared_ptr<nn::LayerNorm> norm_;
  std::shared_ptr<nn::Dropout> drop_;
  std::shared_ptr<nn::Linear> fc_;
};

// Stochastic depth rises linearly from 0 (first block) to `rate` (last block), as timm.
std::vector<std::vector<double>> drop_path_rates(double rate, const std::array<int64_t, 4>& depths) {
  int64_t total = 0;
  for (int64_t d : depths) total += d;
  std::vector<std::vector<double>> rates(depths.size());
  int64_t index = 0;
  for (size_t s = 0; s < depths.size(); ++s)
    for (int64_t b = 0; b < depths[s]; ++b, ++index)
      rates[s].push_back(total > 1 ? rate * static_cast<double>(index) / static_cast<double>(total - 1) : 0.0);
  return rates;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

ConvNeXtConfig convnext_config(const std::string& variant) {
  struct Variant {
    const char* name;
    std::array<int64_t, 4> depths, dims;
    bool conv_mlp;
  };
  static const Variant variants[] = {
      {"atto", {2, 2, 6, 2}, {40, 80, 160, 320}, true},
      {"femto", {2, 2, 6, 2}, {48, 96, 192, 384}, true},
      {"pico", {2, 2, 6, 2}, {64, 128, 256, 512}, true},
      {"nano", {2, 2, 8, 2}, {80, 160, 320, 640}, true},
      {"tiny", {3, 3, 9, 3}, {96, 192, 384, 768}, false},
      {"small", {3, 3, 27, 3}, {96, 192, 384, 768}, false},
      {"base", {3, 3, 27, 3}, {128, 256, 512, 1024}, false},
      {"large", {3, 3, 27, 3}, {192, 384, 768, 1536}, false},
  };
  for (const Variant& v : variants)
    if (variant == v.name) return ConvNeXtConfig{.depths = v.depths, .dims = v.dims, .conv_mlp = v.conv_mlp};
  fail("unknown ConvNeXt variant '", variant, "' (known: atto, femto, pico, nano, tiny, small, base, large)");
}

ConvNeXt::ConvNeXt(const ConvNeXtConfig& config) : config_(config) {
  const auto& dims = config.dims;
  stem_ = register_module("stem", std::make_shared<nn::Sequential>());
  stem_->append(std::make_shared<nn::Conv2d>(config.in_channels, dims[0], 4, Conv2dOptions{.stride = 4}));
  stem_->append(std::make_shared<nn::LayerNorm>(dims[0], kNormEps));

  stages_ = register_module("stages", std::make_shared<nn::Sequential>());
  const auto rates = drop_path_rates(config.drop_path_rate, config.depths);
  for (size_t s = 0; s < dims.size(); ++s)
    stages_->append(std::make_shared<Stage>(s == 0 ? dims[0] : dims[s - 1], dims[s], rates[s], config));

  head_ = register_module("head", std::make_shared<Head>(dims[3], config.num_classes, config.drop_rate));
  init_weights();
}

// timm's _init_weights: conv and linear weights ~ trunc_normal(std 0.02, cut at +-2), their
// biases zero (LayerNorm keeps ones/zeros, gamma keeps ls_init_value), and the classifier
// scaled by head_init_scale.
void ConvNeXt::init_weights() {
  for (auto& [name, p] : named_parameters()) {
    if (p.dim() >= 2) nn::init::assign(p, trunc_normal(p.shape(), 0.02, -2.0, 2.0));
    else if (ends_with(name, ".bias")) nn::init::assign(p, Tensor::zeros(p.shape()));
    if (name.rfind("head.fc.", 0) == 0) nn::init::assign(p, mul(p.detach(), config_.head_init_scale));
  }
}

Tensor ConvNeXt::forward_features(const Tensor& x) {
  SONO_CHECK(x.dim() == 4 && x.size(3) == config_.in_channels, "ConvNeXt expects NHWC input [N, H, W, ",
             config_.in_channels, "], got ", shape_str(x.shape()));
  return stages_->forward(stem_->forward(x));
}

Tensor ConvNeXt::forward_head(const Tensor& features) { return head_->forward(features); }

std::vector<ModelEntry> convnext_variants() {
  std::vector<ModelEntry> entries;
  for (const char* variant : {"atto", "femto", "pico", "nano", "tiny", "small", "base", "large"}) {
    ConvNeXtConfig base = convnext_config(variant);
    entries.push_back({std::string("convnext_") + variant, Task::classification,
                       [base](const ModelOptions& o) -> std::shared_ptr<nn::UnaryModule> {
                         ConvNeXtConfig c = base;
                         c.in_channels = o.in_channels;
                         c.num_classes = o.num_classes;
                         c.drop_path_rate = o.drop_path_rate;
                         return std::make_shared<ConvNeXt>(c);
                       },
                       {"", convnext_pretrained_layout()}});
  }
  return entries;
}

}  // namespace sono::models
