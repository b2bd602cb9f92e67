#pragma once
// The zlib stream inside a PNG (its IDAT chunks), for stb_image_write and the 16-bit writer.

namespace sono::data {

// `data` deflated by the system's zlib at its fastest level; malloc'ed (stb_image_write frees
// it), nullptr where zlib fails. The signature is stb's STBIW_ZLIB_COMPRESS hook; `quality` is
// not used. stb's own deflate at its level 8 took 45% of predict's cycles with every output
// on: zlib's level 1 writes smaller files in a third of that time.
unsigned char* png_deflate(unsigned char* data, int size, int* out_size, int quality);

}  // namespace sono::data
