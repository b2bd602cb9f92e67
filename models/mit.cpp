#include "models/mit.h"

#include <cmath>

#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/init.h"
#include "layers/linear.h"
#include "layers/norm.h"

namespace sono::models {

namespace {

using nn::Conv2d;
using nn::LayerNorm;
using nn::Linear;

// smp's MiT normalises the blocks and stage outputs with eps 1e-6, but builds the patch-embed
// and attention-reduction LayerNorms with torch's default 1e-5.
constexpr double kBlockEps = 1e-6, kDefaultEps = 1e-5;

// MiT's _init_weights: Linear trunc_normal(std 0.02) weights and zero bias.
std::shared_ptr<Linear> make_linear(int64_t in, int64_t out) {
  auto fc = std::make_shared<Linear>(in, out);
  nn::init::assign(fc->weight, trunc_normal({out, in}, 0.02, -2.0, 2.0));
  nn::init::assign(fc->bias, Tensor::zeros({out}));
  return fc;
}

// MiT's _init_weights for convs: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups; zero bias.
std::shared_ptr<Conv2d> make_conv(int64_t in, int64_t out, int64_t k, Conv2dOptions opt) {
  auto conv = std::make_shared<Conv2d>(in, out, k, opt);
  nn::init::fan_out_normal_(conv->weight, opt.groups);
  nn::init::assign(conv->bias, Tensor::zeros({out}));
  return conv;
}

// Conv (stride 4 for stage 1, else 2) + LayerNorm over channels.
class OverlapPatchEmbed : public nn::UnaryModule {
 public:
  OverlapPatchEmbed(int64_t in, int64_t dim, int64_t kernel, int64_t stride, int64_t dilation,
                    bool first) {
    const Conv2dOptions opt = in_stage(kernel, {stride, kernel / 2}, dilation);
    // smp re-creates the first conv with torch's default init when in_channels != 3.
    proj_ = register_module("proj", first && in != 3 ? std::make_shared<Conv2d>(in, dim, kernel, opt)
                                                     : make_conv(in, dim, kernel, opt));
    norm_ = register_module("norm", std::make_shared<LayerNorm>(dim, kDefaultEps));
  }
  Tensor forward(const Tensor& x) override { return norm_->forward(proj_->forward(x)); }

 private:
  std::shared_ptr<Conv2d> proj_;
  std::shared_ptr<LayerNorm> norm_;
};

// Multi-head attention whose keys and values come from a spatially reduced copy of the map.
class EfficientAttention : public nn::UnaryModule {
 public:
  EfficientAttention(int64_t dim, int64_t heads, int64_t sr, int64_t dilation) : heads_(heads) {
    SONO_CHECK(dim % heads == 0, "MiT: dim ", dim, " is not divisible by ", heads, " heads");
    q_ = register_module("q", make_linear(dim, dim));
    kv_ = register_module("kv", make_linear(dim, 2 * dim));
    proj_ = register_module("proj", make_linear(dim, dim));
    if (sr > 1) {
      sr_ = register_module("sr", make_conv(dim, dim, sr, in_stage(sr, {sr, 0}, dilation)));
      norm_ = register_module("norm", std::make_shared<LayerNorm>(dim, kDefaultEps));
    }
  }

  // x [B, H, W, C] -> [B, H, W, C]
  Tensor forward(const Tensor& x) override {
    const int64_t b = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3), d = c / heads_;
    Tensor q = q_->forward(x).reshape({b, h * w, heads_, d}).permute({0, 2, 1, 3});
    Tensor source = sr_ ? norm_->forward(sr_->forward(x)) : x;
    // [B, M, 2, heads, d] -> [2, B, heads, M, d]: keys first, values second, as torch's kv Linear.
    Tensor kv = kv_->forward(source).reshape({b, -1, 2, heads_, d}).permute({2, 0, 3, 1, 4});
    Tensor k = kv.slice(0, 0, 1).squeeze(0), v = kv.slice(0, 1, 2).squeeze(0);
    Tensor out = scaled_dot_product_attention(q, k, v);  // [B, heads, HW, d]
    return proj_->forward(out.permute({0, 2, 1, 3}).reshape({b, h, w, c}));
  }

 private:
  int64_t heads_;
  std::shared_ptr<Linear> q_, kv_, proj_;
  std::shared_ptr<Conv2d> sr_;
  std::shared_ptr<LayerNorm> norm_;
};

// smp's DWConv wrapper, kept for its parameter names (mlp.dwconv.dwconv.*).
class DepthwiseConv : public nn::UnaryModule {
 public:
  DepthwiseConv(int64_t dim, int64_t dilation) {
    conv_ = register_module("dwconv", make_conv(dim, dim, 3, in_stage(3, {1, 1, 1, dim}, dilation)));
  }
  Tensor forward(const Tensor& x) override { return conv_->forward(x); }
  // GELU(dwconv(x)), the conv's bias added inside the GELU kernel: one pass over the hidden map
  // instead of two.
  Tensor forward_gelu(const Tensor& x) {
    return bias_gelu(conv2d(x, conv_->weight, Tensor(), conv_->options), conv_->bias);
  }

 private:
  std::shared_ptr<Conv2d> conv_;
};

// Mix-FFN: fc1 -> 3x3 depthwise conv -> GELU -> fc2, on the NHWC map.
class MixFfn : public nn::UnaryModule {
 public:
  MixFfn(int64_t dim, int64_t hidden, int64_t dilation) {
    fc1_ = register_module("fc1", make_linear(dim, hidden));
    dwconv_ = register_module("dwconv", std::make_shared<DepthwiseConv>(hidden, dilation));
    fc2_ = register_module("fc2", make_linear(hidden, dim));
  }
  Tensor forward(const Tensor& x) override { return fc2_->forward(dwconv_->forward_gelu(fc1_->forward(x))); }

 private:
  std::shared_ptr<Linear> fc1_, fc2_;
  std::shared_ptr<DepthwiseConv> dwconv_;
};

// Pre-norm transformer block with stochastic depth on both residual branches.
class Block : public nn::UnaryModule {
 public:
  Block(int64_t dim, int64_t heads, int64_t mlp_ratio, int64_t sr, int64_t dilation, double drop_path) {
    norm1_ = register_module("norm1", std::make_shared<LayerNorm>(dim, kBlockEps));
    attn_ = register_module("attn", std::make_shared<EfficientAttention>(dim, heads, sr, dilation));
    drop_path_ = register_module("drop_path", std::make_shared<nn::DropPath>(drop_path));
    norm2_ = register_module("norm2", std::make_shared<LayerNorm>(dim, kBlockEps));
    mlp_ = register_module("mlp", std::make_shared<MixFfn>(dim, dim * mlp_ratio, dilation));
  }
  Tensor forward(const Tensor& x) override {
    Tensor y = add(x, drop_path_->forward(attn_->forward(norm1_->forward(x))));
    return add(y, drop_path_->forward(mlp_->forward(norm2_->forward(y))));
  }

 private:
  std::shared_ptr<LayerNorm> norm1_, norm2_;
  std::shared_ptr<EfficientAttention> attn_;
  std::shared_ptr<nn::DropPath> drop_path_;
  std::shared_ptr<MixFfn> mlp_;
};

// torch.linspace(0, rate, n): the stochastic-depth rate of each block, rising over the network.
std::vector<double> drop_path_rates(double rate, int64_t n) {
  std::vector<double> rates(n, 0.0);
  for (int64_t i = 1; i < n; ++i) rates[i] = rate * static_cast<double>(i) / static_cast<double>(n - 1);
  return rates;
}

}  // namespace

MitConfig mit_config(const std::string& variant) {
  MitConfig c;
  if (variant == "mit_b0") {
    c.dims = {32, 64, 160, 256};
    c.depths = {2, 2, 2, 2};
  } else if (variant == "mit_b1") {
    c.depths = {2, 2, 2, 2};
  } else if (variant == "mit_b2") {
    c.depths = {3, 4, 6, 3};
  } else if (variant == "mit_b3") {
    c.depths = {3, 4, 18, 3};
  } else if (variant == "mit_b4") {
    c.depths = {3, 8, 27, 3};
  } else if (variant == "mit_b5") {
    c.depths = {3, 6, 40, 3};
  } else {
    fail("unknown MiT variant '", variant, "' (known: mit_b0 .. mit_b5)");
  }
  return c;
}

MixVisionTransformer::MixVisionTransformer(const MitConfig& config) : config_(config) {
  const MitConfig& c = config_;
  SONO_CHECK(c.output_stride == 32 || c.output_stride == 16 || c.output_stride == 8,
             "MiT: output stride must be 32, 16 or 8, got ", c.output_stride);
  std::array<int64_t, 4> dilation;
  for (int s = 0; s < 4; ++s) dilation[s] = stage_dilation(s, c.output_stride);

  // Registered in torch's order: the four patch embeds, then each stage's blocks and norm.
  for (int s = 0; s < 4; ++s) {
    const int64_t in = s == 0 ? c.in_channels : c.dims[s - 1];
    const int64_t kernel = s == 0 ? 7 : 3, stride = s == 0 ? 4 : 2;
    patch_embeds_[s] = register_module("patch_embed" + std::to_string(s + 1),
                                       std::make_shared<OverlapPatchEmbed>(in, c.dims[s], kernel, stride, dilation[s], s == 0));
  }
  const std::vector<double> rates = drop_path_rates(c.drop_path_rate, c.depths[0] + c.depths[1] + c.depths[2] + c.depths[3]);
  size_t block_index = 0;
  for (int s = 0; s < 4; ++s) {
    blocks_[s] = register_module("block" + std::to_string(s + 1), std::make_shared<nn::Sequential>());
    for (int64_t i = 0; i < c.depths[s]; ++i)
      blocks_[s]->append(std::make_shared<Block>(c.dims[s], c.heads[s], c.mlp_ratio, c.sr_ratios[s], dilation[s],
                                                 rates[block_index++]));
    norms_[s] = register_module("norm" + std::to_string(s + 1), std::make_shared<LayerNorm>(c.dims[s], kBlockEps));
  }
}

std::vector<Tensor> MixVisionTransformer::forward(const Tensor& x) {
  SONO_CHECK(x.dim() == 4 && x.size(3) == config_.in_channels, "MiT: expected input [N, H, W, ",
             config_.in_channels, "], got ", shape_str(x.shape()));
  std::vector<Tensor> features;
  Tensor y = x;
  for (int s = 0; s < 4; ++s) {
    y = norms_[s]->forward(blocks_[s]->forward(patch_embeds_[s]->forward(y)));
    features.push_back(y);
  }
  return features;
}

}  // namespace sono::models
