/* sono's C API: sono/pipeline.h for C, and for C#, Python (ctypes) or Java through their
 * foreign-function interfaces. Handles are opaque; every call that can fail returns a
 * sono_status, and sono_last_error() gives the reason of the calling thread's last failure.
 *
 *   sono_pipeline* p;
 *   if (sono_pipeline_create("seg.safetensors", "cls.safetensors", "cpu", 0, &p) != SONO_OK)
 *     fprintf(stderr, "%s\n", sono_last_error());
 *   sono_result* r;
 *   sono_pipeline_run(p, pixels, width, height, 1, 8, stride, &r);
 *   ... sono_result_confidence(r) ...
 *   sono_result_destroy(r);
 *   sono_pipeline_destroy(p);
 */
#ifndef SONO_SONO_C_H
#define SONO_SONO_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sono_status {
  SONO_OK = 0,
  SONO_ERROR_ARGUMENT = 1,      /* a null pointer, an index out of range */
  SONO_ERROR_FAILED = 2,        /* a checkpoint, image or device problem: see sono_last_error() */
  SONO_ERROR_OUT_OF_MEMORY = 3
} sono_status;

typedef struct sono_pipeline sono_pipeline;
typedef struct sono_result sono_result;

/* The reason of this thread's last failed call ("" if none); valid until its next call. */
const char* sono_last_error(void);

/* device: "cpu" or "cuda" (NULL: "cpu"); flip_tta nonzero: as predict --flip_tta. */
sono_status sono_pipeline_create(const char* segmentation_checkpoint, const char* classification_checkpoint,
                                 const char* device, int flip_tta, sono_pipeline** out);
/* The same with a refining segmenter (seg_train --lesion-view; predict's --refine_model) that
 * redraws the outline in the window around the lesion the first segmenter finds. */
sono_status sono_pipeline_create_refined(const char* segmentation_checkpoint, const char* classification_checkpoint,
                                         const char* refine_checkpoint, const char* device, int flip_tta,
                                         sono_pipeline** out);
void sono_pipeline_destroy(sono_pipeline* pipeline);

/* pixels: height rows row_stride bytes apart (0: packed), channels (1 grey, 3 RGB; 2 and 4 with
 * an ignored alpha) interleaved samples of bits_per_sample (8 or 16, native byte order).
 * Thread-safe: several threads may run one pipeline at once. */
sono_status sono_pipeline_run(const sono_pipeline* pipeline, const void* pixels, int width, int height,
                              int channels, int bits_per_sample, size_t row_stride, sono_result** out);
void sono_result_destroy(sono_result* result);

int sono_result_width(const sono_result* result);
int sono_result_height(const sono_result* result);
/* width * height values, row by row, owned by the result. */
const uint8_t* sono_result_mask(const sono_result* result);             /* 1 lesion, 0 background */
const float* sono_result_lesion_probability(const sono_result* result); /* 0..1 */
int sono_result_class_count(const sono_result* result);
const char* sono_result_class_name(const sono_result* result, int index); /* NULL when out of range */
double sono_result_class_probability(const sono_result* result, int index); /* calibrated; -1 out of range */
int sono_result_predicted_class(const sono_result* result);
double sono_result_confidence(const sono_result* result); /* the predicted class's probability */

#ifdef __cplusplus
}
#endif

#endif
