#include "tools/app/inference.h"

#include <algorithm>
#include <cmath>

#include "autograd/node.h"
#include "tensor/ops.h"
#include "tools/data/model_input.h"

namespace sono::app {

Tensor mirror(const Tensor& x) {
  std::vector<double> in = x.to_vector(), out(in.size());
  const size_t rows = static_cast<size_t>(x.size(0) * x.size(1)), w = static_cast<size_t>(x.size(2)),
               c = static_cast<size_t>(x.size(3));
  for (size_t r = 0; r < rows; ++r)
    for (size_t col = 0; col < w; ++col)
      std::copy_n(in.begin() + (r * w + col) * c, c, out.begin() + (r * w + (w - 1 - col)) * c);
  return Tensor::from_vector(out, x.shape()).to(x.device());
}

namespace {

double card_value(const ModelCard& card, const std::string& key, double absent) {
  auto it = card.extra.find(key);
  return it == card.extra.end() ? absent : std::stod(it->second);
}

// Images whose highest logit is under logit(probability) become all background.
Tensor empty_below(const Tensor& logits, double probability) {
  std::vector<double> v = logits.to_vector();
  const double threshold = std::log(probability / (1 - probability));
  const size_t per_image = v.size() / static_cast<size_t>(logits.size(0));
  for (size_t i = 0; i < v.size(); i += per_image)
    if (*std::max_element(v.begin() + i, v.begin() + i + per_image) < threshold)
      std::fill(v.begin() + i, v.begin() + i + per_image, -20.0);
  return Tensor::from_vector(v, logits.shape()).to(logits.device());
}

}  // namespace

Tensor forward(nn::UnaryModule& model, const Tensor& x, bool flip) {
  Tensor logits = model(x);
  if (!flip) return logits;
  Tensor mirrored = model(mirror(x));
  if (logits.dim() == 4) mirrored = mirror(mirrored);
  return mul(add(logits, mirrored), 0.5);
}

Tensor calibrate(const ModelCard& card, const Tensor& logits) {
  if (card.task == models::Task::classification) {
    double t = card_value(card, "temperature", 1);
    return t == 1 ? logits : mul(logits, 1 / t);
  }
  double p = card_value(card, "empty_below", 0.5);
  if (p <= 0.5) return logits;  // at 0.5 an empty map is empty already
  Tensor lesion = empty_below(lesion_channel(logits), p);
  return logits.size(3) == 1 ? lesion : cat({lesion, logits.slice(3, 1, logits.size(3))}, 3);
}

Tensor lesion_channel(const Tensor& logits) {
  return logits.size(3) == 1 ? logits : logits.slice(3, 0, 1).contiguous();
}

Tensor lesion_logits(LoadedModel& seg, const Tensor& x, Device device, bool flip) {
  autograd::NoGradGuard no_grad;
  return lesion_channel(calibrate(seg.card, forward(*seg.model, x.to(device), flip))).to(Device::cpu);
}

std::vector<std::vector<double>> classify(LoadedModel& cls, const Tensor& x, Device device, bool flip) {
  autograd::NoGradGuard no_grad;
  SONO_CHECK(cls.card.in_channels == 4, "classification checkpoint (", cls.card.arch, ") takes ",
             cls.card.in_channels, " channels; expected image + mask (4)");
  const std::vector<double> p = softmax(calibrate(cls.card, forward(*cls.model, x.to(device), flip)), -1).to_vector();
  const size_t classes = p.size() / static_cast<size_t>(x.size(0));
  std::vector<std::vector<double>> rows;
  for (size_t i = 0; i < p.size(); i += classes) rows.emplace_back(p.begin() + i, p.begin() + i + classes);
  return rows;
}

data::Image lesion_logits(LoadedModel& seg, const data::Image& image, int height, int width, Device device,
                          bool flip) {
  Tensor x = data::model_input(image, data::Mask(image.height, image.width),
                               static_cast<int>(seg.card.img_size), data::InputKind::rgb, seg.card.normalisation);
  return data::logit_map(lesion_logits(seg, x, device, flip), height, width);
}

data::Mask segment(LoadedModel& seg, const data::Image& image, int height, int width, Device device, bool flip) {
  return data::mask_from_logit_map(lesion_logits(seg, image, height, width, device, flip));
}

data::Window classifier_window(const LoadedModel& cls, const data::Mask& mask) {
  const double context = card_value(cls.card, "lesion_view", 0);
  return context > 0 ? data::lesion_window(mask, context) : data::Window::whole(mask.width, mask.height);
}

void write_classifier_input(const LoadedModel& cls, const data::Image& image, const data::Mask& mask, float* dst,
                            const data::Image* whole_resized) {
  const int size = static_cast<int>(cls.card.img_size);
  const data::Window window = classifier_window(cls, mask);
  const bool whole = window == data::Window::whole(image.width, image.height);
  const data::Image resized = whole && whole_resized ? *whole_resized
                              : whole                ? data::resize_bilinear(image, size, size)
                                                     : data::resize_bilinear(data::crop(image, window), size, size);
  const data::Mask resized_mask = data::resize_nearest(whole ? mask : data::crop(mask, window), size, size);
  data::write_input(resized, resized_mask, data::InputKind::rgb_mask, cls.card.normalisation, dst);
}

Tensor classifier_input(const LoadedModel& cls, const data::Image& image, const data::Mask& mask) {
  const int64_t size = cls.card.img_size;
  Tensor x = Tensor::empty({1, size, size, 4});
  write_classifier_input(cls, image, mask, x.data<float>());
  return x;
}

std::vector<double> classify(LoadedModel& cls, const data::Image& image, const data::Mask& mask, Device device,
                             bool flip) {
  return classify(cls, classifier_input(cls, image, mask), device, flip).front();
}

}  // namespace sono::app
