#include "models/resnet.h"

#include <cmath>
#include <map>

#include "layers/conv.h"
#include "layers/init.h"
#include "layers/norm.h"

namespace sono::models {

namespace {

using nn::BatchNorm2d;
using nn::Conv2d;

// torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), no bias.
std::shared_ptr<Conv2d> make_conv(int64_t in, int64_t out, int64_t k, Conv2dOptions opt) {
  auto conv = std::make_shared<Conv2d>(in, out, k, opt, /*bias=*/false);
  nn::init::assign(conv->weight, nn::init::fan_out_normal(conv->weight.shape()));
  return conv;
}

// BasicBlock (3x3, 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 to 4x the width), each conv
// followed by BatchNorm, ReLU after all but the last; the shortcut is a strided 1x1 conv + BN
// where the shape changes.
class Block : public nn::UnaryModule {
 public:
  Block(int64_t in, int64_t width, int64_t stride, int64_t dilation, bool bottleneck) {
    const int64_t out = bottleneck ? 4 * width : width;
    const Conv2dOptions strided = in_stage(3, {stride, 1}, dilation), plain = in_stage(3, {1, 1}, dilation);
    if (bottleneck) {
      add_conv(make_conv(in, width, 1, in_stage(1, {}, dilation)), width);
      add_conv(make_conv(width, width, 3, strided), width);
      add_conv(make_conv(width, out, 1, in_stage(1, {}, dilation)), out);
    } else {
      add_conv(make_conv(in, width, 3, strided), width);
      add_conv(make_conv(width, out, 3, plain), out);
    }
    if (stride != 1 || in != out) {
      downsample_ = register_module("downsample", std::make_shared<nn::Sequential>());
      downsample_->append(make_conv(in, out, 1, in_stage(1, {stride, 0}, dilation)));
      downsample_->append(std::make_shared<BatchNorm2d>(out));
    }
  }

  Tensor forward(const Tensor& x) override {
    Tensor y = x;
    for (size_t i = 0; i < convs_.size(); ++i) {
      y = norms_[i]->forward(convs_[i]->forward(y));
      if (i + 1 < convs_.size()) y = relu(y);
    }
    return relu(add(y, downsample_ ? downsample_->forward(x) : x));
  }

 private:
  void add_conv(std::shared_ptr<Conv2d> conv, int64_t channels) {
    const std::string index = std::to_string(convs_.size() + 1);
    convs_.push_back(register_module("conv" + index, std::move(conv)));
    norms_.push_back(register_module("bn" + index, std::make_shared<BatchNorm2d>(channels)));
  }

  std::vector<std::shared_ptr<Conv2d>> convs_;
  std::vector<std::shared_ptr<BatchNorm2d>> norms_;
  std::shared_ptr<nn::Sequential> downsample_;
};

}  // namespace

ResNetConfig resnet_config(const std::string& variant) {
  static const std::map<std::string, ResNetConfig> variants = {
      {"resnet18", {.layers = {2, 2, 2, 2}}},
      {"resnet34", {.layers = {3, 4, 6, 3}}},
      {"resnet50", {.bottleneck = true, .layers = {3, 4, 6, 3}}},
      {"resnet101", {.bottleneck = true, .layers = {3, 4, 23, 3}}},
      {"resnet152", {.bottleneck = true, .layers = {3, 8, 36, 3}}}};
  auto it = variants.find(variant);
  SONO_CHECK(it != variants.end(), "unknown ResNet variant '", variant,
             "' (known: resnet18, resnet34, resnet50, resnet101, resnet152)");
  return it->second;
}

ResNet::ResNet(const ResNetConfig& config) : config_(config) {
  const ResNetConfig& c = config_;
  SONO_CHECK(c.output_stride == 32 || c.output_stride == 16 || c.output_stride == 8,
             "ResNet: output stride must be 32, 16 or 8, got ", c.output_stride);
  // smp re-creates the first conv with torch's default init when in_channels != 3.
  conv1_ = register_module("conv1", c.in_channels == 3 ? make_conv(3, 64, 7, {2, 3})
                                                       : std::make_shared<Conv2d>(c.in_channels, 64, 7, Conv2dOptions{2, 3}, false));
  bn1_ = register_module("bn1", std::make_shared<BatchNorm2d>(64));
  int64_t in = 64;
  for (int s = 0; s < 4; ++s) {
    const int64_t width = int64_t{64} << s, stride = s == 0 ? 1 : 2;  // a dilated stage's convs drop it
    const int64_t dilation = stage_dilation(s, c.output_stride);
    layers_[s] = register_module("layer" + std::to_string(s + 1), std::make_shared<nn::Sequential>());
    for (int64_t i = 0; i < c.layers[s]; ++i) {
      auto block = std::make_shared<Block>(in, width, i == 0 ? stride : 1, dilation, c.bottleneck);
      layers_[s]->append(block);
      in = c.bottleneck ? 4 * width : width;
    }
  }
}

std::array<int64_t, 4> ResNet::stage_channels() const {
  const int64_t expansion = config_.bottleneck ? 4 : 1;
  return {64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion};
}

std::vector<Tensor> ResNet::forward(const Tensor& x) {
  SONO_CHECK(x.dim() == 4 && x.size(3) == config_.in_channels, "ResNet: expected input [N, H, W, ",
             config_.in_channels, "], got ", shape_str(x.shape()));
  Tensor y = max_pool2d(relu(bn1_->forward(conv1_->forward(x))), 3, 2, 1);
  std::vector<Tensor> features;
  for (auto& layer : layers_) features.push_back(y = layer->forward(y));
  return features;
}

}  // namespace sono::models
