#include "tools/app/masked_image_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "models/convnext.h"
#include "models/mit.h"
#include "models/resnet.h"
#include "tensor/ops.h"

namespace sono::app {

namespace {

constexpr int64_t kTargetChannels = 3;  // RGB: a mask channel is input, never reconstructed

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

Tensor draw_masked_cells(int64_t images, int64_t cells_per_side, double ratio, Generator& gen) {
  SONO_CHECK(ratio > 0 && ratio < 1, "mask ratio ", ratio, ": must be between 0 and 1");
  const int64_t cells = cells_per_side * cells_per_side;
  SONO_CHECK(cells >= 2, "masked-image modelling needs at least 2 cells an image, got ", cells);
  const int64_t masked = std::clamp<int64_t>(std::llround(ratio * static_cast<double>(cells)), 1, cells - 1);
  std::vector<double> values(static_cast<size_t>(images * cells), 0.0);
  std::vector<int64_t> order(static_cast<size_t>(cells));
  for (int64_t n = 0; n < images; ++n) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), gen.engine());
    for (int64_t i = 0; i < masked; ++i) values[static_cast<size_t>(n * cells + order[static_cast<size_t>(i)])] = 1.0;
  }
  return Tensor::from_vector(values, {images, cells_per_side, cells_per_side, 1});
}

Tensor patchify(const Tensor& images, int64_t cell) {
  SONO_CHECK(images.dim() == 4 && images.size(1) % cell == 0 && images.size(2) % cell == 0,
             "patchify: expected [N, H, W, C] with H and W multiples of ", cell, ", got ", shape_str(images.shape()));
  const int64_t n = images.size(0), h = images.size(1) / cell, w = images.size(2) / cell, c = images.size(3);
  return images.reshape({n, h, cell, w, cell, c}).permute({0, 1, 3, 2, 4, 5}).contiguous().reshape(
      {n, h, w, cell * cell * c});
}

Tensor cells_to_pixels(const Tensor& cells, int64_t cell) {
  const int64_t n = cells.size(0), h = cells.size(1), w = cells.size(2);
  return cells.reshape({n, h, 1, w, 1, 1}).expand({n, h, cell, w, cell, 1}).contiguous().reshape(
      {n, h * cell, w * cell, 1});
}

Tensor masked_l1(const Tensor& prediction, const Tensor& target, const Tensor& cells) {
  SONO_CHECK(prediction.shape() == target.shape(), "masked_l1: prediction ", shape_str(prediction.shape()),
             " and target ", shape_str(target.shape()), " differ");
  const double values_per_cell = static_cast<double>(prediction.size(3));
  Tensor error = sum(mul(abs(sub(prediction, target)), cells));
  return div(error, mul(sum(cells), values_per_cell));
}

MaskedImageModel::MaskedImageModel(const std::string& arch, double drop_path_rate) {
  int64_t channels = 0;
  if (starts_with(arch, "convnext_")) {
    models::ConvNeXtConfig config = models::convnext_config(arch.substr(9));
    config.in_channels = data::input_channels(data::InputKind::rgb_mask);
    config.num_classes = 0;  // keeps head.norm, which cls_train's model loads strictly
    config.drop_path_rate = drop_path_rate;
    encoder_ = register_module("encoder", std::make_shared<models::ConvNeXt>(config));
    input_ = data::InputKind::rgb_mask;
    channels = config.dims[3];
  } else if (starts_with(arch, "mit_")) {
    models::MitConfig config = models::mit_config(arch);
    config.in_channels = data::input_channels(data::InputKind::rgb);
    config.drop_path_rate = drop_path_rate;
    config.output_stride = 32;  // seg_train dilates the last stage; the weights' shapes are the same
    encoder_ = register_module("encoder", std::make_shared<models::MixVisionTransformer>(config));
    input_ = data::InputKind::rgb;
    channels = config.dims[3];
  } else if (models::is_resnet(arch)) {
    models::ResNetConfig config = models::resnet_config(arch);  // smp's encoder, all five stages
    config.in_channels = data::input_channels(data::InputKind::rgb);
    auto resnet = std::make_shared<models::ResNet>(config);
    channels = resnet->stage_channels().back();
    encoder_ = register_module("encoder", resnet);
    input_ = data::InputKind::rgb;
  } else {
    fail("--arch ", arch, ": pretraining takes a convnext_*, mit_* or resnet* encoder");
  }
  decoder_ = register_module("decoder", std::make_shared<nn::Linear>(channels, kMaskCell * kMaskCell * kTargetChannels));
}

Tensor MaskedImageModel::features(const Tensor& x) {
  if (auto* convnext = dynamic_cast<models::ConvNeXt*>(encoder_.get())) return convnext->forward_features(x);
  return static_cast<models::SegmentationEncoder&>(*encoder_).forward(x).back();
}

Tensor MaskedImageModel::predict(const Tensor& masked_images) { return decoder_->forward(features(masked_images)); }

Tensor MaskedImageModel::loss(const Tensor& images, const Tensor& cells) {
  const Tensor on_device = cells.to(images.device());
  const Tensor kept = add(neg(cells_to_pixels(on_device, kMaskCell)), 1.0);
  const Tensor target = patchify(images.slice(3, 0, kTargetChannels), kMaskCell);
  return masked_l1(predict(mul(images, kept)), target, on_device);
}

nn::StateDict MaskedImageModel::encoder_state() const { return encoder_->state_dict(); }

}  // namespace sono::app
