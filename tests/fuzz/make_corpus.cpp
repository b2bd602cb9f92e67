// Writes the fuzzers' seed corpus (tests/fuzz/corpus/<target>/) with the project's own writers:
// tiny valid files, so that libFuzzer starts from inputs that reach deep into each parser, and a
// few malformed ones at the edges the loaders check (truncation, lying lengths).
//   make_corpus tests/fuzz/corpus
#include <stb_image_write.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "layers/safetensors.h"
#include "tools/app/checkpoint.h"

namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& file, const std::string& bytes) {
  std::ofstream(file, std::ios::binary) << bytes;
}

// A 2x2 RGB picture with four distinct colours, in each format stb writes.
void write_images(const fs::path& dir) {
  const unsigned char rgb[2 * 2 * 3] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255};
  const unsigned char grey_alpha[2 * 2 * 2] = {0, 255, 80, 255, 160, 255, 255, 0};
  stbi_write_png((dir / "rgb_2x2.png").c_str(), 2, 2, 3, rgb, 2 * 3);
  stbi_write_png((dir / "grey_alpha_2x2.png").c_str(), 2, 2, 2, grey_alpha, 2 * 2);
  stbi_write_bmp((dir / "rgb_2x2.bmp").c_str(), 2, 2, 3, rgb);
  stbi_write_jpg((dir / "rgb_2x2.jpg").c_str(), 2, 2, 3, rgb, 90);
  // Cut-off files: the PNG loses its end chunk, the JPEG its end marker. (A cut-off BMP is
  // still accepted, issue 15's item 8: it is findings/image/bmp_cut_short.bmp until fixed.)
  for (const char* name : {"rgb_2x2.png", "rgb_2x2.jpg"}) {
    std::string bytes = read_file(dir / name);
    write_file(dir / ("truncated_" + std::string(name)), bytes.substr(0, bytes.size() - 8));
  }
}

std::string with_header_length(std::string bytes, uint64_t length) {
  std::memcpy(bytes.data(), &length, 8);
  return bytes;
}

// A segmentation checkpoint's card over two small tensors, as float32 and as F16.
void write_safetensors(const fs::path& dir) {
  sono::app::ModelCard card;
  card.arch = "mit_b0";
  card.task = models::Task::segmentation;
  card.classes = {"lesion"};
  sono::nn::StateDict tensors{
      {"decoder.weight", sono::Tensor::from_vector({1, -2, 0.5, 65504}, {2, 2})},
      {"decoder.bias", sono::Tensor::from_vector({3}, {1}, sono::DType::f64)},
      {"optimizer.step", sono::Tensor::from_labels({7})}};
  sono::nn::save_safetensors((dir / "checkpoint.safetensors").string(), tensors, card.to_metadata());
  sono::nn::save_safetensors((dir / "checkpoint_f16.safetensors").string(), tensors, card.to_metadata(), true);
  sono::nn::save_safetensors((dir / "empty.safetensors").string(), {});

  const std::string good = read_file(dir / "checkpoint.safetensors");
  write_file(dir / "truncated.safetensors", good.substr(0, good.size() - 4));
  write_file(dir / "header_too_long.safetensors", with_header_length(good, good.size()));
  write_file(dir / "header_len_only.safetensors", good.substr(0, 8));
}

void write_command_lines(const fs::path& dir) {
  const std::pair<const char*, const char*> lines[] = {
      {"minimal", "--images-dir\n/tmp\n--save-path\n/tmp/sono_fuzz_never_written.safetensors\n"},
      {"every_flag",
       "--images-dir=/tmp\n--masks-dir=/tmp\n--save-path=/tmp/m.safetensors\n--epochs=2\n--lr=3e-4\n"
       "--batch-size=2\n--img-size=64\n--val-split=0.25\n--arch=mit_b0\n--seed=7\n--weight-decay=0.05\n"
       "--warmup-epochs=0.5\n--drop-path=0.1\n--clip-grad=1\n--workers=1\n--no-augment\n--threads=1\n"
       "--device=cpu\n--amp=off\n"},
      {"underscores", "--images_dir\n/tmp\n--save_path\n/tmp/m.safetensors\n--batch_size\n1\n--no_augment=0\n"},
      {"threads", "--images-dir\n/tmp\n--save-path\n/tmp/m.safetensors\n--threads\n2\n"},
      {"bad_values", "--images-dir\n/tmp\n--save-path\n/tmp/m.safetensors\n--epochs\n1e3\n--lr\nnan\n"},
      {"cuda_bf16", "--images-dir\n/tmp\n--save-path\n/tmp/m.safetensors\n--device\ncuda\n--amp\nbf16\n"},
      {"help", "--help\n"},
      {"missing_value", "--images-dir\n"},
  };
  for (auto& [name, text] : lines) write_file(dir / name, text);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_corpus CORPUS_DIR (writes CORPUS_DIR/{image,safetensors,cli}/)\n";
    return 2;
  }
  const fs::path root = argv[1];
  for (const char* target : {"image", "safetensors", "cli"}) fs::create_directories(root / target);
  write_images(root / "image");
  write_safetensors(root / "safetensors");
  write_command_lines(root / "cli");
  return 0;
}
