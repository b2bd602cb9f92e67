#include "models/unet.h"

#include <cmath>

#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/init.h"
#include "layers/norm.h"

namespace sono::models {

namespace {

// smp's initialize_decoder: kaiming_uniform_(fan_in, relu), i.e. U(+-sqrt(6 / fan_in)); BN 1/0.
std::shared_ptr<nn::Sequential> conv_bn_relu(int64_t in, int64_t out) {
  auto conv = std::make_shared<nn::Conv2d>(in, out, 3, Conv2dOptions{1, 1}, /*bias=*/false);
  nn::init::assign(conv->weight, nn::init::uniform(conv->weight.shape(), std::sqrt(6.0 / static_cast<double>(in * 9))));
  auto s = std::make_shared<nn::Sequential>();
  s->push_back(conv);
  s->append(std::make_shared<nn::BatchNorm2d>(out));
  s->append(std::make_shared<nn::ReLU>());
  return s;
}

// F.interpolate(mode="nearest") to twice the size: each value repeated over a 2x2 square.
Tensor upsample_nearest_2x(const Tensor& x) {
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  return x.reshape({n, h, 1, w, 1, c}).expand({n, h, 2, w, 2, c}).reshape({n, 2 * h, 2 * w, c});
}

class UnetDecoderBlock : public nn::UnaryModule {
 public:
  UnetDecoderBlock(int64_t in, int64_t skip, int64_t out) {
    conv1_ = register_module("conv1", conv_bn_relu(in + skip, out));
    conv2_ = register_module("conv2", conv_bn_relu(out, out));
  }
  Tensor forward(const Tensor& x) override { return join(x, std::nullopt); }
  Tensor join(const Tensor& x, const std::optional<Tensor>& skip) {
    Tensor y = upsample_nearest_2x(x);
    if (skip) y = cat({y, *skip}, -1);
    return conv2_->forward(conv1_->forward(y));
  }

 private:
  std::shared_ptr<nn::Sequential> conv1_, conv2_;
};

}  // namespace

class UnetDecoder : public nn::Module {
 public:
  // stage_channels: the encoder's maps from stride 2 (the stem) down, as Unet::forward passes them.
  UnetDecoder(const std::vector<int64_t>& stage_channels, const std::vector<int64_t>& decoder_channels) {
    auto list = register_module("blocks", std::make_shared<nn::Sequential>());  // a ModuleList in torch
    int64_t in = stage_channels.back();
    for (size_t i = 0; i < decoder_channels.size(); ++i) {
      const bool has_skip = i + 1 < stage_channels.size();  // the last block has none
      const int64_t skip = has_skip ? stage_channels[stage_channels.size() - 2 - i] : 0;
      blocks_.push_back(list->append(std::make_shared<UnetDecoderBlock>(in, skip, decoder_channels[i])));
      in = decoder_channels[i];
    }
  }

  // features: the stem's map then each stage's, strides 2, 4, ..., 2^depth.
  Tensor forward(const std::vector<Tensor>& features) {
    Tensor x = features.back();
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const bool has_skip = i + 1 < features.size();
      x = blocks_[i]->join(x, has_skip ? std::optional<Tensor>(features[features.size() - 2 - i]) : std::nullopt);
    }
    return x;
  }

 private:
  std::vector<std::shared_ptr<UnetDecoderBlock>> blocks_;
};

Unet::Unet(const UnetConfig& config) : config_(config) {
  const int64_t depth = config_.encoder.depth;
  SONO_CHECK(config_.encoder.output_stride == 32, "U-Net: the encoder is not dilated (output stride 32)");
  SONO_CHECK(static_cast<int64_t>(config_.decoder_channels.size()) == depth, "U-Net: ",
             config_.decoder_channels.size(), " decoder channels for an encoder of depth ", depth,
             ": give one per stage");
  for (int64_t c : config_.decoder_channels) SONO_CHECK(c >= 1, "U-Net: decoder channels must be positive");
  encoder_ = register_module("encoder", std::make_shared<ResNet>(config_.encoder));
  std::vector<int64_t> stages{64};  // the stem's conv1
  for (int64_t c : encoder_->stage_channels()) stages.push_back(c);
  decoder_ = register_module("decoder", std::make_shared<UnetDecoder>(stages, config_.decoder_channels));
  // smp's initialize_head: xavier_uniform_ weight, bias 0.
  const int64_t last = config_.decoder_channels.back();
  auto conv = std::make_shared<nn::Conv2d>(last, config_.num_classes, 3, Conv2dOptions{1, 1});
  const double fans = static_cast<double>((last + config_.num_classes) * 9);
  nn::init::assign(conv->weight, nn::init::uniform(conv->weight.shape(), std::sqrt(6.0 / fans)));
  nn::init::assign(conv->bias, Tensor::zeros({config_.num_classes}));
  head_ = register_module("segmentation_head", std::make_shared<nn::Sequential>());
  head_->push_back(conv);
}

Tensor Unet::forward(const Tensor& x) {
  const int64_t stride = int64_t{1} << config_.encoder.depth;
  SONO_CHECK(x.dim() == 4, "U-Net: expected input [N, H, W, C], got ", shape_str(x.shape()));
  SONO_CHECK(x.size(1) % stride == 0 && x.size(2) % stride == 0, "U-Net: input height and width (", x.size(1),
             "x", x.size(2), ") must be multiples of ", stride, "; pad the images to ",
             (x.size(1) + stride - 1) / stride * stride, "x", (x.size(2) + stride - 1) / stride * stride);
  return head_->forward(decoder_->forward(encoder_->forward_from_stride2(x)));
}

UnetConfig unet_config(const std::string& encoder_name, const ModelOptions& options) {
  UnetConfig c;
  c.encoder = resnet_config(encoder_name);
  c.encoder.in_channels = options.in_channels;
  c.encoder.depth = options.encoder_depth;
  c.num_classes = options.num_classes;
  c.decoder_channels = options.decoder_channels;
  if (c.decoder_channels.empty()) c.decoder_channels = smp_unet_decoder_channels(options.encoder_depth);
  return c;
}

std::vector<ModelEntry> unet_variants() {
  std::vector<ModelEntry> entries;
  for (const char* encoder : {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}) {
    const std::string name = encoder;
    entries.push_back({std::string(kUnetPrefix) + name, Task::segmentation,
                       [name](const ModelOptions& o) {
                         return std::shared_ptr<nn::UnaryModule>(std::make_shared<Unet>(unet_config(name, o)));
                       },
                       {"encoder", resnet_pretrained_layout()}});
  }
  return entries;
}

}  // namespace sono::models
