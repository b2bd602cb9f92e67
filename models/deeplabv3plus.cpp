#include "models/deeplabv3plus.h"

#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/norm.h"

namespace sono::models {

using nn::Sequential;

namespace {

// smp 0.6's DeepLabV3Plus never calls initialize(): the decoder and head keep torch's default
// init (U(+-1/sqrt(fan_in)) for conv weights and biases, BN 1/0), which nn::Conv2d and
// nn::BatchNorm2d already give.
std::shared_ptr<nn::Conv2d> conv(int64_t in, int64_t out, int64_t k, Conv2dOptions opt = {}, bool bias = false) {
  return std::make_shared<nn::Conv2d>(in, out, k, opt, bias);
}

// 3x3 depthwise (dilated) conv then 1x1 pointwise, both without bias.
std::shared_ptr<Sequential> separable_conv(int64_t in, int64_t out, int64_t dilation) {
  auto s = std::make_shared<Sequential>();
  s->append(conv(in, in, 3, {1, dilation, dilation, in}));
  s->append(conv(in, out, 1));
  return s;
}

// module -> BatchNorm -> ReLU, as smp's nn.Sequential blocks.
std::shared_ptr<Sequential> bn_relu_after(std::shared_ptr<nn::UnaryModule> first, int64_t channels) {
  auto s = std::make_shared<Sequential>();
  s->push_back(std::move(first));
  s->append(std::make_shared<nn::BatchNorm2d>(channels));
  s->append(std::make_shared<nn::ReLU>());
  return s;
}

class GlobalAvgPool : public nn::UnaryModule {
 public:
  Tensor forward(const Tensor& x) override { return global_avg_pool(x); }
};

// nn.Upsample(mode="bilinear", scale_factor, align_corners=True).
class Upsample : public nn::UnaryModule {
 public:
  explicit Upsample(int64_t scale) : scale_(scale) {}
  Tensor forward(const Tensor& x) override {
    return interpolate_bilinear(x, x.size(1) * scale_, x.size(2) * scale_, /*align_corners=*/true);
  }

 private:
  int64_t scale_;
};

// Image-level branch: global average -> 1x1 -> BN -> ReLU -> back to the map's size.
class AsppPooling : public Sequential {
 public:
  AsppPooling(int64_t in, int64_t out) {
    append(std::make_shared<GlobalAvgPool>());
    append(conv(in, out, 1));
    append(std::make_shared<nn::BatchNorm2d>(out));
    append(std::make_shared<nn::ReLU>());
  }
  Tensor forward(const Tensor& x) override {
    // Its BatchNorm sees one value per channel and sample; torch refuses batch 1 in training
    // (the batch variance would be 0/0 in the running stats). SyncBatchNorm counts all ranks'.
    SONO_CHECK(!is_training() || x.size(0) > 1 || nn::BatchNorm2d::sum_over_ranks,
               "DeepLabV3+: training needs a batch of at least 2 (the ASPP image-pooling branch "
               "applies BatchNorm to one value per channel per sample); got batch size 1. Use a "
               "larger batch, drop the last incomplete batch, or switch to eval mode");
    // Bilinear resizing of a 1x1 map (align_corners=False) repeats its value: expand is exact.
    Tensor pooled = Sequential::forward(x);
    return pooled.expand({x.size(0), x.size(1), x.size(2), pooled.size(3)});
  }
};

class Aspp : public nn::UnaryModule {
 public:
  Aspp(int64_t in, int64_t out, const std::array<int64_t, 3>& rates, double dropout) {
    convs_ = register_module("convs", std::make_shared<Sequential>());  // a ModuleList in torch
    convs_->push_back(bn_relu_after(conv(in, out, 1), out));
    for (int64_t rate : rates) convs_->push_back(bn_relu_after(separable_conv(in, out, rate), out));
    convs_->append(std::make_shared<AsppPooling>(in, out));
    project_ = register_module("project", bn_relu_after(conv(5 * out, out, 1), out));
    project_->append(std::make_shared<nn::Dropout>(dropout));
  }
  Tensor forward(const Tensor& x) override {
    std::vector<Tensor> branches;
    for (size_t i = 0; i < convs_->size(); ++i) branches.push_back((*convs_)[i].forward(x));
    return project_->forward(cat(branches, -1));
  }

 private:
  std::shared_ptr<Sequential> convs_, project_;
};

}  // namespace

class DeepLabV3PlusDecoder : public nn::Module {
 public:
  DeepLabV3PlusDecoder(const DeepLabV3PlusConfig& c, const SegmentationEncoder& encoder) {
    const int64_t ch = c.decoder_channels, low_level = 48;  // 48: the paper's choice, as smp
    const std::vector<int64_t> stages = encoder.stage_channels();
    aspp_ = register_module("aspp", std::make_shared<Sequential>());
    aspp_->append(std::make_shared<Aspp>(stages.back(), ch, c.atrous_rates, c.aspp_dropout));
    aspp_->append(separable_conv(ch, ch, 1));
    aspp_->append(std::make_shared<nn::BatchNorm2d>(ch));
    aspp_->append(std::make_shared<nn::ReLU>());
    up_ = register_module("up", std::make_shared<Upsample>(encoder.output_stride() / 4));
    block1_ = register_module("block1", bn_relu_after(conv(stages[0], low_level, 1), low_level));
    block2_ = register_module("block2", bn_relu_after(separable_conv(ch + low_level, ch, 1), ch));
  }

  // features: the encoder's stage outputs; uses the first (stride 4) and the last one.
  Tensor forward(const std::vector<Tensor>& features) {
    Tensor deep = up_->forward(aspp_->forward(features.back()));
    return block2_->forward(cat({deep, block1_->forward(features.front())}, -1));
  }

 private:
  std::shared_ptr<Sequential> aspp_, block1_, block2_;
  std::shared_ptr<Upsample> up_;
};

namespace {

std::shared_ptr<SegmentationEncoder> make_encoder(const EncoderConfig& config) {
  return std::visit(
      [](const auto& c) -> std::shared_ptr<SegmentationEncoder> {
        if constexpr (std::is_same_v<std::decay_t<decltype(c)>, MitConfig>) return std::make_shared<MixVisionTransformer>(c);
        else return std::make_shared<ResNet>(c);
      },
      config);
}

}  // namespace

DeepLabV3Plus::DeepLabV3Plus(const DeepLabV3PlusConfig& config) : config_(config) {
  encoder_ = register_module("encoder", make_encoder(config_.encoder));
  SONO_CHECK(encoder_->output_stride() == 16 || encoder_->output_stride() == 8,
             "DeepLabV3+: encoder output stride must be 16 or 8, got ", encoder_->output_stride());
  decoder_ = register_module("decoder", std::make_shared<DeepLabV3PlusDecoder>(config_, *encoder_));
  head_ = register_module("segmentation_head", std::make_shared<Sequential>());
  head_->append(std::make_shared<nn::Conv2d>(config_.decoder_channels, config_.num_classes, 1));
  if (config_.upsampling > 1) head_->append(std::make_shared<Upsample>(config_.upsampling));
}

Tensor DeepLabV3Plus::forward(const Tensor& x) {
  const int64_t stride = encoder_->output_stride();
  SONO_CHECK(x.dim() == 4, "DeepLabV3+: expected input [N, H, W, C], got ", shape_str(x.shape()));
  SONO_CHECK(x.size(1) % stride == 0 && x.size(2) % stride == 0, "DeepLabV3+: input height and width (",
             x.size(1), "x", x.size(2), ") must be multiples of ", stride, "; pad the images to ",
             (x.size(1) + stride - 1) / stride * stride, "x", (x.size(2) + stride - 1) / stride * stride);
  return head_->forward(decoder_->forward(encoder_->forward(x)));
}

DeepLabV3PlusConfig deeplabv3plus_config(const std::string& encoder_name, const ModelOptions& options) {
  DeepLabV3PlusConfig c;
  c.atrous_rates = options.atrous_rates;
  auto with_options = [&](auto e) {  // either family: smp's output stride, our input channels
    e.output_stride = 16;
    e.in_channels = options.in_channels;
    return e;
  };
  if (encoder_can_stop_early(encoder_name)) {
    ResNetConfig e = with_options(resnet_config(encoder_name));
    e.depth = options.encoder_depth;
    c.encoder = e;
  } else {
    SONO_CHECK(options.encoder_depth == 5, "DeepLabV3+ on ", encoder_name, ": encoder depth ",
               options.encoder_depth, " is for ResNet encoders; a MiT encoder is built whole (depth 5)");
    MitConfig e = with_options(mit_config(encoder_name));
    e.drop_path_rate = options.drop_path_rate;
    c.encoder = e;
  }
  c.num_classes = options.num_classes;
  return c;
}

std::vector<ModelEntry> deeplab_variants() {
  std::vector<ModelEntry> entries;
  for (const char* name : {"mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "resnet18", "resnet34",
                           "resnet50", "resnet101", "resnet152"}) {
    const std::string arch = name;
    const PretrainedLayout layout = is_resnet(arch) ? resnet_pretrained_layout() : mit_pretrained_layout();
    entries.push_back({arch, Task::segmentation, [arch](const ModelOptions& o) {
                         return std::shared_ptr<nn::UnaryModule>(std::make_shared<DeepLabV3Plus>(deeplabv3plus_config(arch, o)));
                       },
                       {"encoder", layout}});
  }
  return entries;
}

}  // namespace sono::models
