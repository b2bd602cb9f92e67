#pragma once
// safetensors, the public format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian data.
#include <map>
#include <string>

#include "layers/module.h"

namespace sono::nn {

struct SafetensorsFile {
  StateDict tensors;                          // on the CPU; F16/BF16 widened to float32
  std::map<std::string, std::string> metadata;
};

// Throws sono::Error naming the file and what is wrong (truncated, bad header, bad offsets...).
SafetensorsFile load_safetensors(const std::string& path);

// Writes through AtomicFile (tensor/atomic_file.h): a crash never leaves half a file and
// a failed write never replaces a good one. `float32_as_f16` stores float32 tensors as F16
// (round to nearest even): half the size, for shipping weights; loading widens them back.
void save_safetensors(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata = {}, bool float32_as_f16 = false);

}  // namespace sono::nn
