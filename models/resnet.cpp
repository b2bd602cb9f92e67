#include "models/resnet.h"

#include <cmath>
#include <map>

#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/fuse.h"
#include "layers/init.h"
#include "layers/linear.h"
#include "layers/norm.h"
#include "models/registry.h"

namespace sono::models {

namespace {

using nn::BatchNorm2d;
using nn::Conv2d;

// torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), no bias.
std::shared_ptr<Conv2d> make_conv(int64_t in, int64_t out, int64_t k, Conv2dOptions opt) {
  auto conv = std::make_shared<Conv2d>(in, out, k, opt, /*bias=*/false);
  nn::init::fan_out_normal_(conv->weight);
  return conv;
}

struct BlockOptions {
  int64_t stride, dilation;
  bool bottleneck, zero_init_last;
  double drop_path;
};

// BasicBlock (3x3, 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 to 4x the width), each conv
// followed by BatchNorm, ReLU after all but the last; the shortcut is a strided 1x1 conv + BN
// where the shape changes.
class Block : public nn::UnaryModule {
 public:
  Block(int64_t in, int64_t width, const BlockOptions& o) {
    const auto [stride, dilation, bottleneck, zero_init_last, drop_path] = o;
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
    if (zero_init_last) nn::init::assign(norms_.back()->weight, Tensor::zeros({out}));
    if (drop_path > 0) drop_path_ = register_module("drop_path", std::make_shared<nn::DropPath>(drop_path));
  }

  Tensor forward(const Tensor& x) override {
    Tensor y = x;
    for (size_t i = 0; i + 1 < convs_.size(); ++i) y = nn::conv_bn_relu(*convs_[i], *norms_[i], y);
    y = norms_.back()->forward(convs_.back()->forward(y));
    if (drop_path_) y = drop_path_->forward(y);
    return add_relu(y, downsample_ ? downsample_->forward(x) : x);
  }

  void fuse_for_inference() override {
    nn::UnaryModule::fuse_for_inference();  // the downsample's conv and BatchNorm
    for (size_t i = 0; i + 1 < convs_.size(); ++i) nn::fuse_conv_bn_relu(*convs_[i], *norms_[i]);
    norms_.back()->fold_into(*convs_.back());  // its ReLU comes after the shortcut's add
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
  std::shared_ptr<nn::DropPath> drop_path_;
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

template <class Base>
ResNetTrunk<Base>::ResNetTrunk(const ResNetConfig& config) : config_(config) {
  const ResNetConfig& c = config_;
  SONO_CHECK(c.output_stride == 32 || c.output_stride == 16 || c.output_stride == 8,
             "ResNet: output stride must be 32, 16 or 8, got ", c.output_stride);
  SONO_CHECK(c.depth >= 3 && c.depth <= 5, "ResNet: encoder depth must be 3, 4 or 5, got ", c.depth);
  conv1_ = this->register_module("conv1", c.in_channels == 3 || c.timm_init
                                              ? make_conv(c.in_channels, 64, 7, {2, 3})
                                              : std::make_shared<Conv2d>(c.in_channels, 64, 7, Conv2dOptions{2, 3}, false));
  bn1_ = this->register_module("bn1", std::make_shared<BatchNorm2d>(64));
  const int64_t num_blocks = c.layers[0] + c.layers[1] + c.layers[2] + c.layers[3];
  int64_t in = 64, block_index = 0;
  for (int s = 0; s < c.depth - 1; ++s) {
    const int64_t width = int64_t{64} << s, stride = s == 0 ? 1 : 2;  // a dilated stage's convs drop it
    layers_.push_back(this->register_module("layer" + std::to_string(s + 1), std::make_shared<nn::Sequential>()));
    for (int64_t i = 0; i < c.layers[s]; ++i, ++block_index) {
      const double drop_path = c.drop_path_rate * static_cast<double>(block_index) / static_cast<double>(std::max<int64_t>(1, num_blocks - 1));
      layers_.back()->append(std::make_shared<Block>(
          in, width, BlockOptions{i == 0 ? stride : 1, stage_dilation(s, c.output_stride), c.bottleneck, c.timm_init, drop_path}));
      in = stage_width(s);
    }
  }
}

template <class Base>
std::vector<Tensor> ResNetTrunk<Base>::stages(const Tensor& x, bool with_stem) {
  SONO_CHECK(x.dim() == 4 && x.size(3) == config_.in_channels, "ResNet: expected input [N, H, W, ",
             config_.in_channels, "], got ", shape_str(x.shape()));
  const Tensor stem = nn::conv_bn_relu(*conv1_, *bn1_, x);
  std::vector<Tensor> features;
  if (with_stem) features.push_back(stem);
  Tensor y = max_pool2d(stem, 3, 2, 1);
  for (auto& layer : layers_) features.push_back(y = layer->forward(y));
  return features;
}

template <class Base>
void ResNetTrunk<Base>::fuse_for_inference() {
  Base::fuse_for_inference();
  nn::fuse_conv_bn_relu(*conv1_, *bn1_);
}

template class ResNetTrunk<SegmentationEncoder>;
template class ResNetTrunk<Classifier>;

std::vector<int64_t> ResNet::stage_channels() const {
  std::vector<int64_t> channels;
  for (int s = 0; s < config_.depth - 1; ++s) channels.push_back(stage_width(s));
  return channels;
}

ResNetClassifier::ResNetClassifier(const ResNetConfig& config) : ResNetTrunk(config) {
  SONO_CHECK(config.num_classes > 0 && config.output_stride == 32 && config.depth == 5,
             "ResNetClassifier: needs num_classes > 0, output stride 32 and all four layers");
  fc_ = register_module("fc", std::make_shared<nn::Linear>(stage_width(3), config.num_classes));
}

Tensor ResNetClassifier::forward_head(const Tensor& features) {
  return fc_->forward(global_avg_pool(features).reshape({features.size(0), stage_width(3)}));
}

std::vector<ModelEntry> resnet_classifier_variants() {
  std::vector<ModelEntry> entries;
  for (const char* name : {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}) {
    const ResNetConfig base = resnet_config(name);
    entries.push_back({name, Task::classification,
                       [base](const ModelOptions& o) -> std::shared_ptr<nn::UnaryModule> {
                         ResNetConfig c = base;
                         c.in_channels = o.in_channels;
                         c.num_classes = o.num_classes;
                         c.drop_path_rate = o.drop_path_rate;
                         c.timm_init = true;
                         return std::make_shared<ResNetClassifier>(c);
                       },
                       {"", resnet_pretrained_layout()}});
  }
  return entries;
}

}  // namespace sono::models
