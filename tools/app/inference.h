#pragma once
// Running trained checkpoints on one image: what predict does per file, and what cls_train
// --seg-model does to give the classifier the masks it will see in use.
#include <optional>
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

// Per image of a segmenter's output [B, H, W, C] (forward's, before calibrate), what a classifier
// card's stacking takes beside its probabilities: the mean malignancy probability over the pixels
// the segmenter marks as lesion, or over its 1% most lesion-like pixels where it marks none.
// Empty for a segmenter without a malignancy channel.
std::vector<double> lesion_malignancy(const Tensor& logits);

// Refuses, naming the files, a classifier whose card stacks the malignancy score with a segmenter
// that has no malignancy channel (or with none: `seg` absent).
void check_stacking_inputs(const LoadedModel* seg, const std::string& seg_path, const LoadedModel& cls,
                           const std::string& cls_path);

// A segmenter on one scan: what its mask thresholds at 0, the calibrated lesion logits at the
// requested size (1 channel), the same before calibration (what a lesion probability channel
// reads, and outline_map where the classifier overrules empty_below), and its lesion_malignancy
// where it has the channel.
struct ScanSegmentation {
  data::Image lesion_logits, uncalibrated_lesion_logits;
  std::optional<double> malignancy;
};
// `image` (RGB 0..1, any size) is resized to the checkpoint's training size, the logits resized
// back to (height, width).
ScanSegmentation segment_scan(LoadedModel& seg, const data::Image& image, int height, int width, Device device,
                              bool flip = false);
// The same from one image's maps at the model's size. Calibration changes only a map it empties,
// so an unchanged map is resized once.
ScanSegmentation scan_segmentation(const data::Image& calibrated, const data::Image& uncalibrated, int height,
                                   int width);

// The map a scan's outline is drawn from, once the classifier has named its class (`predicted`,
// an index into its `classes`): the calibrated one, unless the classifier calls a lesion (any
// class but ModelCard::kLesionFreeClass) on a scan whose map empty_below emptied; then the map
// before empty_below. The classifier reads the whole probability map, so it judges better than
// one threshold on its peak whether there is a lesion; where it is stays the segmenter's call
// (its pixels over one half). It never hides an outline, and a classifier without the
// lesion-free class (which cannot tell a scan has no lesion) changes nothing.
const data::Image& outline_map(const ScanSegmentation& segmentation, const std::vector<std::string>& classes,
                               size_t predicted);

// A refining segmenter (seg_train --lesion-view; its card's "lesion_view") redraws the outline of
// the lesion a first segmenter found: the window around the first's mask (view_window),
// cropped from the scan and segmented at the refiner's size, replaces the window's lesion logits,
// so that a lesion a fifth of the scan wide is outlined from several times the pixels. The first
// segmenter alone decides whether there is a lesion: a map without one is returned as it is, and
// one whose window the refiner leaves empty keeps the first's outline.
// `lesion_logits[i]`: the first's calibrated map of `images[i]`, at its size. One forward pass
// for the batch's windows. What the classifier reads is the first's (it was trained on those).
std::vector<data::Image> refine_lesions(LoadedModel& refiner, const std::vector<const data::Image*>& images,
                                        std::vector<data::Image> lesion_logits, Device device, bool flip = false);
// Refuses, naming the file, a checkpoint that is not a refining segmenter.
void check_refiner(const LoadedModel& refiner, const std::string& path);
// The refiner at `path`, loaded for inference and checked (what --refine_model and the API take).
LoadedModel load_refiner(const std::string& path, Device device);

// The classifier's fourth channel for a scan, as `input` (a classifier card's ModelCard::input)
// says: the segmenter's mask, or its lesion probability levels before empty_below (what
// cls_train --mask-channel probability trained on: the doubt a threshold would drop).
data::Mask classifier_mask(data::InputKind input, const ScanSegmentation& segmentation);
// The same from a ground-truth mask (its levels 0 and 255 for a probability channel).
data::Mask classifier_mask(data::InputKind input, const data::Mask& truth);

// What a model sees of an image given a mask of the same size (the classifier's classifier_mask,
// a refiner's first segmentation), as its card says: the whole image, or with "lesion_view"
// (cls_train or seg_train --lesion-view) the window around the mask's lesion.
data::Window view_window(const LoadedModel& model, const data::Mask& mask);
// That window resized to the card's size and normalised, image and mask (data::write_input),
// to `dst`. `whole_resized`: the whole image at the card's size, when at hand.
void write_classifier_input(const LoadedModel& cls, const data::Image& image, const data::Mask& mask, float* dst,
                            const data::Image* whole_resized = nullptr);
// The same as a batch of one, [1, S, S, 4].
Tensor classifier_input(const LoadedModel& cls, const data::Image& image, const data::Mask& mask);

// Class probabilities (softmax of the calibrated logits) for an image and its classifier_mask of
// the same size; where the card has a stacking, the stacked probabilities, which need the
// segmenter's `malignancy` (check_stacking_inputs).
std::vector<double> classify(LoadedModel& cls, const data::Image& image, const data::Mask& mask, Device device,
                             bool flip = false, std::optional<double> malignancy = std::nullopt);

// The same on a batch of model inputs [B, S, S, C] at the card's size (data::write_input per
// image): the one-image calls above are these with B = 1, so image i of a batch gets what it
// gets alone.
struct BatchSegmentation {
  Tensor lesion_logits;  // calibrated, [B, S, S, 1], on the CPU
  Tensor uncalibrated_lesion_logits;  // the same before calibrate
  std::vector<double> malignancy;  // lesion_malignancy
};
BatchSegmentation segment_batch(LoadedModel& seg, const Tensor& x, Device device, bool flip = false);
// Class probabilities, one row per image (stacked with `malignancy`, one per image, where the
// card says).
std::vector<std::vector<double>> classify(LoadedModel& cls, const Tensor& x, Device device, bool flip = false,
                                          const std::vector<double>& malignancy = {});

}  // namespace sono::app
