#pragma once
// Self-supervised pretraining by masked-image modelling, as SimMIM (Xie et al. 2022): random
// 32x32 cells of the input are blanked, the encoder's stride-32 feature map goes through one
// linear layer (a 1x1 conv) to the 32x32 RGB pixels of its cell, and the loss is the L1
// distance to the original pixels over the blanked cells only. What is kept is the encoder,
// under the names `seg_train --pretrained` / `cls_train --pretrained` load.
#include <memory>
#include <string>

#include "layers/linear.h"
#include "layers/module.h"
#include "tensor/random.h"
#include "tools/data/model_input.h"

namespace sono::app {

// The side of a masked cell: one cell of the encoders' deepest (stride-32) feature map.
inline constexpr int64_t kMaskCell = 32;

// Which cells of each image are blanked: [N, S/32, S/32, 1] float32, 1 = masked. Each image
// gets round(ratio * cells) masked cells, drawn without replacement, and at least one and one
// visible: an all-blank input has nothing to reconstruct from, and its all-zero activations
// meet LayerNorm at zero variance (gradients scaled by 1/sqrt(eps) per norm: MiT's overflowed).
Tensor draw_masked_cells(int64_t images, int64_t cells_per_side, double ratio, Generator& gen);

// Images [N, S, S, C] -> [N, S/cell, S/cell, cell*cell*C]: each cell's pixels as one vector
// (row, column, channel order), what a 1x1 conv followed by pixel shuffle would rearrange.
Tensor patchify(const Tensor& images, int64_t cell);

// Cells [N, h, w, 1] -> a pixel mask [N, h*cell, w*cell, 1].
Tensor cells_to_pixels(const Tensor& cells, int64_t cell);

// The mean absolute error of `prediction` against `target` ([N, h, w, P] both) over the cells
// where `cells` ([N, h, w, 1]) is 1; the other cells do not count.
Tensor masked_l1(const Tensor& prediction, const Tensor& target, const Tensor& cells);

// An encoder of the registry's families without its task head, and the SimMIM decoder.
class MaskedImageModel : public nn::Module {
 public:
  // `arch`: convnext_* (4 input channels as cls_train: RGB and a mask channel, which is zero
  // here since pretraining reads no labels), mit_* or resnet* (3 channels, the segmenter's
  // encoder; a ResNet's also starts cls_train's ResNet classifier, whose stem takes the mask
  // channel on).
  MaskedImageModel(const std::string& arch, double drop_path_rate);

  data::InputKind input() const { return input_; }
  // The reconstruction loss of a batch of normalised images [N, S, S, channels] (S a multiple
  // of 32) with `cells` masked.
  Tensor loss(const Tensor& images, const Tensor& cells);
  // The predicted pixels of every cell [N, S/32, S/32, 32*32*3] of an input already masked.
  Tensor predict(const Tensor& masked_images);
  // The encoder's weights as --pretrained reads them: timm's ConvNeXt keys (no head.fc), smp's
  // MiT encoder keys (no "encoder." prefix) or torchvision's ResNet keys (no fc).
  nn::StateDict encoder_state() const;

 private:
  Tensor features(const Tensor& x);  // the stride-32 map [N, S/32, S/32, channels]

  data::InputKind input_;
  std::shared_ptr<nn::Module> encoder_;
  std::shared_ptr<nn::Linear> decoder_;
};

}  // namespace sono::app
