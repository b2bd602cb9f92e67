// classify_scan SEG_CHECKPOINT CLS_CHECKPOINT IMAGE: the lesion and the class of one scan.
#include <cstdio>
#include <exception>
#include <memory>

#include <sono/pipeline.h>
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: classify_scan SEG_CHECKPOINT CLS_CHECKPOINT IMAGE\n");
    return 2;
  }
  int width, height, channels;
  std::unique_ptr<unsigned char, void (*)(void*)> pixels(stbi_load(argv[3], &width, &height, &channels, 0),
                                                         stbi_image_free);
  if (!pixels) return std::fprintf(stderr, "%s: %s\n", argv[3], stbi_failure_reason()), 1;
  try {
    sono::Pipeline pipeline(argv[1], argv[2]);
    sono::Result r = pipeline.run({pixels.get(), width, height, channels, sono::PixelType::u8, size_t(width) * channels});
    size_t lesion = 0;
    for (unsigned char m : r.mask) lesion += m;
    std::printf("Predicted class: %s (%.2f confidence)\nProbabilities:", r.class_names[r.predicted].c_str(),
                r.confidence);
    for (size_t c = 0; c < r.class_names.size(); ++c)
      std::printf("%s %s %.4f", c ? "," : "", r.class_names[c].c_str(), r.class_probabilities[c]);
    std::printf("\nLesion: %.1f%% of the image\n", 100.0 * lesion / r.mask.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "classify_scan: %s\n", e.what());
    return 1;
  }
  return 0;
}
