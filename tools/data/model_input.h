#pragma once
// What the models see and give back, shared by the loader (training) and predict.
//
// Inputs are NHWC float32, RGB normalised (training uses ImageNet's mean and std):
//   InputKind::rgb       [B, S, S, 3]              (segmentation)
//   InputKind::rgb_mask  [B, S, S, 4] = RGB + mask (classification)
//   InputKind::rgb_lesion_probability  [B, S, S, 4] = RGB + a segmenter's lesion probability
// The mask channel holds the binary mask as 0/1, not normalised: what a PyTorch user gets
// from torch.cat([normalize(to_tensor(img)), (to_tensor(mask) > 0).float()], dim=1) fed to
// timm.create_model(..., in_chans=4). Masks are [B, S, S, 1] float32 0/1. The probability
// channel is a Mask of probability levels (probability_levels) read as level / 255.
#include "tensor/tensor.h"
#include "tools/data/image.h"

namespace sono::data {

#include <array>

// Per-channel (x - mean) / std of RGB in 0..1. A checkpoint's card records the one it was
// trained with, and predict applies that one.
struct Normalisation {
  std::array<double, 3> mean, std;
};
inline constexpr Normalisation kImagenet{{0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}};

enum class InputKind { rgb, rgb_mask, rgb_lesion_probability };
int input_channels(InputKind kind);

// Writes one sample's model input (H*W*channels floats) to `dst`; `mask` is read only for
// the 4-channel kinds and must then have the image's size.
void write_input(const Image& rgb, const Mask& mask, InputKind kind, const Normalisation& norm, float* dst);

// One image of any size as model input [1, size, size, C]: resized as the cache resizes
// (bilinear, antialiased; nearest for the mask) and normalised.
Tensor model_input(const Image& rgb, const Mask& mask, int size, InputKind kind, const Normalisation& norm);

// Segmentation logits [1, S, S, 1] (any device) to a mask of (height, width): the logit map
// is resized bilinearly, then lesion where the logit > 0 (probability > 0.5). Smoother
// outlines than resizing the thresholded mask.
Mask mask_from_logits(const Tensor& logits, int height, int width);
// The two steps: the resized logit map (1 channel), and lesion where its logit > 0.
Image logit_map(const Tensor& logits, int height, int width);
// A batch's logits [B, S, S, 1] as B maps at the model's size (what logit_map resizes).
std::vector<Image> logit_maps(const Tensor& logits);
Mask mask_from_logit_map(const Image& logit_map);
// Sigmoid of each logit: the lesion probability map, > 0.5 where the mask is lesion.
Image probability_map(const Image& logit_map);
// The same in 256 levels (0..255, the nearest to probability * 255) as a Mask, for
// InputKind::rgb_lesion_probability: the segmenter's doubt kept where a mask would drop it. A
// binary mask's levels are 0 and 255.
Mask probability_levels(const Image& logit_map);
Mask probability_levels(const Mask& mask);
// The first level over probability one half: where the segmenter's mask (before empty_below)
// marks lesion.
inline constexpr uint8_t kLesionLevel = 128;

}  // namespace sono::data
