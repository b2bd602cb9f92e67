// The tools' shared code in-process: checkpoint cards checked before a model is built from
// them, predict's input normalised as its card says, flags checked before any work.
#include <algorithm>
#include <stb_image.h>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "helpers.h"
#include "layers/safetensors.h"
#include "models/convnext.h"
#include "tools/app/checkpoint.h"
#include "tools/app/csv_table.h"
#include "tools/app/html_report.h"
#include "tools/app/explain.h"
#include "tools/app/inference.h"
#include "tools/app/runtime.h"
#include "tools/app/training.h"
#include "tools/data/metrics.h"

using namespace sono;
using namespace sono::test;
namespace fs = std::filesystem;

namespace {

app::ModelCard classifier_card() {
  app::ModelCard card;
  card.arch = "convnext_atto";
  card.task = models::Task::classification;
  card.classes = {"benign", "malignant", "normal"};
  card.in_channels = 4;
  card.img_size = 32;
  return card;
}

app::ModelCard resnet18_segmenter_card() {
  app::ModelCard card;
  card.arch = "resnet18";
  card.task = models::Task::segmentation;
  card.classes = {"lesion"};
  card.in_channels = 3;
  card.img_size = 64;
  return card;
}

// The card of `card` with one key replaced, in a file without tensors: the card is checked
// before the model is built, so the weights never matter.
std::string load_error(const TempDir& dir, const app::ModelCard& card, const std::string& key,
                       const std::string& value) {
  std::map<std::string, std::string> meta = card.to_metadata();
  meta[key] = value;
  const std::string path = (dir / "card.safetensors").string();
  nn::save_safetensors(path, {}, meta);
  try {
    app::load_checkpoint(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(loaded)";
}

data::Image ramp_image(int height, int width) {
  data::Image image(height, width, 3);
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = float(i % 29) / 28;
  return image;
}

// The error read_training_options gives for `flags` (with the flags every run needs), or "".
std::string training_options_error(const TempDir& dir, const std::vector<std::string>& flags) {
  app::Cli cli("seg_train", "");
  app::add_training_options(cli, {.arch = "mit_b0", .batch_size = 4, .weight_decay = 1e-2, .drop_path = 0.1});
  std::vector<std::string> args = {"seg_train", "--images-dir", dir.path.string(), "--save-path",
                                   (dir / "m.safetensors").string()};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  try {
    cli.parse(static_cast<int>(argv.size()), argv.data());
    app::read_training_options(cli, models::Task::segmentation);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("--threads and --workers are bounded by the machine: 4 per core") {
  const int64_t max = 4 * std::max(1u, std::thread::hardware_concurrency());
  for (int64_t threads : {max + 1, int64_t{100000}, int64_t{2147483647}, int64_t{-1}})
    CHECK_THROWS_WITH_AS(app::set_threads(threads),
                         doctest::Contains(("--threads " + std::to_string(threads) + ": must be from 0 to " +
                                            std::to_string(max)).c_str()),
                         Error);
  CHECK_NOTHROW(app::set_threads(max));
  app::set_threads(2);
  TempDir dir;
  CHECK(training_options_error(dir, {"--workers", "100000"}) ==
        "--workers 100000: must be from 1 to " + std::to_string(max) + " (4 per core on this machine)");
  CHECK(training_options_error(dir, {"--workers", std::to_string(max)}) == "");
}

TEST_CASE("training flags out of range are refused as typed, naming the flag") {
  TempDir dir;
  CHECK(training_options_error(dir, {"--drop-path", "2"}) ==
        "--drop-path 2: must be at least 0 and below 1 (the stochastic depth of the last block)");
  CHECK(training_options_error(dir, {"--drop-path", "1e0"}).rfind("--drop-path 1e0: ", 0) == 0);
  CHECK(training_options_error(dir, {"--weight-decay", "-0.5"}) == "--weight-decay -0.5: must be 0 or more");
  CHECK(training_options_error(dir, {"--clip-grad", "-1"}) == "--clip-grad -1: must be 0 (off) or more");
  CHECK(training_options_error(dir, {"--drop-path", "0.99"}) == "");
}

TEST_CASE("a warmup not shorter than the run is cut to half the run") {
  CHECK(app::warmup_within_run(2, 20) == 2);
  CHECK(app::warmup_within_run(0, 1) == 0);
  std::ostringstream note;
  std::streambuf* const console = std::cout.rdbuf(note.rdbuf());
  const double one = app::warmup_within_run(2, 2);
  std::cout.rdbuf(console);
  CHECK(one == 1);
  CHECK(note.str() == "note: --warmup-epochs 2 is not shorter than --epochs 2: warming up for 1 epoch (half the run)\n");
  CHECK(app::warmup_within_run(2, 1) == 0.5);
  CHECK(app::warmup_within_run(5, 3) == 1.5);
}

TEST_CASE("--keep-upright and --any-orientation cannot both be given") {
  TempDir dir;
  CHECK(training_options_error(dir, {"--keep-upright", "--any-orientation"}) ==
        "--keep-upright and --any-orientation: give one or the other");
  CHECK(training_options_error(dir, {"--any-orientation"}) == "");
}

TEST_CASE("--only-fold names one fold of --folds") {
  TempDir dir;
  CHECK(training_options_error(dir, {"--only-fold", "1"}) == "--only-fold 1: it needs --folds");
  CHECK(training_options_error(dir, {"--folds", "5", "--only-fold", "6"}) == "--only-fold 6: must be 0 (every fold) or 1..5");
  CHECK(training_options_error(dir, {"--folds", "5", "--only-fold", "-1"}) == "--only-fold -1: must be 0 (every fold) or 1..5");
  CHECK(training_options_error(dir, {"--folds", "5", "--only-fold", "5"}) == "");
}

TEST_CASE("--pretrained with {fold}: every fold's file must exist, and it needs --folds") {
  TempDir dir;
  const std::string pattern = (dir / "seg.fold{fold}.safetensors").string();
  CHECK(training_options_error(dir, {"--pretrained", pattern}) ==
        "--pretrained " + pattern + ": {fold} stands for a fold's number; it needs --folds");
  for (int fold = 1; fold <= 2; ++fold)
    nn::save_safetensors((dir / ("seg.fold" + std::to_string(fold) + ".safetensors")).string(), {});
  CHECK(training_options_error(dir, {"--pretrained", pattern, "--folds", "2"}) == "");
  CHECK(training_options_error(dir, {"--pretrained", pattern, "--folds", "3"}) ==
        (dir / "seg.fold3.safetensors").string() + ": --pretrained file not found");
}

TEST_CASE("an output folder that cannot be created is refused up front, naming the flag and the path") {
  TempDir dir;
  std::ofstream(dir / "file").close();
  const std::string file = (dir / "file").string();
  CHECK(training_options_error(dir, {"--log-dir", file + "/logs"}) ==
        "--log-dir " + file + "/logs: cannot be created: " + file + " is not a folder");
  CHECK(training_options_error(dir, {"--log-dir", file}) == "--log-dir " + file + ": " + file + " is not a folder");
  CHECK(training_options_error(dir, {"--log-dir", (dir / "new" / "logs").string()}) == "");
  CHECK_FALSE(fs::exists(dir / "new"));  // checked, not created
}

TEST_CASE("run_tool turns a filesystem error into one line naming the path") {
  std::ostringstream err;
  std::streambuf* saved = std::cerr.rdbuf(err.rdbuf());
  const int status = app::run_tool("tool", [] {
    fs::create_directories("/proc/self/status/x");
    return 0;
  });
  std::cerr.rdbuf(saved);
  CHECK(status == 1);
  CHECK(err.str() == "tool: error: /proc/self/status/x: Not a directory\n");
}

TEST_CASE("every card value is checked against the architecture; the error names the file and the key") {
  TempDir dir;
  const std::string path = (dir / "card.safetensors").string();
  app::ModelCard segmenter = classifier_card();
  segmenter.arch = "mit_b0";
  segmenter.task = models::Task::segmentation;
  segmenter.classes = {"lesion"};
  segmenter.in_channels = 3;
  app::ModelCard unet = segmenter;
  unet.arch = "unet_resnet18";
  unet.encoder_depth = 4;
  unet.decoder_channels = {8, 8, 8, 8};
  struct Case {
    const app::ModelCard& card;
    std::string key, value, why;
  };
  const app::ModelCard classifier = classifier_card();
  app::ModelCard viewed = classifier;
  viewed.extra["lesion_view"] = "0.5";
  const std::vector<Case> cases = {
      {classifier, "format", "sono-checkpoint-9", "expected sono-checkpoint-1"},
      {classifier, "arch", "resnet20", "unknown architecture 'resnet20'"},
      {classifier, "task", "segmentation", "convnext_atto is a classification architecture"},
      {classifier, "in_channels", "1000000", "expected 4"},
      {segmenter, "in_channels", "4", "expected 3"},
      {classifier, "img_size", "0", "from 32 to 2048"},
      {classifier, "img_size", "1000000", "from 32 to 2048"},
      {classifier, "img_size", "48", "a multiple of 32"},
      {classifier, "img_size", "64px", "expected a whole number"},
      {classifier, "num_classes", "7", "expected 3"},
      {classifier, "classes", R"(["benign"])", "2 to 1000 classes"},
      {classifier, "classes", R"(["a", "a"])", "distinct"},
      {classifier, "classes", "benign", "a JSON list of class names"},
      {segmenter, "classes", R"(["lesion", "cyst"])", R"(lists ["lesion"])"},
      {segmenter, "num_classes", "2", "expected 1"},  // a malignancy channel is listed in classes
      {classifier, "normalisation", R"({"mean": [0.5, 0.5], "std": [1, 1, 1]})", "[3 numbers]"},
      {classifier, "normalisation", R"({"mean": [0.5, 0.5, 0.5], "std": [1, 0, 1]})", "std in [0.001, 10]"},
      {classifier, "normalisation", R"({"mean": [0.5, 0.5, 300], "std": [1, 1, 1]})", "mean must be in [0, 1]"},
      {classifier, "temperature", "0", "a number from 0.01 to 100"},
      {classifier, "temperature", "1.5x", "a number from 0.01 to 100"},
      {segmenter, "empty_below", "1", "a number from 0 to 0.999"},
      {classifier, "lesion_view", "nan", "a number from 0 to 4"},
      {segmenter, "encoder_depth", "6", "a whole number from 3 to 5"},
      {segmenter, "encoder_depth", "4", "mit_b0 is built whole"},
      {classifier, "encoder_depth", "4", "a classification card has no encoder depth"},
      {segmenter, "atrous_rates", "12,24", "three whole numbers from 1 to 64"},
      {segmenter, "atrous_rates", "2,4,6,8", "three whole numbers from 1 to 64"},
      {segmenter, "atrous_rates", "0,4,6", "three whole numbers from 1 to 64"},
      {segmenter, "atrous_rates", "2,,6", "three whole numbers from 1 to 64"},
      {classifier, "atrous_rates", "2,4,6", "a classification card has no ASPP"},
      {unet, "decoder_channels", "8,8,8", "one whole number from 1 to 4096 per encoder stage"},
      {unet, "decoder_channels", "8,8,0,8", "one whole number from 1 to 4096 per encoder stage"},
      {unet, "decoder_channels", "8,8,,8", "one whole number from 1 to 4096 per encoder stage"},
      {unet, "decoder_channels", "", "one whole number from 1 to 4096 per encoder stage"},
      {classifier, "stacking", R"({"classes": ["benign", "malignant", "normal"], "scores": ["malignancy"],
         "weights": [[1, 0, 0, 1]], "bias": [0]})", R"(for its classes ["benign","malignant","normal"])"},
      {classifier, "stacking", R"({"classes": ["benign", "normal", "malignant"], "scores": ["malignancy"],
         "weights": [[1,0,0,1],[0,1,0,1],[0,0,1,1]], "bias": [0,0,0]})", "[the classifier's classes]"},
      {classifier, "stacking", R"({"classes": ["benign", "malignant", "normal"], "scores": ["size"],
         "weights": [[1,0,0,1],[0,1,0,1],[0,0,1,1]], "bias": [0,0,0]})", "\"scores\": [\"malignancy\"]"},
      {classifier, "stacking", R"({"classes": ["benign", "malignant", "normal"], "scores": ["malignancy"],
         "weights": [[1,0,0],[0,1,0],[0,0,1]], "bias": [0,0,0]})", "(classes + 1) finite numbers"},
      {classifier, "stacking", R"({"classes": ["benign", "malignant", "normal"], "scores": ["malignancy"],
         "weights": [[1,0,0,1e9],[0,1,0,1],[0,0,1,1]], "bias": [0,0,0]})", "(classes + 1) finite numbers"},
      {segmenter, "stacking", R"({"classes": ["lesion"], "scores": ["malignancy"], "weights": [[1, 0]], "bias": [0]})",
       "a segmentation card stacks nothing"},
      {classifier, "mask_channel", "soft", "expected probability"},
      {segmenter, "mask_channel", "probability", "a segmentation card reads no mask"},
      {viewed, "mask_channel", "probability", "a lesion probability channel has no lesion_view window"},
      {classifier, "mask_channel", "probability", "needs format sono-checkpoint-2"},
  };
  for (const Case& c : cases) {
    std::string e = load_error(dir, c.card, c.key, c.value);
    INFO(c.key << " = " << c.value << " -> " << e);
    CHECK(e.rfind(path + ": card key '" + c.key + "' is '" + c.value.substr(0, 20), 0) == 0);
    CHECK(e.find(c.why) != std::string::npos);
  }
}

// seg_train --atrous-rates: the card carries them, so predict rebuilds the ASPP that was trained.
TEST_CASE("a checkpoint loaded for inference predicts as the file does and is never saved") {
  TempDir dir;
  app::ModelCard card = resnet18_segmenter_card();
  card.encoder_depth = 4;
  manual_seed(5);
  auto trained = app::build_model(card);
  trained->eval();
  const std::string path = (dir / "seg.safetensors").string(), copy = (dir / "copy.safetensors").string();
  app::save_checkpoint(path, *trained, card);
  const app::LoadedModel fused = app::load_for_inference(path, models::Task::segmentation, Device::cpu);
  const Tensor x = rand64({1, 64, 64, 3}, 4).to(DType::f32);
  autograd::NoGradGuard no_grad;
  CHECK(max_abs_diff(fused.model->forward(x), trained->forward(x)) < 1e-5);
  CHECK_THROWS_WITH_AS(app::save_checkpoint(copy, *fused.model, fused.card),
                       doctest::Contains("BatchNorms are folded into its convs"), Error);
  CHECK_FALSE(fs::exists(copy));
}

TEST_CASE("a segmenter's ASPP rates go through its card into the model rebuilt from the file") {
  TempDir dir;
  app::ModelCard card = resnet18_segmenter_card();
  card.encoder_depth = 4;
  card.atrous_rates = {1, 2, 3};
  manual_seed(3);
  auto trained = app::build_model(card);
  trained->eval();
  const std::string path = (dir / "seg.safetensors").string();
  app::save_checkpoint(path, *trained, card);
  const app::LoadedModel loaded = app::load_checkpoint(path);
  CHECK(loaded.card.atrous_rates == std::array<int64_t, 3>{1, 2, 3});
  const Tensor x = rand64({1, 64, 64, 3}, 4).to(DType::f32);
  CHECK(max_abs_diff(loaded.model->forward(x), trained->forward(x)) == 0);
  // smp's rates on the same weights: at a 4x4 map (64 px, stride 16) every off-centre tap of
  // theirs reads padding, so the outputs differ.
  card.atrous_rates = {12, 24, 36};
  auto defaults = app::build_model(card);
  defaults->load_state_dict(trained->state_dict());
  defaults->eval();
  CHECK(max_abs_diff(defaults->forward(x), trained->forward(x)) > 1e-4);
  CHECK(app::parse_atrous_rates("2,4,6") == std::array<int64_t, 3>{2, 4, 6});
  CHECK(app::atrous_rates_text({2, 4, 6}) == "2,4,6");
}

TEST_CASE("--pretrained with a ResNet segmenter's checkpoint starts a ResNet classifier from its encoder") {
  TempDir dir;
  app::ModelCard seg_card = resnet18_segmenter_card();
  manual_seed(2);
  auto segmenter = app::build_model(seg_card);
  const std::string path = (dir / "seg.safetensors").string();
  app::save_checkpoint(path, *segmenter, seg_card);

  const models::ModelEntry& entry = models::find_model("resnet18", models::Task::classification);
  auto classifier = entry.build({.in_channels = 4, .num_classes = 3});
  const Tensor fresh_fc = classifier->state_dict().at("fc.weight").clone();
  app::load_backbone_weights(*classifier, entry, path);
  const nn::StateDict seg = segmenter->state_dict(), cls = classifier->state_dict();
  int trunk = 0;
  for (auto& [key, value] : cls) {
    INFO(key);
    if (key.starts_with("fc.") || key == "conv1.weight") continue;
    CHECK(max_abs_diff(value, seg.at("encoder." + key)) == 0);
    ++trunk;
  }
  CHECK(trunk == 119);  // every trunk entry but conv1 (122 less conv1 and fc's two)
  // The RGB stem takes the mask channel as timm's adapt_input_conv does: channel 3 copies red, all x 3/4.
  const Tensor rgb = seg.at("encoder.conv1.weight"), stem = cls.at("conv1.weight");
  CHECK(max_abs_diff(stem.slice(1, 0, 3), mul(rgb, 0.75)) < 1e-7);
  CHECK(max_abs_diff(stem.slice(1, 3, 4), mul(rgb.slice(1, 0, 1), 0.75)) < 1e-7);
  CHECK(max_abs_diff(cls.at("fc.weight"), fresh_fc) == 0);  // the head stays fresh

  seg_card.encoder_depth = 4;
  auto shallow = app::build_model(seg_card);
  const std::string depth4 = (dir / "seg_depth4.safetensors").string();
  app::save_checkpoint(depth4, *shallow, seg_card);
  CHECK(app::load_checkpoint(depth4).card.encoder_depth == 4);
  CHECK_THROWS_WITH_AS(app::load_backbone_weights(*classifier, entry, depth4),
                       doctest::Contains("is a resnet18 segmenter at encoder depth 4; its encoder lacks"), Error);

  seg_card.encoder_depth = 5;
  seg_card.arch = "resnet34";
  auto deeper = app::build_model(seg_card);
  const std::string other = (dir / "seg34.safetensors").string();
  app::save_checkpoint(other, *deeper, seg_card);
  CHECK_THROWS_WITH_AS(app::load_backbone_weights(*classifier, entry, other),
                       doctest::Contains("is a resnet34 segmenter; its encoder cannot start a resnet18 classifier"), Error);
}

TEST_CASE("--pretrained with a segmenter's checkpoint starts a segmenter on the same architecture whole") {
  TempDir dir;
  app::ModelCard card = resnet18_segmenter_card();
  manual_seed(3);
  auto trained = app::build_model(card);
  const std::string path = (dir / "seg.safetensors").string();
  app::save_checkpoint(path, *trained, card);

  const models::ModelEntry& entry = models::find_model("resnet18", models::Task::segmentation);
  card.classes = {"lesion", "malignancy"};  // seg_train --malignancy-map: a head of two channels
  REQUIRE(card.has_malignancy_channel());
  manual_seed(4);
  auto fine_tuned = app::build_model(card);
  const nn::StateDict fresh = fine_tuned->state_dict();
  const Tensor fresh_head = fresh.at("segmentation_head.0.weight").clone();
  app::load_backbone_weights(*fine_tuned, entry, path);
  const nn::StateDict from = trained->state_dict(), now = fine_tuned->state_dict();
  int loaded = 0;
  for (auto& [key, value] : now) {
    INFO(key);
    if (key.starts_with("segmentation_head.")) continue;
    CHECK(max_abs_diff(value, from.at(key)) == 0);
    ++loaded;
  }
  CHECK(loaded == static_cast<int>(now.size()) - 2);
  CHECK(max_abs_diff(now.at("segmentation_head.0.weight"), fresh_head) == 0);  // another shape: fresh

  auto same_head = app::build_model(resnet18_segmenter_card());
  app::load_backbone_weights(*same_head, entry, path);
  CHECK(max_abs_diff(same_head->state_dict().at("segmentation_head.0.weight"), from.at("segmentation_head.0.weight")) == 0);

  app::ModelCard shallow = resnet18_segmenter_card();
  shallow.encoder_depth = 4;
  CHECK_THROWS_WITH_AS(app::load_backbone_weights(*app::build_model(shallow), entry, path),
                       doctest::Contains("seg.safetensors: the segmenter does not fit the model"), Error);
  const models::ModelEntry& unet = models::find_model("unet_resnet18", models::Task::segmentation);
  CHECK_THROWS_WITH_AS(app::load_backbone_weights(*unet.build({}), unet, path),
                       doctest::Contains("is a resnet18 segmenter; it cannot start a unet_resnet18 one"), Error);
}

TEST_CASE("predict normalises its input with the card's mean and std") {
  TempDir dir;
  app::ModelCard card = classifier_card();
  auto model = app::build_model(card);
  const std::string imagenet = (dir / "imagenet.safetensors").string(), other = (dir / "other.safetensors").string();
  app::save_checkpoint(imagenet, *model, card);
  nn::SafetensorsFile file = nn::load_safetensors(imagenet);
  file.metadata["normalisation"] = R"({"mean": [0.5, 0.25, 0.0], "std": [0.5, 2.0, 1.0]})";
  nn::save_safetensors(other, file.tensors, file.metadata);

  const data::Image image = ramp_image(40, 52);
  data::Mask mask(40, 52);
  for (int y = 10; y < 30; ++y) std::fill_n(&mask.at(y, 12), 20, uint8_t{1});
  app::LoadedModel a = app::load_checkpoint(imagenet, models::Task::classification);
  app::LoadedModel b = app::load_checkpoint(other, models::Task::classification);
  std::vector<double> pa = app::classify(a, image, mask, Device::cpu);
  std::vector<double> pb = app::classify(b, image, mask, Device::cpu);

  // The input predict must build for `other`, by hand: resized, then (x - mean) / std.
  const double mean[3] = {0.5, 0.25, 0.0}, stdev[3] = {0.5, 2.0, 1.0};
  data::Image small = data::resize_bilinear(image, 32, 32);
  data::Mask small_mask = data::resize_nearest(mask, 32, 32);
  std::vector<double> x;
  for (size_t p = 0; p < 32 * 32; ++p) {
    for (int c = 0; c < 3; ++c) x.push_back((small.pixels[p * 3 + c] - float(mean[c])) / float(stdev[c]));
    x.push_back(small_mask.values[p]);
  }
  autograd::NoGradGuard no_grad;
  std::vector<double> expected = softmax((*b.model)(Tensor::from_vector(x, {1, 32, 32, 4})), -1).to_vector();
  INFO("ImageNet " << pa[0] << " " << pa[1] << " " << pa[2] << "; card " << pb[0] << " " << pb[1] << " " << pb[2]);
  REQUIRE(pb.size() == 3);
  for (size_t c = 0; c < 3; ++c) CHECK(pb[c] == doctest::Approx(expected[c]).epsilon(1e-5));
  CHECK(max_abs_diff(Tensor::from_vector(pa, {3}), Tensor::from_vector(pb, {3})) > 1e-4);
}

// cls_train --lesion-view records the view in the card; every path that classifies (predict,
// its batches, the pipeline, Grad-CAM) must then crop as training did.
TEST_CASE("a lesion-view classifier sees the window around the mask's lesion; Grad-CAM is 0 outside it") {
  TempDir dir;
  app::ModelCard card = classifier_card();
  auto model = app::build_model(card);
  const std::string whole_path = (dir / "whole.safetensors").string(), view_path = (dir / "view.safetensors").string();
  app::save_checkpoint(whole_path, *model, card);
  card.extra["lesion_view"] = "0.5";
  app::save_checkpoint(view_path, *model, card);
  app::LoadedModel whole = app::load_checkpoint(whole_path, models::Task::classification);
  app::LoadedModel view = app::load_checkpoint(view_path, models::Task::classification);

  const data::Image image = ramp_image(80, 120);
  data::Mask mask(80, 120);
  for (int y = 30; y < 46; ++y) std::fill_n(&mask.at(y, 70), 24, uint8_t{1});
  const data::Window w = app::view_window(view, mask);
  CHECK(w == data::lesion_window(mask, 0.5));
  CHECK(app::view_window(whole, mask) == data::Window{0, 0, 120, 80});
  const data::Image cropped = data::crop(image, w);
  const data::Mask cropped_mask = data::crop(mask, w);
  CHECK(app::classifier_input(view, image, mask).to_vector() ==
        app::classifier_input(whole, cropped, cropped_mask).to_vector());
  CHECK(app::classify(view, image, mask, Device::cpu) == app::classify(whole, cropped, cropped_mask, Device::cpu));
  // Without a lesion the view is the whole scan.
  const data::Mask empty(80, 120);
  CHECK(app::classify(view, image, empty, Device::cpu) == app::classify(whole, image, empty, Device::cpu));

  const data::Image heat = app::explain(view, image, mask, 1, Device::cpu, false);
  REQUIRE(heat.height == 80);
  REQUIRE(heat.width == 120);
  const data::Image in_window = app::explain(whole, cropped, cropped_mask, 1, Device::cpu, false);
  double outside = 0, inside_difference = 0;
  for (int y = 0; y < 80; ++y)
    for (int x = 0; x < 120; ++x) {
      const bool in = x >= w.x && x < w.x + w.width && y >= w.y && y < w.y + w.height;
      if (!in) outside = std::max(outside, double(heat.at(y, x, 0)));
      else inside_difference = std::max(inside_difference, std::abs(double(heat.at(y, x, 0)) - in_window.at(y - w.y, x - w.x, 0)));
    }
  CHECK(outside == 0);
  CHECK(inside_difference == 0);
}

// A segmenter whose logits are its own plus `shift` everywhere (its head's bias moved), saved
// with `card`.
app::LoadedModel shifted_segmenter(const TempDir& dir, const std::string& name, const app::ModelCard& card,
                                   nn::StateDict weights, double shift) {
  Tensor& bias = weights.at("segmentation_head.0.bias");
  bias = add(bias, shift);
  auto model = app::build_model(card);
  model->load_state_dict(weights);
  const std::string path = (dir / name).string();
  app::save_checkpoint(path, *model, card);
  return app::load_checkpoint(path, models::Task::segmentation);
}

// seg_train --lesion-view makes a refiner: predict and evaluate --refine-model must redraw the
// window around the first segmenter's lesion exactly as the refiner segments that window alone,
// leave the rest of the map as the first segmenter gave it, leave the first's call on whether
// there is a lesion, and give each scan of a batch what it gets alone.
TEST_CASE("a refining segmenter redraws the window around the first segmenter's lesion and nothing else") {
  TempDir dir;
  app::ModelCard card = resnet18_segmenter_card();
  card.encoder_depth = 4;
  manual_seed(3);
  const nn::StateDict weights = app::build_model(card)->state_dict();
  app::LoadedModel whole = shifted_segmenter(dir, "whole.safetensors", card, weights, 10);
  card.extra["lesion_view"] = "0.5";
  app::LoadedModel marks = shifted_segmenter(dir, "marks.safetensors", card, weights, 10);
  app::LoadedModel blank = shifted_segmenter(dir, "blank.safetensors", card, weights, -10);

  const data::Image image = ramp_image(80, 120), other = ramp_image(60, 50);
  data::Image first(80, 120, 1, -3.0f);
  for (int y = 30; y < 40; ++y)
    for (int x = 70; x < 82; ++x) first.at(y, x, 0) = 4;
  const data::Image nothing(60, 50, 1, -3.0f);
  const data::Window w = data::lesion_window(data::mask_from_logit_map(first), 0.5);
  REQUIRE(w.width < 120);

  const std::vector<data::Image> refined = app::refine_lesions(marks, {&other, &image}, {nothing, first}, Device::cpu);
  REQUIRE(refined.size() == 2);
  CHECK(refined[0].pixels == nothing.pixels);
  const data::Image expected =
      app::segment_scan(whole, data::crop(image, w), w.height, w.width, Device::cpu).lesion_logits;
  double inside = 0, outside = 0;
  for (int y = 0; y < 80; ++y)
    for (int x = 0; x < 120; ++x) {
      const bool in = x >= w.x && x < w.x + w.width && y >= w.y && y < w.y + w.height;
      const double got = refined[1].at(y, x, 0);
      if (in) inside = std::max(inside, std::abs(got - expected.at(y - w.y, x - w.x, 0)));
      else outside = std::max(outside, std::abs(got - first.at(y, x, 0)));
    }
  CHECK(data::mask_from_logit_map(expected).lesion_pixels() > 0);
  CHECK(inside == 0);
  CHECK(outside == 0);
  CHECK(app::refine_lesions(marks, {&image}, {first}, Device::cpu)[0].pixels == refined[1].pixels);
  // A refiner that marks nothing in the window leaves the first's outline.
  CHECK(app::refine_lesions(blank, {&image}, {first}, Device::cpu)[0].pixels == first.pixels);
  CHECK_THROWS_WITH_AS(app::check_refiner(whole, "whole.safetensors"),
                       "whole.safetensors: not a refining segmenter (it was not trained with seg_train --lesion-view)",
                       Error);
}

// The classifier predict runs: ConvNeXt-atto on RGB + mask, three classes.
models::ConvNeXtConfig atto_classifier_config() {
  models::ConvNeXtConfig config = models::convnext_config("atto");
  config.in_channels = 4;
  config.num_classes = 3;
  return config;
}

// Grad-CAM (tools/app/explain.h): the gradient it weights the features with is the class
// logit's (against central differences), and the map is the formula's.
TEST_CASE("Grad-CAM: the class logit's gradient at the features, against finite differences") {
  manual_seed(4);
  const std::vector<std::shared_ptr<nn::UnaryModule>> families = {
      std::make_shared<models::ConvNeXt>(atto_classifier_config()),
      models::create_model("resnet18", {.in_channels = 4, .num_classes = 3}, models::Task::classification)};
  for (const auto& family : families) {
    auto& model = dynamic_cast<models::Classifier&>(*family);
    const int64_t channels = family == families.front() ? 320 : 512;
    INFO(channels);
    model.eval();
    const Tensor x = rand64({1, 64, 64, 4}, 3).to(DType::f32);
    const size_t cls = 2;
    app::ClassActivation a = app::class_activation(model, x, cls);
    REQUIRE(a.features.shape() == Shape{1, 2, 2, channels});
    REQUIRE(a.gradient.shape() == a.features.shape());
    const std::vector<double> features = a.features.to_vector(), gradient = a.gradient.to_vector();
    auto logit = [&](const std::vector<double>& f) {
      autograd::NoGradGuard no_grad;
      return model.forward_head(Tensor::from_vector(f, a.features.shape())).to_vector()[cls];
    };
    const double eps = 1e-2;
    // float32 logits: the differences are good to about 1e-5
    for (size_t i = 7; i < features.size(); i += 97) {
      std::vector<double> up = features, down = features;
      up[i] += eps;
      down[i] -= eps;
      CAPTURE(i);
      CHECK(gradient[i] == doctest::Approx((logit(up) - logit(down)) / (2 * eps)).epsilon(1e-2).scale(3e-3));
    }
  }
}

TEST_CASE("Grad-CAM: ReLU of the features weighted by their channels' mean gradient, scaled to a peak of 1") {
  // 1 x 2 channels at 2 x 2 positions; alpha = mean gradient = (1, -0.5).
  const Tensor features = Tensor::from_vector({1, 0, 2, 2, 0, 4, 3, 1}, {1, 2, 2, 2});
  const Tensor gradient = Tensor::from_vector({1, -1, 2, 0, 0, -1, 1, 0}, {1, 2, 2, 2});
  const data::Image cam = app::grad_cam({features, gradient}, 2, 2);
  // raw: 1 - 0, 2 - 1, 0 - 2 -> ReLU 0, 3 - 0.5 = 2.5; peak 2.5
  const std::vector<float> expected = {1 / 2.5f, 1 / 2.5f, 0, 1};
  REQUIRE(cam.pixels.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(cam.pixels[i] == doctest::Approx(expected[i]));
  CHECK(app::grad_cam({features, mul(gradient, 0.0)}, 2, 2).pixels == std::vector<float>(4, 0.0f));
}

TEST_CASE("Grad-CAM of the flip-averaged decision: both runs' weighted features averaged before the ReLU") {
  const Tensor features = Tensor::from_vector({1, 0, 2, 2, 0, 4, 3, 1}, {1, 2, 2, 2});
  const Tensor gradient = Tensor::from_vector({1, -1, 2, 0, 0, -1, 1, 0}, {1, 2, 2, 2});
  // A mirror run that saw exactly the mirrored features and gradients changes nothing.
  const data::Image alone = app::grad_cam({features, gradient}, 2, 2);
  CHECK(app::grad_cam({features, gradient}, {app::mirror(features), app::mirror(gradient)}, 2, 2).pixels ==
        alone.pixels);
  // Another mirror run: weighted sums (1, 1, -2, 2.5) and, mirrored back, (0, 2, 1, 1) average to
  // (0.5, 1.5, -0.5, 1.75): ReLU and peak 1.75.
  const Tensor other = Tensor::from_vector({2, 0, 0, 0, 1, 0, 0, 0}, {1, 2, 2, 2});
  const Tensor other_gradient = Tensor::from_vector({4, 0, 0, 0, 0, 0, 0, 0}, {1, 2, 2, 2});
  const data::Image both = app::grad_cam({features, gradient}, {other, other_gradient}, 2, 2);
  const std::vector<float> expected = {0.5f / 1.75f, 1.5f / 1.75f, 0, 1};
  REQUIRE(both.pixels.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(both.pixels[i] == doctest::Approx(expected[i]));
}

// What --explain --flip_tta shows for a mirrored scan is its explanation mirrored, as the
// flip-averaged class probabilities are the same for both; one run's Grad-CAM is not.
TEST_CASE("Grad-CAM under --flip_tta: a mirrored scan's explanation is the scan's explanation mirrored") {
  models::ConvNeXt model(atto_classifier_config());
  model.eval();
  const Tensor x = rand64({1, 96, 96, 4}, 5).to(DType::f32), mirrored_x = app::mirror(x);
  const size_t cls = 1;
  const app::ClassActivation a = app::class_activation(model, x, cls), b = app::class_activation(model, mirrored_x, cls);
  // The largest difference between a map and the other map mirrored.
  auto mirror_difference = [](const data::Image& map, const data::Image& other) {
    const Tensor t = Tensor::from_vector(std::vector<double>(other.pixels.begin(), other.pixels.end()),
                                         {1, other.height, other.width, 1});
    return max_abs_diff(Tensor::from_vector(std::vector<double>(map.pixels.begin(), map.pixels.end()), t.shape()),
                        app::mirror(t));
  };
  CHECK(mirror_difference(app::grad_cam(b, a, 40, 40), app::grad_cam(a, b, 40, 40)) < 1e-6);
  CHECK(mirror_difference(app::grad_cam(b, 40, 40), app::grad_cam(a, 40, 40)) > 0.05);
}

// The demo runs the shipped refiner after the shipped segmenter (tools/scripts/demo.sh): on the
// sample scans' traced masks it must outline at least as well as the segmenter alone, as on the
// five folds (models/weights/README.md), and leave the normal scan's empty mask empty.
TEST_CASE("the shipped refiner outlines the demo's lesions at least as well as the shipped segmenter") {
  app::LoadedModel seg = app::load_checkpoint(SONO_SHIPPED_SEG, models::Task::segmentation);
  app::LoadedModel refiner = app::load_checkpoint(SONO_SHIPPED_REFINE, models::Task::segmentation);
  app::check_refiner(refiner, SONO_SHIPPED_REFINE);
  double first_dice = 0, refined_dice = 0;
  for (const char* name : {"benign_10", "malignant_10", "normal_102"}) {
    CAPTURE(name);
    const std::string stem = std::string(SONO_SOURCE_DIR) + "/tools/samples/" + name;
    const data::Image image = data::load_image(stem + ".png");
    const data::Mask truth = data::load_mask({stem + "_mask.png"});
    const data::Image first =
        app::segment_scan(seg, image, image.height, image.width, Device::cpu).lesion_logits;
    const data::Image refined = app::refine_lesions(refiner, {&image}, {first}, Device::cpu)[0];
    const double before = data::overlap(data::mask_from_logit_map(first), truth).dice;
    const double after = data::overlap(data::mask_from_logit_map(refined), truth).dice;
    INFO("Dice " << before << " -> " << after);
    if (truth.lesion_pixels() == 0) {
      CHECK(refined.pixels == first.pixels);
      continue;
    }
    CHECK(refined.pixels != first.pixels);
    CHECK(after > 0.65);
    first_dice += before / 2, refined_dice += after / 2;
  }
  CHECK(refined_dice >= first_dice);
}

// predict --batch_size: a folder's images go through each model in batches; every image must get
// exactly what it gets alone (predict on one file), whatever its batch.
TEST_CASE("a batch through the shipped models gives each image what it gets alone") {
  app::LoadedModel seg = app::load_checkpoint(SONO_SHIPPED_SEG, models::Task::segmentation);
  app::LoadedModel cls = app::load_checkpoint(SONO_SHIPPED_CLS, models::Task::classification);
  const int seg_size = static_cast<int>(seg.card.img_size), cls_size = static_cast<int>(cls.card.img_size);
  std::vector<Tensor> seg_inputs, cls_inputs;
  for (int i = 0; i < 3; ++i) {
    data::Image image = ramp_image(60 + 17 * i, 80 - 9 * i);
    for (float& v : image.pixels) v = std::fmod(v * (1 + i) + 0.1f * i, 1.0f);
    data::Mask mask(image.height, image.width);
    for (int y = 10; y < 30 + 5 * i; ++y) std::fill_n(&mask.at(y, 12 + i), 20, uint8_t{1});
    seg_inputs.push_back(data::model_input(image, mask, seg_size, data::InputKind::rgb, seg.card.normalisation));
    cls_inputs.push_back(data::model_input(image, app::classifier_mask(cls.card.input(), mask), cls_size, cls.card.input(),
                                           cls.card.normalisation));
  }
  for (bool flip : {false, true}) {
    CAPTURE(flip);
    const app::BatchSegmentation batch = app::segment_batch(seg, cat(seg_inputs, 0), Device::cpu, flip);
    const std::vector<double> batch_logits = batch.lesion_logits.to_vector();
    const auto batch_probabilities = app::classify(cls, cat(cls_inputs, 0), Device::cpu, flip, batch.malignancy);
    std::vector<double> alone_logits;
    for (int i = 0; i < 3; ++i) {
      const app::BatchSegmentation alone = app::segment_batch(seg, seg_inputs[i], Device::cpu, flip);
      const std::vector<double> logits = alone.lesion_logits.to_vector();
      alone_logits.insert(alone_logits.end(), logits.begin(), logits.end());
      const auto alone_probabilities = app::classify(cls, cls_inputs[i], Device::cpu, flip, alone.malignancy).front();
      if constexpr (test::kBatchBitForBit) {
        CHECK(batch_probabilities[i] == alone_probabilities);
      } else {
        REQUIRE(batch_probabilities[i].size() == alone_probabilities.size());
        for (size_t c = 0; c < alone_probabilities.size(); ++c)
          CHECK(batch_probabilities[i][c] == doctest::Approx(alone_probabilities[c]).epsilon(1e-4));
      }
    }
    REQUIRE(batch_logits.size() == alone_logits.size());
    size_t differ = 0;
    double worst = 0;
    for (size_t j = 0; j < batch_logits.size(); ++j) {
      differ += batch_logits[j] != alone_logits[j];
      worst = std::max(worst, std::abs(batch_logits[j] - alone_logits[j]));
    }
    INFO("differ " << differ << " worst " << worst);
    if constexpr (test::kBatchBitForBit) CHECK(differ == 0);
    else CHECK(worst < 1e-3);
  }
}

// predict's CSV is read back by --skip-existing: fields with commas, quotes or line ends
// survive the round trip, and a row cut short by a killed run is not read.
TEST_CASE("CSV rows: RFC 4180 quoting, read back; a last row without its line end is left out") {
  const std::vector<std::string> fields = {"a b.png", "x,y", "say \"hi\"", "two\nlines", ""};
  const std::string row = app::csv_row(fields);
  CHECK(row == "a b.png,\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\",\n");
  CHECK(app::csv_records(row + row) == std::vector<std::vector<std::string>>{fields, fields});
  CHECK(app::csv_records(row + "c.png,benign,0.9").size() == 1);
  CHECK(app::csv_records("h1,h2\r\n1,2\r\n") == std::vector<std::vector<std::string>>{{"h1", "h2"}, {"1", "2"}});
}

TEST_CASE("report pictures: base64 as RFC 4648, pictures at most 384 px on their longer side") {
  CHECK(app::base64("") == "");
  CHECK(app::base64("f") == "Zg==");
  CHECK(app::base64("fo") == "Zm8=");
  CHECK(app::base64("foo") == "Zm9v");
  CHECK(app::base64("foobar") == "Zm9vYmFy");
  CHECK(app::base64(std::string("\xff\x00\x80", 3)) == "/wCA");
  const std::string png = app::report_png(ramp_image(600, 480));
  int width = 0, height = 0, channels = 0;
  REQUIRE(stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(png.data()), static_cast<int>(png.size()), &width,
                                &height, &channels));
  CHECK(width == 307);
  CHECK(height == 384);
}

TEST_CASE("lesion_malignancy: the mean malignancy over the marked lesion, or over the 1% most lesion-like pixels") {
  // Two 10x10 maps: the first marks 4 pixels (malignancy logits 0 and log 3: probabilities 0.5
  // and 0.75), the second marks none; its top 1% is the one pixel of highest lesion logit.
  std::vector<double> v(2 * 100 * 2, -3.0);
  for (int i : {11, 12, 21, 22}) v[2 * i] = 2, v[2 * i + 1] = i < 20 ? 0 : std::log(3.0);
  v[200 + 2 * 57] = -0.5, v[200 + 2 * 57 + 1] = std::log(9.0);  // probability 0.9
  const Tensor logits = Tensor::from_vector(v, {2, 10, 10, 2});
  const std::vector<double> scores = app::lesion_malignancy(logits);
  REQUIRE(scores.size() == 2);
  CHECK(scores[0] == doctest::Approx(0.625));
  CHECK(scores[1] == doctest::Approx(0.9));
  CHECK(app::lesion_malignancy(logits.slice(3, 0, 1).contiguous()).empty());  // a lesion-only segmenter
}

TEST_CASE("a lesion-probability classifier reads the segmenter's probability before empty_below, as level / 255") {
  TempDir dir;
  app::ModelCard card = classifier_card();
  auto model = app::build_model(card);
  const std::string plain = (dir / "plain.safetensors").string(), soft = (dir / "soft.safetensors").string();
  app::save_checkpoint(plain, *model, card);
  card.reads_lesion_probability = true;
  app::save_checkpoint(soft, *model, card);
  CHECK(nn::load_safetensors(soft).metadata.at("mask_channel") == "probability");
  CHECK(nn::load_safetensors(plain).metadata.count("mask_channel") == 0);
  // Readers of format 1 (before the key) refuse the card instead of feeding it a mask.
  CHECK(nn::load_safetensors(soft).metadata.at("format") == "sono-checkpoint-2");
  CHECK(nn::load_safetensors(plain).metadata.at("format") == "sono-checkpoint-1");
  app::LoadedModel a = app::load_checkpoint(plain, models::Task::classification);
  app::LoadedModel b = app::load_checkpoint(soft, models::Task::classification);
  CHECK(a.card.input() == data::InputKind::rgb_mask);
  REQUIRE(b.card.input() == data::InputKind::rgb_lesion_probability);

  // A map empty_below emptied (-20 everywhere): the mask is empty, the probability channel is not.
  app::ScanSegmentation scan{data::Image(32, 32, 1), data::Image(32, 32, 1), std::nullopt};
  std::fill(scan.lesion_logits.pixels.begin(), scan.lesion_logits.pixels.end(), -20.0f);
  std::fill(scan.uncalibrated_lesion_logits.pixels.begin(), scan.uncalibrated_lesion_logits.pixels.end(), -3.0f);
  scan.uncalibrated_lesion_logits.pixels[5] = std::log(3.0f);
  const data::Mask mask = app::classifier_mask(a.card.input(), scan);
  const data::Mask levels = app::classifier_mask(b.card.input(), scan);
  CHECK(mask.lesion_pixels() == 0);
  CHECK(levels.values[5] == 191);  // 0.75 * 255
  CHECK(levels.values[6] == 12);   // sigmoid(-3) * 255 = 12.09
  const data::Image image = ramp_image(32, 32);
  const std::vector<double> x = app::classifier_input(b, image, levels).to_vector();
  for (size_t p = 0; p < 32 * 32; ++p) REQUIRE(x[p * 4 + 3] == doctest::Approx(levels.values[p] / 255.0));
  CHECK(app::classify(b, image, levels, Device::cpu) != app::classify(b, image, mask, Device::cpu));

  data::Mask truth(32, 32);
  truth.at(3, 4) = 1;
  CHECK(app::classifier_mask(b.card.input(), truth).at(3, 4) == 255);
  CHECK(app::classifier_mask(a.card.input(), truth).values == truth.values);
}

TEST_CASE("scan_segmentation: both maps at the scan's size, an unchanged map resized once, an emptied one alone") {
  data::Image map(16, 16, 1);
  for (size_t p = 0; p < map.pixels.size(); ++p) map.pixels[p] = static_cast<float>(p % 7) - 3;
  const data::Image resized = data::resize_bilinear(map, 40, 24);

  const app::ScanSegmentation kept = app::scan_segmentation(map, map, 40, 24);
  CHECK(kept.lesion_logits.pixels == resized.pixels);
  CHECK(kept.uncalibrated_lesion_logits.pixels == resized.pixels);

  data::Image emptied = map;
  std::fill(emptied.pixels.begin(), emptied.pixels.end(), -20.0f);
  const app::ScanSegmentation empty = app::scan_segmentation(emptied, map, 40, 24);
  CHECK(empty.uncalibrated_lesion_logits.pixels == resized.pixels);
  REQUIRE(empty.lesion_logits.pixels.size() == resized.pixels.size());
  CHECK(empty.lesion_logits.height == 40);
  for (float v : empty.lesion_logits.pixels) REQUIRE(v == -20.0f);
}

TEST_CASE("outline_map: a lesion class reopens a map empty_below emptied; the lesion-free class, kept maps and classifiers without that class leave it") {
  data::Image map(16, 16, 1);
  for (size_t p = 0; p < map.pixels.size(); ++p) map.pixels[p] = p < 20 ? 1.0f : -2.0f;  // a weak lesion, 20 pixels
  data::Image emptied = map;
  std::fill(emptied.pixels.begin(), emptied.pixels.end(), -20.0f);
  const app::ScanSegmentation weak = app::scan_segmentation(emptied, map, 16, 16);
  const app::ScanSegmentation kept = app::scan_segmentation(map, map, 16, 16);

  const std::vector<std::string> busi = {"benign", "malignant", app::ModelCard::kLesionFreeClass};
  CHECK(data::mask_from_logit_map(app::outline_map(weak, busi, 0)).lesion_pixels() == 20);
  CHECK(data::mask_from_logit_map(app::outline_map(weak, busi, 1)).lesion_pixels() == 20);
  CHECK(data::mask_from_logit_map(app::outline_map(weak, busi, 2)).lesion_pixels() == 0);
  // A map calibration left alone is the outline whatever the class: the classifier never hides one.
  CHECK(app::outline_map(kept, busi, 2).pixels == map.pixels);
  CHECK(app::outline_map(kept, busi, 0).pixels == map.pixels);
  // A classifier without the lesion-free class cannot say a scan has no lesion: empty_below stands.
  const std::vector<std::string> other = {"healthy", "sick"};
  CHECK(data::mask_from_logit_map(app::outline_map(weak, other, 1)).lesion_pixels() == 0);
  CHECK(data::mask_from_logit_map(app::outline_map(weak, other, 0)).lesion_pixels() == 0);
}

TEST_CASE("a stacked classifier: its card's stacking applied to its own probabilities; a segmenter without the channel refused") {
  TempDir dir;
  app::ModelCard card = classifier_card();
  auto model = app::build_model(card);
  const std::string plain = (dir / "plain.safetensors").string(), stacked = (dir / "stacked.safetensors").string();
  app::save_checkpoint(plain, *model, card);
  card.stacking = data::Stacking{{{1, 0, 0, -1}, {0, 1, 0, 2}, {0, 0, 1, 0.5}}, {0.1, -0.2, 0.3}};
  app::save_checkpoint(stacked, *model, card);

  app::LoadedModel a = app::load_checkpoint(plain, models::Task::classification);
  app::LoadedModel b = app::load_checkpoint(stacked, models::Task::classification);
  REQUIRE(b.card.stacking);
  CHECK(b.card.stacking->weights == card.stacking->weights);
  const data::Image image = ramp_image(40, 52);
  data::Mask mask(40, 52);
  for (int y = 10; y < 30; ++y) std::fill_n(&mask.at(y, 12), 20, uint8_t{1});
  const std::vector<double> own = app::classify(a, image, mask, Device::cpu);
  const std::vector<double> expected = card.stacking->probabilities(own, {0.8});
  const std::vector<double> got = app::classify(b, image, mask, Device::cpu, false, 0.8);
  for (size_t c = 0; c < 3; ++c) CHECK(got[c] == doctest::Approx(expected[c]).epsilon(1e-12));
  CHECK(got != own);

  app::ModelCard seg_card = resnet18_segmenter_card();
  app::LoadedModel seg{app::build_model(seg_card), seg_card};
  const std::string refusal =
      stacked + ": stacks its classes with a segmenter's malignancy score; seg.safetensors has no malignancy channel";
  CHECK_THROWS_WITH(app::check_stacking_inputs(&seg, "seg.safetensors", b, stacked), doctest::Contains(refusal.c_str()));
  CHECK_THROWS_WITH(app::check_stacking_inputs(nullptr, "", b, stacked), doctest::Contains("give the segmenter"));
  CHECK_NOTHROW(app::check_stacking_inputs(&seg, "seg.safetensors", a, plain));
  seg_card.classes.push_back(app::ModelCard::kMalignancyOutput);
  app::LoadedModel two{app::build_model(seg_card), seg_card};
  CHECK_NOTHROW(app::check_stacking_inputs(&two, "seg.safetensors", b, stacked));
}
