#include "sono/pipeline.h"

#include <algorithm>
#include <mutex>
#include <optional>

#include "tools/app/inference.h"
#include "tools/app/runtime.h"

namespace sono {

struct Pipeline::Models {
  Models(const std::string& seg_path, const std::string& cls_path, const Options& options)
      : device(app::select_device(options.device)),
        seg(app::load_for_inference(seg_path, models::Task::segmentation, device)),
        cls(app::load_for_inference(cls_path, models::Task::classification, device)),
        flip(options.flip_tta) {
    app::check_stacking_inputs(&seg, seg_path, cls, cls_path);
    if (!options.refine_checkpoint.empty()) refine = app::load_refiner(options.refine_checkpoint, device);
  }

  Device device;
  app::LoadedModel seg, cls;
  bool flip;
  std::optional<app::LoadedModel> refine;
  // The forwards take turns: the engine's modules and backends (the CUDA one's allocator and
  // stream above all) were not written for concurrent forwards, and on the CPU one forward
  // already keeps every core busy through OpenMP. Decoding the view and the maps' arithmetic
  // run outside it.
  std::mutex forward;
};

Pipeline::Pipeline(const std::string& segmentation_checkpoint, const std::string& classification_checkpoint,
                   const Options& options)
    : models_(std::make_unique<Models>(segmentation_checkpoint, classification_checkpoint, options)) {}

Pipeline::~Pipeline() = default;

const std::vector<std::string>& Pipeline::class_names() const { return models_->cls.card.classes; }

namespace {

data::Image image_of(const ImageView& view) {
  const bool sixteen_bit = view.type == PixelType::u16;
  const size_t packed = size_t(std::max(view.width, 0)) * std::max(view.channels, 0) * (sixteen_bit ? 2 : 1);
  return data::image_from_pixels(
      {view.pixels, view.height, view.width, view.channels, sixteen_bit, view.row_stride ? view.row_stride : packed});
}

}  // namespace

Result Pipeline::run(const ImageView& view) const {
  const data::Image image = image_of(view);
  data::Image logits;
  Result r;
  {
    std::lock_guard<std::mutex> turn(models_->forward);
    app::ScanSegmentation segmentation =
        app::segment_scan(models_->seg, image, image.height, image.width, models_->device, models_->flip);
    r.class_probabilities = app::classify(models_->cls, image, app::classifier_mask(models_->cls.card.input(), segmentation),
                                          models_->device, models_->flip, segmentation.malignancy);
    r.predicted = std::max_element(r.class_probabilities.begin(), r.class_probabilities.end()) -
                  r.class_probabilities.begin();
    logits = app::outline_map(segmentation, class_names(), r.predicted);
    if (models_->refine)
      logits = app::refine_lesions(*models_->refine, {&image}, {std::move(logits)}, models_->device, models_->flip)[0];
  }
  const data::Mask mask = data::mask_from_logit_map(logits);
  r.width = image.width;
  r.height = image.height;
  r.mask = std::move(mask.values);
  r.lesion_probability = data::probability_map(logits).pixels;
  r.class_names = class_names();
  r.confidence = r.class_probabilities[r.predicted];
  return r;
}

}  // namespace sono
