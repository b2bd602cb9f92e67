#include "sono/sono_c.h"

#include <new>
#include <string>

#include "sono/pipeline.h"

struct sono_pipeline {
  sono::Pipeline pipeline;
};

struct sono_result {
  sono::Result result;
};

namespace {

thread_local std::string last_error;

sono_status failure(sono_status status, const std::string& reason) {
  last_error = reason;
  return status;
}

// Runs `body`, turning what it throws into a status and this thread's message: no exception
// may cross into C.
template <typename Body>
sono_status guarded(Body body) {
  last_error.clear();
  try {
    body();
    return SONO_OK;
  } catch (const std::bad_alloc&) {
    return failure(SONO_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return failure(SONO_ERROR_FAILED, e.what());
  } catch (...) {
    return failure(SONO_ERROR_FAILED, "unknown error");
  }
}

bool valid_class(const sono_result* r, int index) {
  return r && index >= 0 && size_t(index) < r->result.class_probabilities.size();
}

sono_status create(const char* function, const char* segmentation_checkpoint, const char* classification_checkpoint,
                   const char* refine_checkpoint, const char* device, int flip_tta, sono_pipeline** out) {
  if (!segmentation_checkpoint || !classification_checkpoint || !refine_checkpoint || !out)
    return failure(SONO_ERROR_ARGUMENT, std::string(function) + ": a checkpoint path or the output is NULL");
  return guarded([&] {
    *out = new sono_pipeline{sono::Pipeline(segmentation_checkpoint, classification_checkpoint,
                                            {device ? device : "cpu", flip_tta != 0, refine_checkpoint})};
  });
}

}  // namespace

extern "C" {

const char* sono_last_error(void) { return last_error.c_str(); }

sono_status sono_pipeline_create(const char* segmentation_checkpoint, const char* classification_checkpoint,
                                 const char* device, int flip_tta, sono_pipeline** out) {
  return create("sono_pipeline_create", segmentation_checkpoint, classification_checkpoint, "", device, flip_tta, out);
}

sono_status sono_pipeline_create_refined(const char* segmentation_checkpoint, const char* classification_checkpoint,
                                         const char* refine_checkpoint, const char* device, int flip_tta,
                                         sono_pipeline** out) {
  return create("sono_pipeline_create_refined", segmentation_checkpoint, classification_checkpoint, refine_checkpoint,
                device, flip_tta, out);
}

void sono_pipeline_destroy(sono_pipeline* pipeline) { delete pipeline; }

sono_status sono_pipeline_run(const sono_pipeline* pipeline, const void* pixels, int width, int height,
                              int channels, int bits_per_sample, size_t row_stride, sono_result** out) {
  if (!pipeline || !pixels || !out)
    return failure(SONO_ERROR_ARGUMENT, "sono_pipeline_run: the pipeline, the pixels or the output is NULL");
  if (bits_per_sample != 8 && bits_per_sample != 16)
    return failure(SONO_ERROR_ARGUMENT,
                   "sono_pipeline_run: bits_per_sample " + std::to_string(bits_per_sample) + ": expected 8 or 16");
  sono::ImageView view{pixels, width, height, channels,
                       bits_per_sample == 16 ? sono::PixelType::u16 : sono::PixelType::u8, row_stride};
  return guarded([&] { *out = new sono_result{pipeline->pipeline.run(view)}; });
}

void sono_result_destroy(sono_result* result) { delete result; }

int sono_result_width(const sono_result* r) { return r ? r->result.width : 0; }
int sono_result_height(const sono_result* r) { return r ? r->result.height : 0; }
const uint8_t* sono_result_mask(const sono_result* r) { return r ? r->result.mask.data() : nullptr; }
const float* sono_result_lesion_probability(const sono_result* r) {
  return r ? r->result.lesion_probability.data() : nullptr;
}
int sono_result_class_count(const sono_result* r) { return r ? int(r->result.class_probabilities.size()) : 0; }
const char* sono_result_class_name(const sono_result* r, int index) {
  return valid_class(r, index) ? r->result.class_names[size_t(index)].c_str() : nullptr;
}
double sono_result_class_probability(const sono_result* r, int index) {
  return valid_class(r, index) ? r->result.class_probabilities[size_t(index)] : -1;
}
int sono_result_predicted_class(const sono_result* r) { return r ? int(r->result.predicted) : -1; }
double sono_result_confidence(const sono_result* r) { return r ? r->result.confidence : -1; }

}  // extern "C"
