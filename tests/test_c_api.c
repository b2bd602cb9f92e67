/* The C API (sono/sono_c.h) from C, linked with libsono.so alone.
 *   test_c_api SOURCE_DIR
 * Prints the prediction on a sample scan in predict's words, so a script can compare the two. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sono/sono_c.h"
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

static int failures = 0;

#define EXPECT(cond)                                                       \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond);   \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

static void path(char* out, size_t size, const char* dir, const char* file) { snprintf(out, size, "%s/%s", dir, file); }

static void check_errors(const char* seg, const char* cls) {
  sono_pipeline* p = NULL;
  EXPECT(sono_pipeline_create("no_such_model.safetensors", cls, "cpu", 0, &p) == SONO_ERROR_FAILED);
  EXPECT(strstr(sono_last_error(), "no_such_model.safetensors") != NULL);
  EXPECT(p == NULL);
  EXPECT(sono_pipeline_create(seg, cls, "tpu", 0, &p) == SONO_ERROR_FAILED);
  EXPECT(strstr(sono_last_error(), "tpu") != NULL);
  EXPECT(sono_pipeline_create(NULL, cls, NULL, 0, &p) == SONO_ERROR_ARGUMENT);
  EXPECT(strstr(sono_last_error(), "NULL") != NULL);
  EXPECT(sono_pipeline_create_refined(seg, cls, NULL, NULL, 0, &p) == SONO_ERROR_ARGUMENT);
  EXPECT(strstr(sono_last_error(), "sono_pipeline_create_refined") != NULL);
  EXPECT(sono_pipeline_create_refined(seg, cls, seg, NULL, 0, &p) == SONO_ERROR_FAILED);
  EXPECT(strstr(sono_last_error(), "not a refining segmenter") != NULL);
  EXPECT(p == NULL);
}

/* The run's maps and numbers hold together: probabilities sum to 1, the prediction is the
 * most probable class, the mask is where the lesion probability is over one half. */
static void check_consistent(const sono_result* r, int width, int height) {
  int n = sono_result_class_count(r), best = 0;
  double sum = 0;
  EXPECT(sono_result_width(r) == width && sono_result_height(r) == height);
  EXPECT(n == 3);
  for (int c = 0; c < n; ++c) {
    sum += sono_result_class_probability(r, c);
    if (sono_result_class_probability(r, c) > sono_result_class_probability(r, best)) best = c;
  }
  EXPECT(fabs(sum - 1) < 1e-6); /* float32 softmax */
  EXPECT(sono_result_predicted_class(r) == best);
  EXPECT(sono_result_confidence(r) == sono_result_class_probability(r, best));
  EXPECT(sono_result_class_name(r, n) == NULL && sono_result_class_probability(r, -1) == -1);
  const uint8_t* mask = sono_result_mask(r);
  const float* prob = sono_result_lesion_probability(r);
  size_t disagree = 0;
  for (size_t i = 0; i < (size_t)width * height; ++i)
    if (fabsf(prob[i] - 0.5f) > 1e-6f && (prob[i] > 0.5f) != (mask[i] == 1)) ++disagree;
  EXPECT(disagree == 0);
}

static void print_prediction(const sono_result* r) {
  const uint8_t* mask = sono_result_mask(r);
  size_t lesion = 0, n = (size_t)sono_result_width(r) * sono_result_height(r);
  for (size_t i = 0; i < n; ++i) lesion += mask[i];
  printf("Predicted class: %s (%.2f confidence)\nProbabilities:",
         sono_result_class_name(r, sono_result_predicted_class(r)), sono_result_confidence(r));
  for (int c = 0; c < sono_result_class_count(r); ++c)
    printf("%s %s %.4f", c ? "," : "", sono_result_class_name(r, c), sono_result_class_probability(r, c));
  printf("\nLesion: %.1f%% of the image\n", 100.0 * lesion / n);
}

/* A refiner redraws the outline (benign_10's changes) and leaves the classes as they were. */
static void check_refined(const char* seg, const char* cls, const sono_result* plain, const unsigned char* pixels) {
  sono_pipeline* p = NULL;
  sono_result* r = NULL;
  int width = sono_result_width(plain), height = sono_result_height(plain);
  if (sono_pipeline_create_refined(seg, cls, SONO_SHIPPED_REFINE, NULL, 0, &p) != SONO_OK ||
      sono_pipeline_run(p, pixels, width, height, 1, 8, 0, &r) != SONO_OK) {
    fprintf(stderr, "refined: %s\n", sono_last_error());
    ++failures;
    sono_pipeline_destroy(p);
    return;
  }
  check_consistent(r, width, height);
  EXPECT(memcmp(sono_result_mask(r), sono_result_mask(plain), (size_t)width * height) != 0);
  for (int c = 0; c < sono_result_class_count(r); ++c)
    EXPECT(sono_result_class_probability(r, c) == sono_result_class_probability(plain, c));
  sono_result_destroy(r);
  sono_pipeline_destroy(p);
}

int main(int argc, char** argv) {
  if (argc != 2) return fprintf(stderr, "usage: test_c_api SOURCE_DIR\n"), 2;
  const char *seg = SONO_SHIPPED_SEG, *cls = SONO_SHIPPED_CLS;
  char scan[4096];
  path(scan, sizeof scan, argv[1], "tools/samples/benign_10.png");
  check_errors(seg, cls);

  sono_pipeline* p = NULL;
  if (sono_pipeline_create(seg, cls, NULL, 0, &p) != SONO_OK) return fprintf(stderr, "%s\n", sono_last_error()), 1;
  int width, height, channels;
  unsigned char* pixels = stbi_load(scan, &width, &height, &channels, 1);
  if (!pixels) return fprintf(stderr, "%s: %s\n", scan, stbi_failure_reason()), 1;

  sono_result* r = NULL;
  EXPECT(sono_pipeline_run(p, pixels, width, height, 1, 12, 0, &r) == SONO_ERROR_ARGUMENT);
  EXPECT(strstr(sono_last_error(), "bits_per_sample 12") != NULL);
  EXPECT(sono_pipeline_run(p, pixels, width, height, 1, 8, (size_t)width - 1, &r) == SONO_ERROR_FAILED);
  EXPECT(strstr(sono_last_error(), "bytes apart") != NULL);
  EXPECT(r == NULL);

  if (sono_pipeline_run(p, pixels, width, height, 1, 8, 0, &r) != SONO_OK)
    return fprintf(stderr, "%s\n", sono_last_error()), 1;
  EXPECT(strcmp(sono_last_error(), "") == 0);
  check_consistent(r, width, height);
  print_prediction(r);
  check_refined(seg, cls, r, pixels);

  sono_result_destroy(r);
  sono_pipeline_destroy(p);
  stbi_image_free(pixels);
  if (failures) fprintf(stderr, "%d checks failed\n", failures);
  return failures ? 1 : 0;
}
