// The one translation unit that compiles stb's image decoder and PNG encoder (Debian ships
// the headers; compiling them here keeps the build independent of a prebuilt libstb). The
// encoder deflates with zlib (tools/data/deflate.h).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#include <stb_image.h>
#include "tools/data/deflate.h"
#define STBIW_ZLIB_COMPRESS sono::data::png_deflate
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#pragma GCC diagnostic pop
