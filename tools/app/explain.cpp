#include "tools/app/explain.h"

#include <algorithm>

#include "autograd/node.h"
#include "tensor/ops.h"
#include "tools/app/inference.h"

namespace sono::app {

ClassActivation class_activation(models::Classifier& model, const Tensor& x, size_t class_index) {
  Tensor features;
  {
    autograd::NoGradGuard no_grad;  // the stages' gradients are not wanted
    features = model.forward_features(x);
  }
  features = features.detach();
  features.requires_grad_(true);
  Tensor logits = model.forward_head(features);
  SONO_CHECK(class_index < static_cast<size_t>(logits.size(1)), "Grad-CAM: class ", class_index, " of ",
             logits.size(1));
  std::vector<double> one_hot(static_cast<size_t>(logits.numel()), 0.0);
  one_hot[class_index] = 1;
  sum(mul(logits, Tensor::from_vector(one_hot, logits.shape()).to(logits.device()))).backward();
  return {features.detach(), features.grad()};
}

namespace {

// sum_k alpha_k * features_k at each position, before the ReLU: [1, h, w, 1].
Tensor weighted_features(const ClassActivation& activation) {
  const Tensor& f = activation.features;
  const std::vector<double> features = f.to_vector(), gradient = activation.gradient.to_vector();
  const size_t positions = static_cast<size_t>(f.size(1) * f.size(2)), channels = static_cast<size_t>(f.size(3));
  std::vector<double> alpha(channels, 0.0), map(positions, 0.0);
  for (size_t p = 0; p < positions; ++p)
    for (size_t k = 0; k < channels; ++k) alpha[k] += gradient[p * channels + k] / positions;
  for (size_t p = 0; p < positions; ++p)
    for (size_t k = 0; k < channels; ++k) map[p] += alpha[k] * features[p * channels + k];
  return Tensor::from_vector(map, {1, f.size(1), f.size(2), 1});
}

// ReLU, resized to (height, width), divided by the peak.
data::Image heat_map(const Tensor& weighted, int height, int width) {
  data::Image map(static_cast<int>(weighted.size(1)), static_cast<int>(weighted.size(2)), 1);
  const std::vector<double> v = weighted.to_vector();
  for (size_t p = 0; p < v.size(); ++p) map.pixels[p] = static_cast<float>(std::max(v[p], 0.0));
  data::Image resized = data::resize_bilinear(map, height, width);
  const float peak = *std::max_element(resized.pixels.begin(), resized.pixels.end());
  if (peak > 0)
    for (float& p : resized.pixels) p /= peak;
  return resized;
}

// The map of a window of the scan at its place in a (height, width) map, 0 outside it: what the
// classifier did not see gave it no evidence.
data::Image paste(const data::Image& map, const data::Window& w, int height, int width) {
  if (w == data::Window::whole(width, height)) return map;
  data::Image whole(height, width, 1);
  for (int y = 0; y < w.height; ++y)
    std::copy_n(&map.pixels[static_cast<size_t>(y) * w.width], w.width,
                &whole.pixels[static_cast<size_t>(w.y + y) * width + w.x]);
  return whole;
}

}  // namespace

data::Image grad_cam(const ClassActivation& activation, int height, int width) {
  return heat_map(weighted_features(activation), height, width);
}

data::Image grad_cam(const ClassActivation& activation, const ClassActivation& on_mirror, int height, int width) {
  return heat_map(mul(add(weighted_features(activation), mirror(weighted_features(on_mirror))), 0.5), height, width);
}

models::Classifier& explainable(LoadedModel& cls) {
  auto* classifier = dynamic_cast<models::Classifier*>(cls.model.get());
  SONO_CHECK(classifier, "--explain: Grad-CAM needs an image classifier; this checkpoint's is ", cls.card.arch);
  return *classifier;
}

data::Image explain(LoadedModel& cls, const data::Image& image, const data::Mask& mask, size_t class_index,
                    Device device, bool flip) {
  models::Classifier& classifier = explainable(cls);
  Tensor x = classifier_input(cls, image, mask).to(device);
  const data::Window w = view_window(cls, mask);
  ClassActivation activation = class_activation(classifier, x, class_index);
  const data::Image in_window =
      flip ? grad_cam(activation, class_activation(classifier, mirror(x), class_index), w.height, w.width)
           : grad_cam(activation, w.height, w.width);
  return paste(in_window, w, image.height, image.width);
}

}  // namespace sono::app
