#include "tools/app/inference.h"

#include <algorithm>
#include <cmath>
#include <numeric>

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

std::vector<double> lesion_malignancy(const Tensor& logits) {
  const size_t channels = static_cast<size_t>(logits.size(3));
  if (channels < 2) return {};
  const std::vector<double> v = logits.to_vector();
  const size_t pixels = v.size() / channels / static_cast<size_t>(logits.size(0));
  std::vector<double> scores;
  for (size_t start = 0; start < v.size(); start += pixels * channels) {
    std::vector<size_t> region;
    for (size_t i = 0; i < pixels; ++i)
      if (v[start + i * channels] > 0) region.push_back(i);
    if (region.empty()) {  // the most lesion-like 1%: still the segmenter's best guess at where to look
      region.resize(pixels);
      std::iota(region.begin(), region.end(), size_t{0});
      const size_t top = std::max<size_t>(1, (pixels + 99) / 100);
      std::nth_element(region.begin(), region.begin() + static_cast<std::ptrdiff_t>(top - 1), region.end(),
                       [&](size_t a, size_t b) { return v[start + a * channels] > v[start + b * channels]; });
      region.resize(top);
    }
    double sum = 0;
    for (size_t i : region) sum += 1 / (1 + std::exp(-v[start + i * channels + 1]));
    scores.push_back(sum / static_cast<double>(region.size()));
  }
  return scores;
}

void check_stacking_inputs(const LoadedModel* seg, const std::string& seg_path, const LoadedModel& cls,
                           const std::string& cls_path) {
  if (!cls.card.stacking) return;
  SONO_CHECK(seg, cls_path, ": stacks its classes with a segmenter's malignancy score; give the segmenter "
             "(seg_train --malignancy-map) it was fitted with");
  SONO_CHECK(seg->card.has_malignancy_channel(), cls_path, ": stacks its classes with a segmenter's malignancy score; ",
             seg_path, " has no malignancy channel (seg_train --malignancy-map)");
}

BatchSegmentation segment_batch(LoadedModel& seg, const Tensor& x, Device device, bool flip) {
  autograd::NoGradGuard no_grad;
  const Tensor logits = forward(*seg.model, x.to(device), flip).to(Device::cpu);
  return {lesion_channel(calibrate(seg.card, logits)), lesion_channel(logits), lesion_malignancy(logits)};
}

std::vector<std::vector<double>> classify(LoadedModel& cls, const Tensor& x, Device device, bool flip,
                                          const std::vector<double>& malignancy) {
  autograd::NoGradGuard no_grad;
  SONO_CHECK(cls.card.in_channels == 4, "classification checkpoint (", cls.card.arch, ") takes ",
             cls.card.in_channels, " channels; expected image + mask (4)");
  const std::vector<double> p = softmax(calibrate(cls.card, forward(*cls.model, x.to(device), flip)), -1).to_vector();
  const size_t classes = p.size() / static_cast<size_t>(x.size(0));
  SONO_CHECK(!cls.card.stacking || malignancy.size() == static_cast<size_t>(x.size(0)), "classify: the card stacks ",
             "the malignancy score; got ", malignancy.size(), " scores for ", x.size(0), " images");
  std::vector<std::vector<double>> rows;
  for (size_t i = 0; i < p.size(); i += classes) {
    rows.emplace_back(p.begin() + i, p.begin() + i + classes);
    if (cls.card.stacking) rows.back() = cls.card.stacking->probabilities(rows.back(), {malignancy[rows.size() - 1]});
  }
  return rows;
}

ScanSegmentation segment_scan(LoadedModel& seg, const data::Image& image, int height, int width, Device device,
                              bool flip) {
  Tensor x = data::model_input(image, data::Mask(image.height, image.width),
                               static_cast<int>(seg.card.img_size), data::InputKind::rgb, seg.card.normalisation);
  BatchSegmentation out = segment_batch(seg, x, device, flip);
  ScanSegmentation r = scan_segmentation(data::logit_maps(out.lesion_logits).front(),
                                         data::logit_maps(out.uncalibrated_lesion_logits).front(), height, width);
  if (!out.malignancy.empty()) r.malignancy = out.malignancy.front();
  return r;
}

ScanSegmentation scan_segmentation(const data::Image& calibrated, const data::Image& uncalibrated, int height,
                                   int width) {
  ScanSegmentation r{data::resize_bilinear(uncalibrated, height, width), data::Image(), std::nullopt};
  r.uncalibrated_lesion_logits = r.lesion_logits;
  if (calibrated.pixels != uncalibrated.pixels) r.lesion_logits = data::resize_bilinear(calibrated, height, width);
  return r;
}

const data::Image& outline_map(const ScanSegmentation& segmentation, const std::vector<std::string>& classes,
                               size_t predicted) {
  // Calibration changes nothing but the maps it empties.
  const bool emptied = segmentation.lesion_logits.pixels != segmentation.uncalibrated_lesion_logits.pixels;
  const bool knows_lesion_free =
      std::find(classes.begin(), classes.end(), ModelCard::kLesionFreeClass) != classes.end();
  const bool calls_lesion = knows_lesion_free && classes.at(predicted) != ModelCard::kLesionFreeClass;
  return emptied && calls_lesion ? segmentation.uncalibrated_lesion_logits : segmentation.lesion_logits;
}

namespace {

// `patch` (the window's size, one channel) written over `map` at `window`.
void paste(const data::Image& patch, const data::Window& window, data::Image& map) {
  for (int y = 0; y < window.height; ++y)
    std::copy_n(patch.pixels.begin() + static_cast<size_t>(y) * window.width, window.width,
                map.pixels.begin() + static_cast<size_t>(window.y + y) * map.width + window.x);
}

}  // namespace

void check_refiner(const LoadedModel& refiner, const std::string& path) {
  SONO_CHECK(card_value(refiner.card, "lesion_view", 0) > 0, path,
             ": not a refining segmenter (it was not trained with seg_train --lesion-view)");
}

LoadedModel load_refiner(const std::string& path, Device device) {
  LoadedModel refiner = load_for_inference(path, models::Task::segmentation, device);
  check_refiner(refiner, path);
  return refiner;
}

std::vector<data::Image> refine_lesions(LoadedModel& refiner, const std::vector<const data::Image*>& images,
                                        std::vector<data::Image> lesion_logits, Device device, bool flip) {
  check_refiner(refiner, "refine_lesions: the refiner");
  const int size = static_cast<int>(refiner.card.img_size);
  std::vector<size_t> found;
  std::vector<data::Window> windows;
  for (size_t i = 0; i < images.size(); ++i) {
    const data::Mask mask = data::mask_from_logit_map(lesion_logits[i]);
    if (mask.lesion_pixels() == 0) continue;
    found.push_back(i);
    windows.push_back(view_window(refiner, mask));
  }
  if (found.empty()) return lesion_logits;
  Tensor x = Tensor::empty({static_cast<int64_t>(found.size()), size, size, 3});
  for (size_t k = 0; k < found.size(); ++k)
    data::write_input(data::resize_bilinear(data::crop(*images[found[k]], windows[k]), size, size), data::Mask(),
                      data::InputKind::rgb, refiner.card.normalisation, x.data<float>() + k * size * size * 3);
  // Uncalibrated: the refiner's own empty threshold was fitted on windows around true lesions.
  const std::vector<data::Image> patches = data::logit_maps(segment_batch(refiner, x, device, flip).uncalibrated_lesion_logits);
  for (size_t k = 0; k < found.size(); ++k) {
    const data::Image patch = data::resize_bilinear(patches[k], windows[k].height, windows[k].width);
    // A window it leaves empty keeps the first's outline: whether there is a lesion is not its call.
    if (data::mask_from_logit_map(patch).lesion_pixels() > 0) paste(patch, windows[k], lesion_logits[found[k]]);
  }
  return lesion_logits;
}

data::Mask classifier_mask(data::InputKind input, const ScanSegmentation& segmentation) {
  if (input != data::InputKind::rgb_lesion_probability) return data::mask_from_logit_map(segmentation.lesion_logits);
  return data::probability_levels(segmentation.uncalibrated_lesion_logits);
}

data::Mask classifier_mask(data::InputKind input, const data::Mask& truth) {
  return input == data::InputKind::rgb_lesion_probability ? data::probability_levels(truth) : truth;
}

data::Window view_window(const LoadedModel& model, const data::Mask& mask) {
  const double context = card_value(model.card, "lesion_view", 0);
  return context > 0 ? data::lesion_window(mask, context) : data::Window::whole(mask.width, mask.height);
}

void write_classifier_input(const LoadedModel& cls, const data::Image& image, const data::Mask& mask, float* dst,
                            const data::Image* whole_resized) {
  const int size = static_cast<int>(cls.card.img_size);
  const data::Window window = view_window(cls, mask);
  const bool whole = window == data::Window::whole(image.width, image.height);
  const data::Image resized = whole && whole_resized ? *whole_resized
                              : whole                ? data::resize_bilinear(image, size, size)
                                                     : data::resize_bilinear(data::crop(image, window), size, size);
  const data::Mask resized_mask = data::resize_nearest(whole ? mask : data::crop(mask, window), size, size);
  data::write_input(resized, resized_mask, cls.card.input(), cls.card.normalisation, dst);
}

Tensor classifier_input(const LoadedModel& cls, const data::Image& image, const data::Mask& mask) {
  const int64_t size = cls.card.img_size;
  Tensor x = Tensor::empty({1, size, size, 4});
  write_classifier_input(cls, image, mask, x.data<float>());
  return x;
}

std::vector<double> classify(LoadedModel& cls, const data::Image& image, const data::Mask& mask, Device device,
                             bool flip, std::optional<double> malignancy) {
  std::vector<double> scores;
  if (malignancy) scores.push_back(*malignancy);
  return classify(cls, classifier_input(cls, image, mask), device, flip, scores).front();
}

}  // namespace sono::app
