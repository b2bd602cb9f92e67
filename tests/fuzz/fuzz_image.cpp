// libFuzzer target: an image file (PNG, JPEG, BMP or anything else stb recognises) through the
// tools' loaders: the header read of the dataset scan, the image decode, the mask decode.
#include "fuzz_input.h"
#include "tools/data/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sono::fuzz::MemoryFile file;
  const std::string& path = file.write(data, size);
  sono::fuzz::expect_clean_outcome("read_image_size", [&] { sono::data::read_image_size(path); });
  sono::fuzz::expect_clean_outcome("load_image", [&] { sono::data::load_image(path); });
  sono::fuzz::expect_clean_outcome("load_mask", [&] { sono::data::load_mask({path}); });
  return 0;
}
