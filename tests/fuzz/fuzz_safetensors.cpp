// libFuzzer target: a safetensors file (8-byte header length, JSON header, tensor bytes) through
// the real loader, then its metadata through the checkpoint card parser, as predict and
// --resume read them (model building is left out: seconds per run, and the card checks that
// guard it belong to the parser).
#include "fuzz_input.h"
#include "layers/safetensors.h"
#include "tools/app/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sono::fuzz::MemoryFile file;
  const std::string& path = file.write(data, size);
  sono::fuzz::expect_clean_outcome("load_safetensors", [&] {
    sono::nn::SafetensorsFile loaded = sono::nn::load_safetensors(path);
    // Touch every element: a tensor whose storage is shorter than its shape says shows here.
    volatile uint8_t checksum = 0;
    for (auto& [name, t] : loaded.tensors) {
      const auto* bytes = static_cast<const uint8_t*>(t.raw_data());
      const size_t n = static_cast<size_t>(t.numel()) * sono::dtype_size(t.dtype());
      for (size_t i = 0; i < n; ++i) checksum = checksum ^ bytes[i];
    }
    sono::app::ModelCard::from_metadata(path, loaded.metadata);
  });
  return 0;
}
