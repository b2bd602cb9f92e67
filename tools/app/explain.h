#pragma once
// Grad-CAM (Selvaraju et al., ICCV 2017) of the classifier's decision: where in the scan the
// evidence for a class lies, from the classifier's last feature map (ConvNeXt, ResNet) weighted by the class
// logit's gradient.
#include "models/classifier.h"
#include "tools/app/checkpoint.h"
#include "tools/data/image.h"

namespace sono::app {

// The last stage's features [1, h, w, C] for input `x` and the gradient of logit `class_index`
// with respect to them.
struct ClassActivation {
  Tensor features, gradient;
};
ClassActivation class_activation(models::Classifier& model, const Tensor& x, size_t class_index);

// ReLU(sum_k alpha_k * features_k), alpha_k the mean of channel k's gradient over the map,
// resized bilinearly to (height, width) and divided by its maximum: a 1-channel map in 0..1
// (all 0 when no feature speaks for the class).
data::Image grad_cam(const ClassActivation& activation, int height, int width);
// The same for the decision --flip_tta takes (the mean of the logits on the image and on its
// mirror image): the two runs' weighted feature sums, the mirrored run's mirrored back, averaged
// before the ReLU. A mirrored scan's explanation is then the explanation mirrored.
data::Image grad_cam(const ClassActivation& activation, const ClassActivation& on_mirror, int height, int width);

// Throws naming the architecture unless Grad-CAM can explain this classifier.
models::Classifier& explainable(LoadedModel& cls);

// Grad-CAM of `class_index` for an image and its lesion mask (as classify() sees them, with
// `flip` as classify's), at the image's size; 0 outside the window a lesion-view classifier
// sees. Throws unless explainable().
data::Image explain(LoadedModel& cls, const data::Image& image, const data::Mask& mask, size_t class_index,
                    Device device, bool flip);

}  // namespace sono::app
