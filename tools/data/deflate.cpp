#include "tools/data/deflate.h"

#include <zlib.h>

#include <cstdlib>

namespace sono::data {

unsigned char* png_deflate(unsigned char* data, int size, int* out_size, int) {
  uLongf capacity = compressBound(static_cast<uLong>(size));
  auto* out = static_cast<unsigned char*>(std::malloc(capacity));
  if (out && compress2(out, &capacity, data, static_cast<uLong>(size), Z_BEST_SPEED) == Z_OK) {
    *out_size = static_cast<int>(capacity);
    return out;
  }
  std::free(out);
  return nullptr;
}

}  // namespace sono::data
