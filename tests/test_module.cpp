// Module naming, state dicts and safetensors round trips; bad files give clear errors.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "layers/activation.h"
#include "layers/conv.h"
#include "layers/init.h"
#include "layers/linear.h"
#include "layers/norm.h"
#include "layers/safetensors.h"

using namespace sono;
using namespace sono::nn;

namespace {

struct Block : Module {
  Block() {
    fc = register_module("fc", std::make_shared<Linear>(5, 3));
    norm = register_module("norm", std::make_shared<BatchNorm2d>(3));
    seq = register_module("seq", std::make_shared<Sequential>());
    seq->append(std::make_shared<Linear>(3, 2, false));
    seq->append(std::make_shared<GELU>());
  }
  std::shared_ptr<Linear> fc;
  std::shared_ptr<BatchNorm2d> norm;
  std::shared_ptr<Sequential> seq;
};

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("sono_test_" + name)).string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

}  // namespace

TEST_CASE("parameter and buffer names match torch's state_dict keys") {
  Block b;
  std::vector<std::string> names;
  for (auto& [n, t] : b.state_dict()) names.push_back(n);
  CHECK(names == std::vector<std::string>{"fc.bias", "fc.weight", "norm.bias", "norm.num_batches_tracked",
                                          "norm.running_mean", "norm.running_var", "norm.weight",
                                          "seq.0.weight"});
  CHECK(b.num_parameters() == 5 * 3 + 3 + 3 + 3 + 3 * 2);
}

// A model built for a checkpoint load (load_checkpoint) draws nothing and computes nothing
// from its draws: the load overwrites every parameter.
TEST_CASE("under SkipRandomFill the initialisers give zeros and init::assign changes nothing") {
  Tensor kept = Tensor::ones({2, 3});
  {
    SkipRandomFill skip;
    CHECK(nn::init::uniform({4}, 0.5).to_vector() == std::vector<double>(4, 0.0));
    nn::Conv2d conv(3, 2, 3, {1, 1, 1, 1});
    CHECK(conv.weight.to_vector() == std::vector<double>(54, 0.0));
    nn::init::fan_out_normal_(conv.weight);
    CHECK(conv.weight.to_vector() == std::vector<double>(54, 0.0));
    nn::init::assign(kept, Tensor::zeros({2, 3}));
    CHECK(kept.to_vector() == std::vector<double>(6, 1.0));
  }
  nn::init::assign(kept, Tensor::zeros({2, 3}));
  CHECK(kept.to_vector() == std::vector<double>(6, 0.0));
  const std::vector<double> drawn = nn::init::uniform({64}, 0.5).to_vector();
  CHECK(*std::max_element(drawn.begin(), drawn.end()) > 0.3);
  nn::Conv2d wide(16, 64, 3, {1, 1, 1, 1});
  nn::init::fan_out_normal_(wide.weight);  // std sqrt(2 / (64 * 3 * 3))
  double squares = 0;
  for (double v : wide.weight.to_vector()) squares += v * v;
  CHECK(std::sqrt(squares / wide.weight.numel()) == doctest::Approx(std::sqrt(2.0 / 576)).epsilon(0.05));
}

TEST_CASE("safetensors round trip keeps values, dtypes and metadata") {
  Block a, b;
  std::string path = temp_path("roundtrip.safetensors");
  save_safetensors(path, a.state_dict(), {{"arch", "block"}});
  SafetensorsFile f = load_safetensors(path);
  CHECK(f.metadata.at("arch") == "block");
  CHECK(f.tensors.at("norm.num_batches_tracked").dtype() == DType::i64);
  b.load_state_dict(f.tensors);
  for (auto& [name, t] : a.state_dict()) CHECK(test::max_abs_diff(t, b.state_dict().at(name)) == 0);
  std::filesystem::remove(path);
}

TEST_CASE("float32 saved as F16 rounds to nearest even, overflows to inf, keeps subnormals") {
  const double u = std::ldexp(1.0, -11), tiny = std::ldexp(1.0, -24);  // half ulp at 1; least half
  std::vector<double> in = {0.5, -2.0, 65504.0, 1 + u, 1 + 3 * u, 70000.0, tiny, tiny / 2, 3 * tiny / 2, 1.0 / 3};
  std::vector<double> want = {0.5, -2.0, 65504.0, 1.0, 1 + 4 * u, INFINITY, tiny, 0.0, 2 * tiny, 0.333251953125};
  Tensor t = Tensor::from_vector(in, {static_cast<int64_t>(in.size())});
  std::string path = temp_path("half.safetensors");
  save_safetensors(path, {{"w", t}, {"steps", Tensor::from_labels({7})}}, {}, true);
  SafetensorsFile f = load_safetensors(path);
  CHECK(f.tensors.at("w").to_vector() == want);
  CHECK(f.tensors.at("steps").to_labels() == std::vector<int64_t>{7});  // integers stay exact
  std::filesystem::remove(path);
}

// Every one of the 65,536 F16 bit patterns, from a file written by hand, decodes to its value
// (8 at a time with F16C, the rest one by one): normals, subnormals, signed zeros, infinities,
// NaNs.
TEST_CASE("every F16 value loads exactly") {
  const std::string header = R"({"h":{"dtype":"F16","shape":[65536],"data_offsets":[0,131072]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  bytes += header;
  for (uint32_t h = 0; h < 65536; ++h) bytes += {static_cast<char>(h & 0xff), static_cast<char>(h >> 8)};
  const std::string path = temp_path("all_halves.safetensors");
  std::ofstream(path, std::ios::binary) << bytes;
  const std::vector<double> loaded = load_safetensors(path).tensors.at("h").to_vector();
  std::filesystem::remove(path);
  REQUIRE(loaded.size() == 65536);
  int wrong = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    const double sign = h & 0x8000 ? -1.0 : 1.0;
    const double want = exponent == 31 ? (mantissa ? NAN : sign * INFINITY)
                        : exponent == 0 ? sign * std::ldexp(mantissa, -24)
                                        : sign * std::ldexp(1024 + mantissa, exponent - 25);
    const bool same = std::isnan(want) ? std::isnan(loaded[h])
                                       : loaded[h] == want && std::signbit(loaded[h]) == std::signbit(want);
    wrong += !same;
  }
  CHECK(wrong == 0);
}

TEST_CASE("state dict mismatches name the key and both shapes") {
  Block b;
  StateDict s = b.state_dict();
  s["fc.weight"] = Tensor::zeros({3, 4});
  CHECK_THROWS_WITH_AS(b.load_state_dict(s), doctest::Contains("'fc.weight' has shape [3, 4] but the model expects [3, 5]"), Error);
  s = b.state_dict();
  s.erase("norm.running_var");
  CHECK_THROWS_WITH_AS(b.load_state_dict(s), doctest::Contains("missing key 'norm.running_var'"), Error);
  s = b.state_dict();
  s["extra"] = Tensor::zeros({1});
  CHECK_THROWS_WITH_AS(b.load_state_dict(s), doctest::Contains("unexpected key 'extra'"), Error);
}

// What models::load_backbone fills: a registry entry's backbone module, by name.
TEST_CASE("child() finds a direct child by name, and names the children when it has none of that name") {
  Block b;
  CHECK(&b.child("fc") == b.fc.get());
  CHECK(&b.child("seq") == b.seq.get());
  CHECK_THROWS_WITH_AS(b.child("encoder"), "module has no child 'encoder' (children: fc, norm, seq)", Error);
}

TEST_CASE("truncated or malformed safetensors files are refused with the file name") {
  Block b;
  std::string good = temp_path("good.safetensors"), bad = temp_path("bad.safetensors");
  save_safetensors(good, b.state_dict());
  std::ifstream in(good, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  write_bytes(bad, bytes.substr(0, bytes.size() - 10));
  CHECK_THROWS_WITH_AS(load_safetensors(bad), doctest::Contains("outside the file"), Error);
  write_bytes(bad, bytes.substr(0, 5));
  CHECK_THROWS_WITH_AS(load_safetensors(bad), doctest::Contains("truncated"), Error);
  write_bytes(bad, std::string("\x10\x00\x00\x00\x00\x00\x00\x00{not json here!}", 24));
  CHECK_THROWS_WITH_AS(load_safetensors(bad), doctest::Contains("not valid JSON"), Error);
  CHECK_THROWS_WITH_AS(load_safetensors(temp_path("absent.safetensors")), doctest::Contains("cannot open"), Error);
  const std::string folder = temp_path("folder.safetensors");
  std::filesystem::create_directories(folder);
  CHECK_THROWS_WITH_AS(load_safetensors(folder), doctest::Contains("folder.safetensors: is not a regular file"), Error);
  std::filesystem::remove(folder);
  std::filesystem::remove(good);
  std::filesystem::remove(bad);
}

namespace {

// A safetensors file with the given header text and `data_bytes` zero bytes of data.
std::string crafted_file(const std::string& header, size_t data_bytes) {
  std::string path = temp_path("crafted.safetensors");
  uint64_t n = header.size();
  write_bytes(path, std::string(reinterpret_cast<const char*>(&n), 8) + header + std::string(data_bytes, '\0'));
  return path;
}

std::string load_error(const std::string& header, size_t data_bytes) {
  std::string path = crafted_file(header, data_bytes);
  try {
    load_safetensors(path);
  } catch (const Error& e) {
    std::filesystem::remove(path);
    return e.what();
  }
  std::filesystem::remove(path);
  return "(loaded)";
}

}  // namespace

TEST_CASE("hostile safetensors headers are refused before any allocation, naming the file and tensor") {
  const std::string file = temp_path("crafted.safetensors");
  auto refused = [&](const std::string& header, size_t data_bytes, const std::string& why) {
    std::string e = load_error(header, data_bytes);
    INFO(header.substr(0, 200) << " -> " << e);
    CHECK(e.find(file) == 0);
    CHECK(e.find(why) != std::string::npos);
  };
  // 2305843009213710336 * 4 * 4 bytes wraps to 262144 in int64 arithmetic.
  refused(R"({"w":{"dtype":"F32","shape":[2305843009213710336,4,1,1],"data_offsets":[0,262144]}})", 262144,
          "'w' has shape [2305843009213710336, 4, 1, 1], too large");
  refused(R"({"w":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})", 0, "too large");
  refused(R"({"w":{"dtype":"F32","shape":[-2,-2],"data_offsets":[0,16]}})", 16, "'w' has a dim -2");
  refused(R"({"w":{"dtype":"F32","shape":[4.5],"data_offsets":[0,16]}})", 16, "'w' has a dim 4.5");
  refused(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16.5]}})", 17, "'w' has a data offset 16.5");
  refused(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", 16, "expected [begin, end]");
  refused(R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", 4, "at most 8 dims");
  refused(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16, "'a' and 'b' overlap");
  refused(R"({"__metadata__":"x"})", 0, "__metadata__ is not an object");
  // Nesting that would overflow the stack in dump(), for the metadata or an error message.
  refused(R"({"__metadata__":{"a":)" + std::string(100000, '[') + std::string(100000, ']') + "}}", 0,
          "header nests deeper than 8 levels");
  refused(R"({"w":{"dtype":"F32","shape":)" + std::string(100000, '[') + std::string(100000, ']') + "}}", 0,
          "header nests deeper than 8 levels");
  // Brackets inside strings, escaped quotes included, do not nest.
  CHECK(load_error(R"({"__metadata__":{"a\"[[[[[[[[[[":"[[[[[[[[[[\"{{{{{{{{{{"}})", 0) == "(loaded)");
  std::string many = "{";
  for (int i = 0; i <= 65536; ++i) many += (i ? ",\"" : "\"") + std::to_string(i) + R"(":{"dtype":"F32","shape":[0],"data_offsets":[0,0]})";
  refused(many + "}", 0, "65537 tensors, more than the limit of 65536");
  std::string huge_length(8, '\0');
  huge_length[4] = 1;  // 2^32 bytes of header
  write_bytes(file, huge_length + "{}");
  CHECK_THROWS_WITH_AS(load_safetensors(file), doctest::Contains("exceeds the limit of 104857600 bytes"), Error);
  std::filesystem::remove(file);
}

TEST_CASE("shape_numel and Tensor::empty refuse shapes whose size overflows int64") {
  CHECK_THROWS_WITH_AS(shape_numel({2305843009213710336, 4, 1, 1}), doctest::Contains("more elements"), Error);
  CHECK_THROWS_WITH_AS(Tensor::empty({1152921504606846976, 2}), doctest::Contains("more bytes"), Error);
  CHECK(shape_numel({3, 0, 4611686018427387904}) == 0);
}

TEST_CASE("a failed save leaves the previous file untouched") {
  CHECK_THROWS_WITH_AS(save_safetensors("/nonexistent_dir/x.safetensors", {}), doctest::Contains("cannot write"), Error);
}

TEST_CASE("to(DType) converts float parameters and buffers in place, integer buffers stay") {
  Block b;
  Tensor handle = b.fc->weight;
  const auto before = handle.to_vector();
  b.to(DType::f64);
  CHECK(handle.dtype() == DType::f64);  // the layer's handle sees the conversion
  CHECK(handle.to_vector() == before);
  CHECK(b.norm->running_var.dtype() == DType::f64);
  CHECK(b.norm->num_batches_tracked.dtype() == DType::i64);
  CHECK(b.seq->forward(Tensor::ones({2, 3}, DType::f64)).dtype() == DType::f64);
}
