#pragma once
// Running trained checkpoints on one image: what predict does per file, and what cls_train
// --seg-model does to give the classifier the masks it will see in use.
#include <string>
#include <vector>

#include "tools/app/checkpoint.h"
#include "tools/data/image.h"
#include "tools/data/lesion_view.h"

namespace sono::app {

// NHWC mirrored left to right.
Tensor mirror(const Tensor& x);

// The model's logits for an NHWC batch; with `flip`, averaged with those of the mirrored batch
// (mirrored back for a segmentation map), a cheap test-time augmentation.
Tensor forward(nn::UnaryModule& model, const Tensor& x, bool flip);

// What was fitted on validation after training, as the card records it (absent: nothing):
// classification logits are divided by "temperature"; a segmentation map whose highest lesion
// probability is under "empty_below" is made empty (its lesion channel; any other kept as is).
Tensor calibrate(const ModelCard& card, const Tensor& logits);
// A segmenter's lesion logits [B, H, W, 1] out of its output [B, H, W, C]: the first channel (a
// segmenter trained with seg_train --malignancy-map has a second, ModelCard::kMalignancyOutput).
Tensor lesion_channel(const Tensor& logits);

// The lesion mask of `image` (RGB 0..1, any size) at (height, width): the image is resized to
// the checkpoint's training size, the logits resized back (see data::mask_from_logits).
data::Mask segment(LoadedModel& seg, const data::Image& image, int height, int width, Device device,
                   bool flip = false);
// What segment thresholds at 0: the calibrated lesion logits at (height, width), 1 channel.
data::Image lesion_logits(LoadedModel& seg, const data::Image& image, int height, int width, Device device,
                          bool flip = false);

// What the classifier sees of an image and its lesion mask of the same size, as the card says:
// the whole image, or with "lesion_view" (cls_train --lesion-view) the window around the lesion.
data::Window classifier_window(const LoadedModel& cls, const data::Mask& mask);
// That window resized to the card's size and normalised, image and mask (data::write_input),
// to `dst`. `whole_resized`: the whole image at the card's size, when at hand.
void write_classifier_input(const LoadedModel& cls, const data::Image& image, const data::Mask& mask, float* dst,
                            const data::Image* whole_resized = nullptr);
// The same as a batch of one, [1, S, S, 4].
Tensor classifier_input(const LoadedModel& cls, const data::Image& image, const data::Mask& mask);

// Class probabilities (softmax of the calibrated logits) for an image and its lesion mask of
// the same size.
std::vector<double> classify(LoadedModel& cls, const data::Image& image, const data::Mask& mask, Device device,
                             bool flip = false);

// The same on a batch of model inputs [B, S, S, C] at the card's size (data::write_input per
// image): the one-image calls above are these with B = 1, so image i of a batch gets what it
// gets alone.
// The calibrated lesion logits [B, S, S, 1], on the CPU.
Tensor lesion_logits(LoadedModel& seg, const Tensor& x, Device device, bool flip = false);
// Class probabilities, one row per image.
std::vector<std::vector<double>> classify(LoadedModel& cls, const Tensor& x, Device device, bool flip = false);

}  // namespace sono::app
