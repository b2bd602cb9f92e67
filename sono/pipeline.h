#pragma once
// sono's public C++ API: what predict does, for a program that holds the scan in memory.
//
//   sono::Pipeline pipeline("seg.safetensors", "cls.safetensors");   // loads once
//   sono::Result r = pipeline.run({pixels, width, height, 1, sono::PixelType::u8, stride});
//   r.class_names[r.predicted], r.confidence, r.mask, r.lesion_probability
//   sono::Options refined;  refined.refine_checkpoint = "refine.safetensors";  // predict's --refine_model
//
// Errors (a missing or malformed checkpoint, an image whose description does not add up, a
// device this build or machine lacks) are thrown as std::runtime_error whose what() names the
// file or field and what is wrong.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sono {

enum class PixelType { u8, u16 };

// An image in memory, not copied: `channels` interleaved samples per pixel (1 grey, 3 RGB;
// 2 and 4 have alpha, which is ignored), rows `row_stride` bytes apart (0: packed).
struct ImageView {
  const void* pixels = nullptr;
  int width = 0, height = 0, channels = 1;
  PixelType type = PixelType::u8;
  size_t row_stride = 0;
};

struct Options {
  std::string device = "cpu";  // or "cuda" where the library was built with it
  bool flip_tta = false;       // average each model with its run on the mirrored image
  // A refining segmenter (seg_train --lesion-view; predict's --refine_model) that redraws the
  // outline in the window around the lesion the segmenter finds; "" for none.
  std::string refine_checkpoint = "";
};

// All maps are the input's size, row by row (width * height values).
struct Result {
  int width = 0, height = 0;
  std::vector<uint8_t> mask;               // 1 lesion, 0 background
  std::vector<float> lesion_probability;   // 0..1; mask is where it is > 0.5 (to float rounding)
  std::vector<std::string> class_names;    // as the classifier's card lists them
  std::vector<double> class_probabilities; // calibrated (the card's temperature), sum 1
  size_t predicted = 0;                    // the most probable class
  double confidence = 0;                   // its calibrated probability
};

// The two checkpoints of predict (seg_train's and cls_train's --save-path); a refiner, as
// predict's third, in `options`. run() may be
// called from several threads at once on one Pipeline.
class Pipeline {
 public:
  Pipeline(const std::string& segmentation_checkpoint, const std::string& classification_checkpoint,
           const Options& options = {});
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  Result run(const ImageView& image) const;
  const std::vector<std::string>& class_names() const;

 private:
  struct Models;
  std::unique_ptr<Models> models_;
};

}  // namespace sono
