// End to end through the tools' command lines, as users run them: seg_train, then cls_train on
// the masks the segmentation model predicts, then predict; and one clear error (exit 1, the
// file named, nothing written) for each kind of bad input.
#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <stb_image.h>
#include <stb_image_write.h>
#include <sys/wait.h>

#include "helpers.h"
#include "synthetic_blobs.h"
#include "tool_runs.h"
#include "layers/safetensors.h"
#include "tensor/cpu/gemm.h"
#include "tools/app/checkpoint.h"
#include "tools/app/csv_table.h"
#include "tools/data/metrics.h"

namespace fs = std::filesystem;
using namespace sono;

namespace {

using Run = test::CommandRun;

// One kernel thread unless the arguments give --threads (model_info runs no kernels).
Run run_tool(const std::string& tool, const std::string& args) {
  const bool one_thread = tool != "model_info" && args.find("--threads") == std::string::npos;
  const std::string threads = one_thread ? " --threads 1" : "";
  return test::run_command(std::string(SONO_BINARY_DIR) + "/bin/" + tool + " " + args + threads);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// One data set and one trained pair of models for every test case in this file.
struct Trained {
  fs::path root = fs::path(SONO_BINARY_DIR) / "test_tools";
  fs::path data = root / "blobs";
  fs::path seg = root / "seg.safetensors", cls = root / "cls.safetensors";
  Run seg_run, cls_run;

  Trained() {
    fs::remove_all(root);
    test::write_blob_dataset(data, 20, 64, 7);
    std::string dirs = "--images-dir " + (data / "images").string() + " --masks-dir " + (data / "masks").string();
    seg_run = run_tool("seg_train", dirs + " --arch mit_b0 --img-size 64 --epochs 6 --batch-size 4 --lr 1e-3"
                                           " --save-path " + seg.string() + " --log-dir " + (root / "log").string());
    cls_run = run_tool("cls_train", dirs + " --arch convnext_atto --img-size 64 --epochs 40 --batch-size 8 --lr 1e-3"
                                           " --drop-path 0 --label-smoothing 0"
                                           " --seg-model " + seg.string() + " --save-path " + cls.string() +
                                           " --log-dir " + (root / "log").string());
  }
};

const Trained& trained() {
  static Trained t;
  return t;
}

// The shared blob data set's flags.
std::string blob_dirs() {
  const fs::path& data = trained().data;
  return "--images-dir " + (data / "images").string() + " --masks-dir " + (data / "masks").string();
}

std::string models_args() {
  return " --seg_model " + trained().seg.string() + " --cls_model " + trained().cls.string();
}

// A malignant-class blob scan at 64 x 64, saved as folder/name under the trained pair's root.
fs::path write_blob_scan(const std::string& folder, const std::string& name) {
  const fs::path dir = trained().root / folder;
  fs::create_directories(dir);
  std::mt19937 rng(7);
  data::Image image;
  data::Mask truth;
  test::render_blob(test::draw_blob(1, 64, rng), 64, rng, image, truth);
  data::save_image_png(dir / name, image);
  return dir / name;
}

}  // namespace

TEST_CASE("seg_train then cls_train on synthetic blobs: losses fall, validation scores are high") {
  const Trained& t = trained();
  INFO(t.seg_run.output);
  REQUIRE(t.seg_run.status == 0);
  CHECK(t.seg_run.output.find("split: 60 images") != std::string::npos);
  auto seg_loss = test::csv_column(t.root / "log" / "segmentation_log.csv", "train_loss");
  REQUIRE(seg_loss.size() == 6);
  CHECK(seg_loss.back() < 0.7 * seg_loss.front());
  auto dice = test::csv_column(t.root / "log" / "segmentation_log.csv", "val_lesion_dice");
  CHECK(*std::max_element(dice.begin(), dice.end()) > 0.8);
  CHECK(fs::exists(t.root / "log" / "segmentation_curves.svg"));

  INFO(t.cls_run.output);
  REQUIRE(t.cls_run.status == 0);
  CHECK(t.cls_run.output.find("masks: predicted by") != std::string::npos);
  auto cls_loss = test::csv_column(t.root / "log" / "classification_log.csv", "train_loss");
  CHECK(cls_loss.back() < 0.5 * cls_loss.front());
  auto f1 = test::csv_column(t.root / "log" / "classification_log.csv", "val_macro_f1");
  CHECK(*std::max_element(f1.begin(), f1.end()) >= 0.8);
}

TEST_CASE("predict: the exact class line, probabilities, and a mask at the image's size over the blob") {
  fs::path dir = trained().root / "predict";
  fs::create_directories(dir);
  std::mt19937 rng(2024);
  for (int label = 0; label < 3; ++label) {
    CAPTURE(label);
    data::Image image;
    data::Mask truth;
    test::render_blob(test::draw_blob(label, 80, rng), 80, rng, image, truth);  // not the training size
    fs::path image_path = dir / (std::to_string(label) + ".png"), mask_path = dir / (std::to_string(label) + "_mask.png");
    data::save_image_png(image_path, image);
    Run r = run_tool("predict", "--image " + image_path.string() + models_args() + " --save_mask " +
                                    mask_path.string() + " --overlay");
    INFO(r.output);
    REQUIRE(r.status == 0);
    std::smatch m;
    REQUIRE(std::regex_search(r.output, m, std::regex("^Predicted class: (\\w+) \\((0\\.\\d\\d|1\\.00) confidence\\)( \\[low confidence\\])?\n")));
    CHECK(m[1] == test::kBlobClasses[label]);
    CHECK(std::stod(m[2]) > 1.0 / 3);
    CHECK(std::regex_search(r.output, std::regex("Probabilities: benign 0\\.\\d{4}, malignant 0\\.\\d{4}, normal 0\\.\\d{4}")));
    data::Mask predicted = data::load_mask({mask_path});
    REQUIRE(predicted.height == 80);
    REQUIRE(predicted.width == 80);
    CHECK(data::overlap(predicted, truth).dice > 0.8);  // an empty truth needs an empty prediction
    CHECK(fs::exists(dir / (std::to_string(label) + "_mask_overlay.png")));
  }
}

TEST_CASE("predict --amp bf16 on the CPU says so where the CPU has no bfloat16 instructions") {
  const fs::path image_path = write_blob_scan("predict_bf16", "scan.png");
  const Run r = run_tool("predict", "--image " + image_path.string() + models_args() + " --amp bf16");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("Predicted class: ") != std::string::npos);
  const bool noted = r.output.find("note: --amp bf16: this CPU has no bfloat16 instructions") != std::string::npos;
  CHECK(noted == !cpu::cpu_multiplies_bf16());
  CHECK(run_tool("predict", "--image " + image_path.string() + models_args()).output.find("note:") == std::string::npos);
}

// --device cuda with SONO_CUDA_EMULATOR=1: the tool's CUDA path end to end on the emulated
// device (training there is too slow for a test: 0.3 images/s for mit_b0 at 64 x 64). Float32:
// the CPU's printed probabilities (4 decimals) and mask; bf16 autocast: probabilities within
// 2e-3, masks within 1% of their pixels (bf16 rounding moves a few border pixels).
TEST_CASE("predict on the emulated CUDA device, float32 and bf16 autocast, matches the CPU") {
  const fs::path image_path = write_blob_scan("predict_cuda", "blob.png");
  const fs::path dir = image_path.parent_path();
  auto predict = [&](const std::string& name, const std::string& device_args) {
    Run r = run_tool("predict", "--image " + image_path.string() + models_args() + device_args +
                                    " --save_mask " + (dir / (name + ".png")).string());
    INFO(name << ": " << r.output);
    REQUIRE(r.status == 0);
    std::smatch m;
    REQUIRE(std::regex_search(r.output, m, std::regex("benign (\\S+), malignant (\\S+), normal (\\S+)")));
    return std::make_pair(std::vector<double>{std::stod(m[1]), std::stod(m[2]), std::stod(m[3])},
                          data::load_mask({dir / (name + ".png")}));
  };
  const auto cpu = predict("cpu", "");
  // Unset again where a REQUIRE throws: later tests' --device cuda must find no device.
  struct EmulatedDevice {
    EmulatedDevice() { setenv("SONO_CUDA_EMULATOR", "1", 1); }
    ~EmulatedDevice() { unsetenv("SONO_CUDA_EMULATOR"); }
  };
  const auto [cuda, bf16] = [&] {
    EmulatedDevice emulated;
    return std::make_pair(predict("cuda", " --device cuda"), predict("bf16", " --device cuda --amp bf16"));
  }();
  CHECK(cuda.first == cpu.first);
  CHECK(cuda.second.values == cpu.second.values);
  int64_t differing = 0;
  for (size_t i = 0; i < cpu.second.values.size(); ++i)
    differing += bf16.second.values[i] != cpu.second.values[i];
  CHECK(differing <= static_cast<int64_t>(cpu.second.values.size()) / 100);
  for (int c = 0; c < 3; ++c) CHECK(std::abs(bf16.first[c] - cpu.first[c]) <= 2e-3);
}

TEST_CASE("predict on a folder writes one CSV row per image and the masks") {
  fs::path dir = trained().root / "folder", out = trained().root / "folder_masks";
  fs::create_directories(dir);
  for (const char* name : {"benign_1", "malignant_2", "normal_3"}) {
    std::string cls = std::string(name).substr(0, std::string(name).find('_'));
    fs::copy_file(trained().data / "images" / cls / (std::string(name) + ".png"), dir / (std::string(name) + ".png"));
  }
  fs::path csv = trained().root / "predictions.csv";
  Run r = run_tool("predict", "--image " + dir.string() + models_args() + " --save_mask " + out.string() +
                                  " --csv " + csv.string());
  INFO(r.output);
  REQUIRE(r.status == 0);
  std::string text = read_file(csv);
  CHECK(text.rfind("image,frame,predicted_class,confidence,p_benign,p_malignant,p_normal,lesion_fraction,lesion_pixels,lesion_area_mm2,mask,error\n", 0) == 0);
  CHECK(std::count(text.begin(), text.end(), '\n') == 4);
  // lesion pixels an integer; the area in mm^2 empty: a PNG gives no pixel spacing.
  CHECK(std::regex_search(text, std::regex("\nbenign_1\\.png,,(benign|malignant|normal),0\\.\\d+(,[0-9.e-]+){4},\\d+,,[^,]*benign_1_mask\\.png,\n")));
  CHECK(fs::exists(out / "malignant_2_mask.png"));
}

// evaluate runs predict's pipeline image by image over a labelled data set: each CSV row holds
// what predict gives that image, and the printed figures are those of the rows.
TEST_CASE("evaluate scores labelled scans as predict runs them, and its figures are its rows'") {
  const Trained& t = trained();
  const fs::path root = t.root / "evaluate", csv = root / "scores.csv", svg = root / "reliability.svg";
  fs::create_directories(root);
  Run r = run_tool("evaluate", blob_dirs() + models_args() + " --csv " + csv.string() + " --reliability " + svg.string());
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("60 images: benign 20, malignant 20, normal 20") != std::string::npos);
  std::smatch m;
  REQUIRE(std::regex_search(r.output, m, std::regex(R"(\nfigures: Dice ([0-9.]+), .*, accuracy ([0-9.]+), macro-F1 ([0-9.]+),)")));
  const auto rows = app::csv_records(read_file(csv));
  REQUIRE(rows.size() == 61);
  CHECK(rows[0] == std::vector<std::string>{"image", "class", "predicted", "confidence", "p_benign", "p_malignant",
                                            "p_normal", "dice", "lesion_pixels"});
  data::ClassificationMetrics classes(3);
  double dice = 0;
  auto index = [](const std::string& name) {
    return static_cast<int>(std::find(test::kBlobClasses, test::kBlobClasses + 3, name) - test::kBlobClasses);
  };
  for (size_t i = 1; i < rows.size(); ++i) {
    classes.add(index(rows[i][1]), index(rows[i][2]));
    dice += std::stod(rows[i][7]) / 60;
    CHECK(std::stod(rows[i][3]) == std::max({std::stod(rows[i][4]), std::stod(rows[i][5]), std::stod(rows[i][6])}));
  }
  CHECK(std::stod(m[1]) == doctest::Approx(dice).epsilon(1e-4));
  CHECK(std::stod(m[2]) == doctest::Approx(classes.accuracy()).epsilon(1e-4));
  CHECK(std::stod(m[3]) == doctest::Approx(classes.macro_f1()).epsilon(1e-4));
  CHECK(read_file(svg).find("calibration, 60 images") != std::string::npos);
  // One image of each class through predict itself: the class and the printed probabilities.
  for (size_t i : {1, 27, 53}) {
    const std::string name = rows[i][0];
    CAPTURE(name);
    Run one = run_tool("predict", "--image " + (t.data / "images" / (name + ".png")).string() + models_args());
    REQUIRE(one.status == 0);
    std::smatch p;
    REQUIRE(std::regex_search(one.output, p, std::regex(R"(Predicted class: (\w+) .*\nProbabilities: benign ([0-9.]+), malignant ([0-9.]+), normal ([0-9.]+))")));
    CHECK(p[1] == rows[i][2]);
    for (int c = 0; c < 3; ++c) CHECK(std::stod(p[c + 2]) == doctest::Approx(std::stod(rows[i][4 + c])).epsilon(1e-4));
  }
  // Either model alone: the segmenter's figures as in the pair's run; the classifier on the
  // ground-truth masks.
  Run seg = run_tool("evaluate", blob_dirs() + " --seg-model " + t.seg.string() + " --csv " + (root / "seg.csv").string());
  INFO(seg.output);
  REQUIRE(seg.status == 0);
  CHECK(seg.output.find("\nfigures: Dice " + std::string(m[1]) + ", ") != std::string::npos);
  CHECK(seg.output.find("accuracy") == std::string::npos);
  CHECK(app::csv_records(read_file(root / "seg.csv"))[1] ==
        std::vector<std::string>{rows[1][0], rows[1][1], rows[1][7], rows[1][8]});
  Run cls = run_tool("evaluate", blob_dirs() + " --cls-model " + t.cls.string() + " --csv " + (root / "cls.csv").string());
  INFO(cls.output);
  REQUIRE(cls.status == 0);
  CHECK(cls.output.find("60 images: benign 20, malignant 20, normal 20; masks: the ground truth") != std::string::npos);
  CHECK(std::regex_search(cls.output, std::regex(R"(\nfigures: accuracy [0-9.]+, macro-F1 [0-9.]+,)")));
  CHECK(app::csv_records(read_file(root / "cls.csv"))[0] ==
        std::vector<std::string>{"image", "class", "predicted", "confidence", "p_benign", "p_malignant", "p_normal"});
}

// The segmenter's card set to empty nearly every map: where the classifier then calls a lesion,
// the outline is the map before empty_below (app::outline_map), in evaluate's rows as in
// predict's; where it calls the scan normal, the map stays as empty_below left it.
TEST_CASE("evaluate and predict: a lesion class outlines what empty_below emptied, the normal class does not") {
  const Trained& t = trained();
  const fs::path root = t.root / "outline";
  fs::create_directories(root);
  auto card = [&](const std::string& threshold) {
    nn::SafetensorsFile file = nn::load_safetensors(t.seg.string());
    file.metadata["empty_below"] = threshold;
    const fs::path path = root / ("seg_" + threshold + ".safetensors");
    nn::save_safetensors(path.string(), file.tensors, file.metadata);
    return path.string();
  };
  const std::string strict = card("0.999"), open = card("0.5");
  auto lesion_pixels = [&](const std::string& args, const std::string& name, size_t column) {
    Run r = run_tool("evaluate", blob_dirs() + args + " --csv " + (root / name).string());
    INFO(r.output);
    REQUIRE(r.status == 0);
    std::map<std::string, std::pair<std::string, long>> rows;  // image: predicted class, lesion pixels
    for (const auto& row : app::csv_records(read_file(root / name)))
      if (row[0] != "image") rows[row[0]] = {column > 3 ? row[2] : "", column < row.size() ? std::stol(row[column]) : -1};
    return rows;
  };
  const auto strict_alone = lesion_pixels(" --seg-model " + strict, "strict.csv", 3);
  const auto open_alone = lesion_pixels(" --seg-model " + open, "open.csv", 3);
  const auto pair = lesion_pixels(" --seg-model " + strict + " --cls-model " + t.cls.string(), "pair.csv", 8);
  REQUIRE(pair.size() == 60);
  int reopened = 0, kept_empty = 0;
  for (const auto& [image, row] : pair) {
    CAPTURE(image);
    const auto& [predicted, pixels] = row;
    const bool lesion_class = predicted != "normal";
    CHECK(pixels == (lesion_class ? open_alone.at(image).second : strict_alone.at(image).second));
    reopened += lesion_class && strict_alone.at(image).second == 0 && pixels > 0;
    kept_empty += !lesion_class && strict_alone.at(image).second == 0 && open_alone.at(image).second > 0;
  }
  CHECK(reopened > 0);
  MESSAGE(reopened << " outlines reopened, " << kept_empty << " weak maps of scans called normal left empty");

  // predict on the same scans: the same outlines.
  for (const std::string class_folder : test::kBlobClasses) {
    const fs::path csv = root / ("predict_" + class_folder + ".csv");
    Run p = run_tool("predict", "--image " + (t.data / "images" / class_folder).string() + " --seg_model " + strict +
                                    " --cls_model " + t.cls.string() + " --csv " + csv.string());
    INFO(p.output);
    REQUIRE(p.status == 0);
    for (const auto& row : app::csv_records(read_file(csv)))
      if (row[0] != "image") CHECK(std::stol(row[8]) == pair.at(class_folder + "/" + fs::path(row[0]).stem().string()).second);
  }
}

namespace {

// `count` scans (blobs of every class, at sizes other than the training size) in `dir`.
void write_scans(const fs::path& dir, int count, uint32_t seed) {
  fs::create_directories(dir);
  std::mt19937 rng(seed);
  for (int i = 0; i < count; ++i) {
    const int size = 48 + 8 * (i % 5);
    data::Image image;
    data::Mask truth;
    test::render_blob(test::draw_blob(i % 3, size, rng), size, rng, image, truth);
    char name[32];
    std::snprintf(name, sizeof name, "scan_%03d.png", i);
    data::save_image_png(dir / name, image);
  }
}

std::vector<std::vector<std::string>> csv_records(const fs::path& csv) { return app::csv_records(read_file(csv)); }

std::string base64_decode(const std::string& text) {
  static const std::string digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string bytes;
  uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    if (c == '=') break;
    const size_t v = digits.find(c);
    REQUIRE(v != std::string::npos);
    bits = bits << 6 | static_cast<uint32_t>(v);
    if ((count += 6) >= 8) bytes += static_cast<char>(bits >> (count -= 8) & 0xff);
  }
  return bytes;
}

size_t column(const std::vector<std::vector<std::string>>& rows, const std::string& name) {
  auto it = std::find(rows.at(0).begin(), rows.at(0).end(), name);
  REQUIRE(it != rows[0].end());
  return it - rows[0].begin();
}

}  // namespace

// --batch_size: image i of a batch gets what it gets alone (bit for bit on the CPU), so the CSV
// and the masks do not depend on the batch size, the decode threads or the streams.
TEST_CASE("predict on a folder in batches writes what one image at a time writes, with progress on stderr") {
  const fs::path root = trained().root / "batches", scans = root / "scans";
  write_scans(scans, 7, 5);
  auto run = [&](const std::string& flags, const std::string& name) {
    Run r = run_tool("predict", "--image " + scans.string() + models_args() + " --save_mask " + (root / "masks").string() +
                                    " --overwrite --csv " + (root / (name + ".csv")).string() + flags);
    INFO(r.output);
    REQUIRE(r.status == 0);
    std::map<std::string, std::string> masks;
    for (auto& entry : fs::directory_iterator(root / "masks")) masks[entry.path().filename()] = read_file(entry.path());
    return std::make_pair(r, masks);
  };
  const auto [one, one_masks] = run(" --batch-size 1 --workers 1 --threads 2 --streams 1", "one");
  const auto [three, three_masks] = run(" --batch-size 3 --workers 2 --threads 2 --streams 1", "three");
  const auto [streams, streams_masks] = run(" --batch-size 2 --threads 2 --streams 2", "streams");
  CHECK(one_masks.size() == 7);
  if constexpr (test::kBatchBitForBit) {
    CHECK(read_file(root / "one.csv") == read_file(root / "three.csv"));
    CHECK(read_file(root / "one.csv") == read_file(root / "streams.csv"));
    CHECK(one_masks == three_masks);
    CHECK(one_masks == streams_masks);
  } else {
    MESSAGE("skipped: batches' CSV and masks against one image's, bit for bit only where sgemm runs");
  }
  CHECK(std::regex_search(three.output, std::regex("predict 7/7 [0-9.]+ img/s in \\d\\d:\\d\\d")));

  // The probabilities predict prints for one file (4 decimals) are its row's.
  const auto rows = csv_records(root / "three.csv");
  REQUIRE(rows.size() == 8);
  Run alone = run_tool("predict", "--image " + (scans / "scan_004.png").string() + models_args());
  INFO(alone.output);
  std::smatch m;
  REQUIRE(std::regex_search(alone.output, m, std::regex("Probabilities: benign (\\S+), malignant (\\S+), normal (\\S+)")));
  REQUIRE(rows[5][0] == "scan_004.png");
  for (int c = 0; c < 3; ++c)
    CHECK(std::abs(std::stod(m[c + 1]) - std::stod(rows[5][column(rows, "p_benign") + c])) <= 5.1e-5);
}

// The view is the classifier's input, so it goes with the checkpoint: predict crops every image
// of a folder run as it crops one image, around the mask the segmenter gives.
namespace {

const std::regex kProbabilitiesLine("Probabilities: benign (\\S+), malignant (\\S+), normal (\\S+)");

// A folder of five scans through predict in batches of 3 (its CSV at `csv`): scans 1 and 4 alone
// print what their rows hold, to the CSV's 4 decimals.
void check_batches_as_alone(const fs::path& scans, const std::string& models, const fs::path& csv) {
  Run folder = run_tool("predict", "--image " + scans.string() + models + " --batch-size 3 --csv " + csv.string());
  INFO(folder.output);
  REQUIRE(folder.status == 0);
  const auto rows = csv_records(csv);
  REQUIRE(rows.size() == 6);
  for (int i : {1, 4}) {
    CAPTURE(i);
    Run alone = run_tool("predict", "--image " + (scans / rows[i][0]).string() + models);
    INFO(alone.output);
    std::smatch m;
    REQUIRE(std::regex_search(alone.output, m, kProbabilitiesLine));
    for (int c = 0; c < 3; ++c)
      CHECK(std::abs(std::stod(m[c + 1]) - std::stod(rows[i][column(rows, "p_benign") + c])) <= 5.1e-5);
  }
}

}  // namespace

TEST_CASE("cls_train --lesion-view: the card records it, and predict's batches crop as one image does") {
  const Trained& t = trained();
  const fs::path root = t.root / "lesion_view", cls = root / "cls.safetensors", scans = root / "scans";
  fs::create_directories(root);
  Run train = run_tool("cls_train", "--images-dir " + (t.data / "images").string() + " --masks-dir " +
                                        (t.data / "masks").string() +
                                        " --arch convnext_atto --img-size 32 --epochs 2 --batch-size 8"
                                        " --drop-path 0 --label-smoothing 0 --lesion-view 0.5 --seg-model " +
                                        t.seg.string() + " --save-path " + cls.string() +
                                        " --log-dir " + (root / "log").string());
  INFO(train.output);
  REQUIRE(train.status == 0);
  CHECK(nn::load_safetensors(cls.string()).metadata.at("lesion_view") == "0.5");
  write_scans(scans, 5, 9);
  check_batches_as_alone(scans, " --seg_model " + t.seg.string() + " --cls_model " + cls.string(), root / "view.csv");
}

// A refiner redraws only the outline: the classifier must still read the first segmenter's mask,
// a folder's batch of windows must give each scan what it gets alone, and evaluate must score
// the refined masks predict writes.
TEST_CASE("seg_train --lesion-view trains a refiner; predict and evaluate --refine-model outline with it, classes unchanged") {
  const Trained& t = trained();
  const fs::path root = t.root / "refine", refiner = root / "refine.safetensors", scans = root / "scans";
  fs::create_directories(root);
  Run train = run_tool("seg_train", blob_dirs() + " --arch resnet18 --encoder-depth 4 --img-size 32 --epochs 2"
                                                  " --batch-size 8 --lesion-view 0.5 --save-path " + refiner.string());
  INFO(train.output);
  REQUIRE(train.status == 0);
  const auto card = nn::load_safetensors(refiner.string()).metadata;
  CHECK(card.at("lesion_view") == "0.5");
  CHECK(card.count("empty_below") == 0);  // the refiner's map is pasted as it is
  write_scans(scans, 5, 11);
  const std::string refine = " --refine_model " + refiner.string();
  Run plain = run_tool("predict", "--image " + scans.string() + models_args() + " --save_mask " +
                                      (root / "plain").string() + " --csv " + (root / "plain.csv").string());
  Run refined = run_tool("predict", "--image " + scans.string() + models_args() + refine + " --batch_size 3" +
                                        " --save_mask " + (root / "refined").string() + " --csv " +
                                        (root / "refined.csv").string());
  INFO(plain.output << refined.output);
  REQUIRE(plain.status == 0);
  REQUIRE(refined.status == 0);
  const auto plain_rows = csv_records(root / "plain.csv"), refined_rows = csv_records(root / "refined.csv");
  REQUIRE(plain_rows.size() == 6);
  REQUIRE(refined_rows.size() == 6);
  int redrawn = 0;
  for (size_t i = 1; i < 6; ++i) {
    CAPTURE(i);
    for (const char* c : {"predicted_class", "p_benign", "p_malignant", "p_normal"})
      CHECK(refined_rows[i][column(refined_rows, c)] == plain_rows[i][column(plain_rows, c)]);
    const std::string mask = refined_rows[i][column(refined_rows, "mask")];
    redrawn += read_file(mask) != read_file(plain_rows[i][column(plain_rows, "mask")]);
  }
  CHECK(redrawn > 0);
  const std::string name = refined_rows[4][0];
  Run alone = run_tool("predict", "--image " + (scans / name).string() + models_args() + refine + " --save_mask " +
                                      (root / "alone_mask.png").string());
  INFO(alone.output);
  REQUIRE(alone.status == 0);
  CHECK(read_file(root / "alone_mask.png") == read_file(refined_rows[4][column(refined_rows, "mask")]));

  // evaluate's rows: the refined masks' lesion pixels, predict's own.
  const fs::path scored = root / "scores.csv";
  Run evaluate = run_tool("evaluate", blob_dirs() + " --seg-model " + t.seg.string() + " --refine-model " +
                                          refiner.string() + " --csv " + scored.string());
  INFO(evaluate.output);
  REQUIRE(evaluate.status == 0);
  const auto rows = csv_records(scored);
  const fs::path first = t.data / "images" / (rows[1][0] + ".png");
  Run one = run_tool("predict", "--image " + first.string() + models_args() + refine + " --save_mask " +
                                    (root / "first_mask.png").string());
  REQUIRE(one.status == 0);
  CHECK(std::to_string(data::load_mask({root / "first_mask.png"}).lesion_pixels()) ==
        rows[1][column(rows, "lesion_pixels")]);

  Run wrong = run_tool("predict", "--image " + first.string() + models_args() + " --refine_model " + t.seg.string());
  CHECK(wrong.status == 1);
  CHECK(wrong.output == "predict: error: " + t.seg.string() +
                            ": not a refining segmenter (it was not trained with seg_train --lesion-view)\n");
}

TEST_CASE("cls_train --mask-channel probability: the card records it; predict, its batches and evaluate feed it alike") {
  const Trained& t = trained();
  const fs::path root = t.root / "probability", cls = root / "cls.safetensors", scans = root / "scans";
  fs::create_directories(root);
  const std::string train = blob_dirs() + " --arch convnext_atto --img-size 32 --epochs 2 --batch-size 8 --drop-path 0"
                                          " --label-smoothing 0 --mask-channel probability";
  Run c = run_tool("cls_train", train + " --seg-model " + t.seg.string() + " --save-path " + cls.string() +
                                    " --log-dir " + (root / "log").string());
  INFO(c.output);
  REQUIRE(c.status == 0);
  CHECK(c.output.find("masks: predicted by " + t.seg.string()) != std::string::npos);
  CHECK(nn::load_safetensors(cls.string()).metadata.at("mask_channel") == "probability");
  write_scans(scans, 5, 11);
  const std::string models = " --seg_model " + t.seg.string() + " --cls_model " + cls.string();
  check_batches_as_alone(scans, models, root / "scans.csv");
  Run e = run_tool("evaluate", blob_dirs() + models + " --csv " + (root / "evaluate.csv").string());
  INFO(e.output);
  REQUIRE(e.status == 0);
  const auto scored = csv_records(root / "evaluate.csv");
  Run alone = run_tool("predict", "--image " + (t.data / "images" / (scored[1][0] + ".png")).string() + models);
  std::smatch m;
  REQUIRE(std::regex_search(alone.output, m, kProbabilitiesLine));
  for (int k = 0; k < 3; ++k)
    CHECK(std::stod(m[k + 1]) == doctest::Approx(std::stod(scored[1][column(scored, "p_benign") + k])).epsilon(1e-4));

  SUBCASE("bad input") {
    const fs::path out = root / "x.safetensors";
    for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
             {train, "--mask-channel probability: needs --seg-model"},
             {blob_dirs() + " --mask-channel soft --seg-model " + t.seg.string(), "--mask-channel soft: expected mask or probability"},
             {train + " --seg-model " + t.seg.string() + " --lesion-view 0.5", "--lesion-view: frames a mask's lesion"}}) {
      Run r = run_tool("cls_train", args + " --save-path " + out.string());
      INFO(args << "\n" << r.output);
      CHECK(r.status == 1);
      CHECK(r.output.find(message) != std::string::npos);
    }
    CHECK(!fs::exists(out));
  }
}

TEST_CASE("predict --batch_size 0 or negative, or --streams past the threads, is refused in one line, nothing written") {
  const fs::path root = trained().root / "bad_batch", csv = root / "p.csv";
  write_scans(root / "scans", 1, 6);
  auto refusal = [&](const std::string& flags) {
    Run r = run_tool("predict", "--image " + (root / "scans").string() + models_args() + " --csv " + csv.string() + flags);
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK_FALSE(fs::exists(csv));
    return r.output;
  };
  for (const char* size : {"0", "-3"})
    CHECK(refusal(" --batch-size " + std::string(size)) ==
          "predict: error: --batch_size " + std::string(size) + ": must be 1 or more\n");
  CHECK(refusal(" --threads 2 --streams 3") ==
        "predict: error: --streams 3: must be from 1 to the kernel threads (2, --threads)\n");
  CHECK(refusal(" --threads 2 --streams 0") ==
        "predict: error: --streams 0: must be from 1 to the kernel threads (2, --threads)\n");
}

// A scan that cannot be read: one line naming it on stderr, its row in the CSV holds the error
// (every column present, the prediction's empty), the other scans are predicted, exit 1.
TEST_CASE("predict on a folder: an unreadable scan gets its error in its row and the run goes on") {
  const fs::path root = trained().root / "unreadable", scans = root / "scans", csv = root / "p.csv";
  write_scans(scans, 3, 7);
  std::ofstream(scans / "scan_001b.png") << "not a PNG";
  Run r = run_tool("predict", "--image " + scans.string() + models_args() + " --csv " + csv.string() +
                                  " --batch-size 1 --threads 2 --streams 2");  // its row from the second stream
  INFO(r.output);
  CHECK(r.status == 1);
  std::smatch m;
  REQUIRE(std::regex_search(r.output, m, std::regex("predict: error: ([^\n]*)\n")));
  CHECK(m[1].str().find("scan_001b.png") != std::string::npos);
  CHECK(r.output.find("3 of 4 images predicted") != std::string::npos);
  const auto rows = csv_records(csv);
  REQUIRE(rows.size() == 5);
  for (const auto& row : rows) CHECK(row.size() == rows[0].size());
  CHECK(rows[3][0] == "scan_001b.png");  // in the folder's order, after scan_001.png
  CHECK(rows[3][column(rows, "predicted_class")].empty());
  CHECK(rows[3].back() == m[1].str());
  for (size_t i : {1, 2, 4}) {
    CHECK(rows[i].back().empty());
    CHECK_FALSE(rows[i][column(rows, "predicted_class")].empty());
  }
}

// The CSV is written a row at a time: a run killed midway leaves complete rows, and
// --skip-existing predicts only what they do not cover, to the CSV an uninterrupted run writes.
TEST_CASE("predict --skip-existing resumes a folder run that was killed") {
  const fs::path root = trained().root / "resume", scans = root / "scans", csv = root / "p.csv",
                 masks = root / "masks";
  fs::remove_all(root);
  write_scans(scans, 60, 8);
  const std::string run = std::string(SONO_BINARY_DIR) + "/bin/predict --threads 1 --batch-size 1 --image " +
                          scans.string() + models_args() + " --save_mask " + masks.string();
  // Killed (SIGKILL, nothing flushed at exit) once the CSV holds 3 rows.
  Run killed = test::run_command("(" + run + " --csv " + csv.string() + " >/dev/null 2>&1 & pid=$!; "
                                 "while kill -0 $pid 2>/dev/null && [ \"$(cat " + csv.string() + " 2>/dev/null | wc -l)\" -lt 4 ]; do sleep 0.005; done; "
                                 "kill -9 $pid; wait $pid; echo killed $?)");
  INFO(killed.output);
  REQUIRE(killed.output.find("killed 137") != std::string::npos);
  const std::string partial = read_file(csv);
  auto rows = csv_records(csv);
  CHECK(rows.size() >= 4);
  CHECK(rows.size() < 61);
  CHECK(partial.back() == '\n');
  for (const auto& row : rows) CHECK(row.size() == rows[0].size());

  fs::remove(masks / "scan_001_mask.png");  // its row stands, its output does not: predicted again
  Run refused = run_tool("predict", "--image " + scans.string() + models_args() + " --save_mask " + masks.string() +
                                        " --csv " + csv.string());
  CHECK(refused.status == 1);
  CHECK(refused.output.find("--overwrite") != std::string::npos);
  CHECK(read_file(csv) == partial);

  Run resumed = run_tool("predict", "--skip-existing --batch-size 4 --image " + scans.string() + models_args() +
                                        " --save_mask " + masks.string() + " --csv " + csv.string());
  INFO(resumed.output);
  REQUIRE(resumed.status == 0);
  const size_t skipped = rows.size() - 2;  // the rows but the header and scan_001's
  CHECK(resumed.output.find(std::to_string(60 - skipped) + " of " + std::to_string(60 - skipped) + " images predicted (" +
                            std::to_string(skipped) + " skipped") != std::string::npos);
  CHECK(fs::exists(masks / "scan_001_mask.png"));

  Run whole = run_tool("predict", "--image " + scans.string() + models_args() + " --save_mask " +
                                      (root / "masks_whole").string() + " --csv " + (root / "whole.csv").string());
  REQUIRE(whole.status == 0);
  auto resumed_rows = csv_records(csv), whole_rows = csv_records(root / "whole.csv");
  const size_t mask_column = column(whole_rows, "mask");
  for (auto* table : {&resumed_rows, &whole_rows})
    for (auto& row : *table) row[mask_column] = fs::path(row[mask_column]).filename();
  CHECK(resumed_rows[0] == whole_rows[0]);
  std::sort(resumed_rows.begin() + 1, resumed_rows.end());
  if constexpr (test::kBatchBitForBit) CHECK(resumed_rows == whole_rows);
  else MESSAGE("skipped: resumed rows (other batches) against a whole run's, bit for bit only where sgemm runs");

  Run again = run_tool("predict", "--skip-existing --image " + scans.string() + models_args() + " --save_mask " +
                                      masks.string() + " --csv " + csv.string());
  CHECK(again.status == 0);
  CHECK(again.output.find("All 60 images are in " + csv.string() + " already") != std::string::npos);
}

TEST_CASE("predict --skip-existing refuses the CSV of another run in one line and leaves it as it was") {
  const fs::path root = trained().root / "other_csv", csv = root / "p.csv";
  write_scans(root / "scans", 1, 9);
  const std::string other = "image,class,confidence\nscan_000.png,benign,0.9\n";
  std::ofstream(csv) << other;
  Run r = run_tool("predict", "--skip-existing --image " + (root / "scans").string() + models_args() + " --csv " + csv.string());
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  CHECK(r.output.rfind("predict: error: " + csv.string() + ": --skip-existing: not this run's CSV (columns image,class,confidence", 0) == 0);
  CHECK(read_file(csv) == other);
}

// --report: one HTML page, nothing outside it: every picture a data URI of a PNG; a section per
// scan, in order of malignant probability (the CSV's), highest first.
TEST_CASE("predict --report writes one self-contained page sorted by malignant probability") {
  const fs::path root = trained().root / "report", scans = root / "scans", html = root / "report.html";
  write_scans(scans, 6, 10);
  Run r = run_tool("predict", "--image " + scans.string() + models_args() + " --explain " + (root / "cam").string() +
                                  " --csv " + (root / "p.csv").string() + " --report " + html.string() + " --batch-size 4");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const std::string page = read_file(html);
  CHECK(page.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(page.find("</html>") != std::string::npos);

  std::vector<double> order;
  const std::regex section("<section class=\"scan\" data-p-sort=\"([0-9.]+)\">\n<h2>(scan_\\d+\\.png)</h2>");
  std::map<std::string, double> shown;
  for (std::sregex_iterator it(page.begin(), page.end(), section), end; it != end; ++it) {
    order.push_back(std::stod((*it)[1]));
    shown[(*it)[2]] = order.back();
  }
  REQUIRE(order.size() == 6);
  CHECK(std::is_sorted(order.rbegin(), order.rend()));
  const auto rows = csv_records(root / "p.csv");
  const size_t malignant = column(rows, "p_malignant");
  for (size_t i = 1; i < rows.size(); ++i) CHECK(shown.at(rows[i][0]) == doctest::Approx(std::stod(rows[i][malignant])).epsilon(1e-5));

  size_t pictures = 0;
  const std::regex img("<img src=\"([^\"]*)\"");
  for (std::sregex_iterator it(page.begin(), page.end(), img), end; it != end; ++it, ++pictures) {
    const std::string src = (*it)[1];
    REQUIRE(src.rfind("data:image/png;base64,", 0) == 0);
    const std::string png = base64_decode(src.substr(22));
    CHECK(png.rfind("\x89PNG\r\n\x1a\n", 0) == 0);
    int width = 0, height = 0, channels = 0;
    std::unique_ptr<uint8_t, void (*)(void*)> pixels(
        stbi_load_from_memory(reinterpret_cast<const uint8_t*>(png.data()), static_cast<int>(png.size()), &width,
                              &height, &channels, 0),
        stbi_image_free);
    CHECK(pixels);
    CHECK(width >= 48);
  }
  CHECK(pictures == 12);  // outline and Grad-CAM per scan
  for (const char* outside : {"src=\"http", "href=", "url(", "<link", "<script"}) CHECK(page.find(outside) == std::string::npos);

  Run single = run_tool("predict", "--image " + (scans / "scan_000.png").string() + models_args() + " --report " +
                                       (root / "one.html").string());
  CHECK(single.status == 1);
  CHECK(single.output.find("--report: only for a folder --image") != std::string::npos);
}

// The report as people see it: Debian's Chromium, headless, takes a screenshot of the page.
// Skipped (doctest counts it under "skipped") where chromium is not installed
// (apt-get install chromium).
bool chromium_installed() { return fs::exists("/usr/bin/chromium"); }

TEST_CASE("predict --report renders in headless Chromium (skipped without /usr/bin/chromium)" *
          doctest::skip(!chromium_installed())) {
  const fs::path root = trained().root / "browser", scans = root / "scans", html = root / "report.html",
                 shot = root / "shot.png";
  write_scans(scans, 3, 12);
  Run r = run_tool("predict", "--image " + scans.string() + models_args() + " --csv " + (root / "p.csv").string() +
                                  " --report " + html.string());
  INFO(r.output);
  REQUIRE(r.status == 0);
  Run browser = test::run_command("cd " + root.string() + " && timeout 120 chromium --headless --no-sandbox --disable-gpu "
                                  "--hide-scrollbars --window-size=800,600 --screenshot=" + shot.string() + " file://" +
                                  html.string());
  INFO(browser.output);
  int width = 0, height = 0, channels = 0;
  std::unique_ptr<uint8_t, void (*)(void*)> pixels(stbi_load(shot.c_str(), &width, &height, &channels, 3), stbi_image_free);
  REQUIRE(pixels);
  CHECK(width == 800);
  CHECK(height == 600);
  // Not blank: the page's text and the scans give many colours; an empty page gives one.
  std::set<uint32_t> colours;
  for (size_t p = 0; p < size_t(width) * height; ++p) {
    const uint8_t* rgb = pixels.get() + 3 * p;
    colours.insert(uint32_t(rgb[0]) << 16 | uint32_t(rgb[1]) << 8 | rgb[2]);
  }
  CHECK(colours.size() > 50);
}

// --save_prob: the map the mask is thresholded from (lesion where the probability > 0.5), as a
// 16-bit PNG at the image's size; beside the masks for a folder, never over an existing file.
TEST_CASE("predict --save_prob writes the lesion probability map, 16-bit, that the mask thresholds; --explain its Grad-CAM") {
  const fs::path dir = trained().root / "prob", scans = dir / "scans";
  fs::create_directories(scans);
  std::mt19937 rng(11);
  data::Image image;
  data::Mask truth;
  test::render_blob(test::draw_blob(0, 72, rng), 72, rng, image, truth);
  data::save_image_png(scans / "blob.png", image);
  const fs::path mask = dir / "blob_mask.png", prob = dir / "blob_prob.png", cam = dir / "blob_explain.png";
  const std::string args = "--image " + (scans / "blob.png").string() + models_args() + " --save_mask " +
                           mask.string() + " --save_prob " + prob.string() + " --explain " + cam.string();
  Run r = run_tool("predict", args);
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("Lesion probability map saved to " + prob.string() + " (16-bit grey, 65535 = 1)") !=
        std::string::npos);

  CHECK(std::regex_search(r.output, std::regex("Grad-CAM of (benign|malignant|normal) saved to " + cam.string())));
  const data::Image overlay = data::load_image(cam);  // the scan under the heat map
  CHECK(overlay.width == 72);
  CHECK(overlay.height == 72);
  CHECK(stbi_is_16_bit(prob.c_str()));
  int width = 0, height = 0, channels = 0;
  std::unique_ptr<uint16_t, void (*)(void*)> map(stbi_load_16(prob.c_str(), &width, &height, &channels, 0),
                                                 stbi_image_free);
  REQUIRE(map);
  CHECK(width == 72);
  CHECK(height == 72);
  REQUIRE(channels == 1);
  const data::Mask predicted = data::load_mask({mask});
  size_t disagree = 0;
  for (size_t i = 0; i < predicted.values.size(); ++i) {
    const uint16_t v = map.get()[i];
    disagree += v != 32767 && v != 32768 && (v > 32767) != bool(predicted.values[i]);  // 0.5 rounds either way
  }
  CHECK(disagree == 0);
  CHECK(predicted.lesion_pixels() > 0);
  CHECK(predicted.lesion_pixels() < predicted.values.size());

  fs::remove(mask);  // so that the probability map is the existing output refused
  const std::string before = read_file(prob);
  Run refused = run_tool("predict", args);
  INFO(refused.output);
  CHECK(refused.status == 1);
  CHECK(refused.output.find("--save_prob") != std::string::npos);
  CHECK(read_file(prob) == before);

  Run folder = run_tool("predict", "--image " + scans.string() + models_args() + " --save_prob " +
                                       (dir / "maps").string() + " --explain " + (dir / "maps").string() +
                                       " --csv " + (dir / "p.csv").string());
  INFO(folder.output);
  CHECK(folder.status == 0);
  CHECK(fs::exists(dir / "maps" / "blob_prob.png"));
  CHECK(fs::exists(dir / "maps" / "blob_explain.png"));
  CHECK(read_file(dir / "p.csv").rfind("image,frame,predicted_class,confidence,p_benign,p_malignant,p_normal,lesion_fraction,lesion_pixels,lesion_area_mm2,mask,error\n", 0) == 0);
}

// Outputs never replace the run's inputs, ground truth, each other, or (without --overwrite)
// any file that exists.
TEST_CASE("predict never replaces an input, a ground-truth mask or another output") {
  const Trained& t = trained();
  fs::path root = t.root / "no_clobber";
  fs::create_directories(root);
  const fs::path source = t.data / "images" / "benign" / "benign_1.png";
  auto expect_refusal = [&](const std::string& args, const std::string& message) {
    Run r = run_tool("predict", args + models_args());
    INFO(args << "\n" << r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("predict: error: ") != std::string::npos);
    CHECK(r.output.find(message) != std::string::npos);
  };

  SUBCASE("the scan itself as --save_mask") {
    fs::path scan = root / "scan.png";
    fs::copy_file(source, scan);
    const std::string before = read_file(scan);
    expect_refusal("--image " + scan.string() + " --save_mask " + scan.string(), "--image");
    CHECK(read_file(scan) == before);
  }
  SUBCASE("a BUSI folder: predicted masks would replace the ground truth beside the images") {
    fs::path busi = root / "busi";
    fs::create_directories(busi);
    fs::copy_file(source, busi / "benign_1.png");
    fs::copy_file(t.data / "masks" / "benign" / "benign_1_mask.png", busi / "benign_1_mask.png");
    const std::string truth = read_file(busi / "benign_1_mask.png");
    expect_refusal("--image " + busi.string() + " --save_mask " + busi.string() + " --csv " +
                       (root / "busi.csv").string(), "--save_mask");
    CHECK(read_file(busi / "benign_1_mask.png") == truth);
    CHECK(std::distance(fs::directory_iterator(busi), fs::directory_iterator()) == 2);
  }
  SUBCASE("an existing mask is replaced only with --overwrite") {
    fs::path scan = root / "kept.png", mask = root / "kept_mask.png";
    fs::copy_file(source, scan);
    data::save_mask_png(mask, data::Mask(8, 8, 1));
    const std::string before = read_file(mask);
    expect_refusal("--image " + scan.string() + " --save_mask " + mask.string(), "--overwrite");
    CHECK(read_file(mask) == before);
    Run r = run_tool("predict", "--image " + scan.string() + " --save_mask " + mask.string() + " --overwrite" + models_args());
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(data::load_mask({mask}).width == 64);
  }
  SUBCASE("x.png, x.PNG and x.bmp get one mask each, named after the whole file") {
    fs::path in = root / "same_stem", out = root / "same_stem_masks", csv = root / "same_stem.csv";
    fs::create_directories(in);
    for (const char* name : {"x.png", "x.PNG"}) fs::copy_file(source, in / name);
    std::vector<uint8_t> grey(64 * 64);
    for (size_t i = 0; i < grey.size(); ++i) grey[i] = static_cast<uint8_t>(i % 64 * 4);
    REQUIRE(stbi_write_bmp((in / "x.bmp").c_str(), 64, 64, 1, grey.data()));
    Run r = run_tool("predict", "--image " + in.string() + " --save_mask " + out.string() + " --csv " + csv.string() + models_args());
    INFO(r.output);
    REQUIRE(r.status == 0);
    const std::string text = read_file(csv);
    for (const char* name : {"x.png", "x.PNG", "x.bmp"}) {
      CAPTURE(name);
      CHECK(fs::exists(out / (std::string(name) + "_mask.png")));
      CHECK(text.find("\n" + std::string(name) + ",") != std::string::npos);
      CHECK(text.find((out / (std::string(name) + "_mask.png")).string() + ",\n") != std::string::npos);
    }
    CHECK_FALSE(fs::exists(out / "x_mask.png"));
  }
  SUBCASE("a folder where every image fails leaves the existing CSV as it was") {
    fs::path in = root / "all_bad", csv = root / "kept.csv";
    fs::create_directories(in);
    std::ofstream(in / "a.png") << "not an image";
    std::ofstream(csv) << "earlier predictions\n";
    for (const char* overwrite : {"", " --overwrite"}) {
      Run r = run_tool("predict", "--image " + in.string() + " --csv " + csv.string() + overwrite + models_args());
      INFO(overwrite << ": " << r.output);
      CHECK(r.status == 1);
      CHECK(read_file(csv) == "earlier predictions\n");
    }
  }
}

// The state is made to look like one saved by a build that logged one column fewer
// (val_empty_kept, the last): the resumed log has it from the resumed epoch on.
TEST_CASE("seg_train --resume continues after the saved epoch") {
  const Trained& t = trained();
  fs::path log = t.root / "resume_log", older = t.root / "seg_older_build.last.safetensors";
  nn::SafetensorsFile state = nn::load_safetensors((t.root / "seg.last.safetensors").string());
  std::istringstream history(state.metadata.at("history"));
  std::string shorter;
  for (std::string line; std::getline(history, line);) shorter += line.substr(0, line.rfind(',')) + "\n";
  REQUIRE(state.metadata.at("history").find(",val_empty_kept\n") != std::string::npos);
  state.metadata["history"] = shorter;
  nn::save_safetensors(older.string(), state.tensors, state.metadata);
  Run r = run_tool("seg_train", "--images-dir " + (t.data / "images").string() + " --masks-dir " +
                                    (t.data / "masks").string() + " --arch mit_b0 --img-size 64 --epochs 7 --batch-size 4"
                                    " --lr 1e-3 --resume " + older.string() + " --save-path " +
                                    (t.root / "seg_resumed.safetensors").string() + " --log-dir " + log.string() +
                                    " --resume-anyway");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("resumed from") != std::string::npos);
  CHECK(r.output.find("--epochs 7 (saved: 6)") != std::string::npos);  // said, then continued
  CHECK(r.output.find("epoch 6/7") == std::string::npos);
  CHECK(r.output.find("epoch 7/7 train") != std::string::npos);
  CHECK(test::csv_column(log / "segmentation_log.csv", "epoch") == std::vector<double>{1, 2, 3, 4, 5, 6, 7});
  std::vector<double> kept = test::csv_column(log / "segmentation_log.csv", "val_empty_kept");
  REQUIRE(kept.size() == 7);
  CHECK(std::all_of(kept.begin(), kept.end() - 1, [](double v) { return std::isnan(v); }));
  CHECK(kept.back() >= 0);
  CHECK(kept.back() <= 1);
  std::vector<double> dice = test::csv_column(log / "segmentation_log.csv", "val_dice");
  CHECK(std::none_of(dice.begin(), dice.end(), [](double v) { return std::isnan(v); }));
}

// A resume state holds the arguments of its run and a fingerprint of its data and split: a
// run that differs would continue another run's schedule, or pick its "best" on other data.
TEST_CASE("--resume refuses a run whose arguments or data differ from the saved one") {
  const Trained& t = trained();
  fs::path root = t.root / "resume_checks", out = root / "out.safetensors";
  fs::create_directories(root);
  const std::string state = (t.root / "seg.last.safetensors").string();
  auto resume = [&](const fs::path& data, const std::string& args) {
    return run_tool("seg_train", "--images-dir " + (data / "images").string() + " --masks-dir " + (data / "masks").string() +
                                     " --arch mit_b0 --batch-size 4 --lr 1e-3 --resume " + state + " --save-path " +
                                     out.string() + args);
  };
  SUBCASE("another --img-size and --epochs") {
    Run r = resume(t.data, " --img-size 96 --epochs 8");
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("seg_train: error: " + state) != std::string::npos);
    CHECK(r.output.find("--img-size 96 (saved: 64)") != std::string::npos);
    CHECK(r.output.find("--epochs 8 (saved: 6)") != std::string::npos);
    CHECK(r.output.find("--resume-anyway") != std::string::npos);
  }
  SUBCASE("another data set") {
    fs::path data = root / "fewer";
    fs::copy(t.data, data, fs::copy_options::recursive);
    fs::remove(data / "images" / "benign" / "benign_4.png");
    fs::remove(data / "masks" / "benign" / "benign_4_mask.png");
    Run r = resume(data, " --img-size 64 --epochs 6");
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("data and split differ (saved: 60 images") != std::string::npos);
  }
  SUBCASE("another recipe option") {
    Run r = resume(t.data, " --img-size 64 --epochs 6 --augment ultrasound");
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("--augment ultrasound (saved: standard)") != std::string::npos);
  }
  SUBCASE("cls_train's own flags: another --label-smoothing, ground-truth masks") {
    Run r = run_tool("cls_train", "--images-dir " + (t.data / "images").string() + " --masks-dir " +
                                      (t.data / "masks").string() +
                                      " --arch convnext_atto --img-size 64 --epochs 40 --batch-size 8 --lr 1e-3"
                                      " --drop-path 0 --label-smoothing 0.10 --resume " +
                                      (t.root / "cls.last.safetensors").string() + " --save-path " + out.string());
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("--label-smoothing 0.1 (saved: 0)") != std::string::npos);
    CHECK(r.output.find("--seg-model ground truth (saved: " + t.seg.string() + ")") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(out));
}

TEST_CASE("model_info --export-f16 never replaces the checkpoint it reads, under any spelling") {
  const Trained& t = trained();
  fs::path root = t.root / "export";
  fs::create_directories(root);
  fs::path state = root / "seg.last.safetensors";
  fs::copy_file(t.root / "seg.last.safetensors", state);
  fs::create_symlink(state, root / "link.safetensors");
  fs::create_hard_link(state, root / "hard.safetensors");
  const std::string before = read_file(state);
  for (const fs::path& target : {state, root / "." / "seg.last.safetensors", root / "link.safetensors", root / "hard.safetensors"}) {
    Run r = run_tool("model_info", "--checkpoint " + state.string() + " --export-f16 " + target.string());
    INFO(target << ": " << r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("model_info: error: " + target.string() + ": --export-f16 would replace --checkpoint") != std::string::npos);
  }
  CHECK(read_file(state) == before);
  Run ok = run_tool("model_info", "--checkpoint " + state.string() + " --export-f16 " + (root / "small.safetensors").string());
  CHECK(ok.status == 0);
  CHECK(fs::file_size(root / "small.safetensors") < fs::file_size(state) / 2);
}

// Per-architecture defaults where the flag is not given, printed before training; a warmup
// not shorter than the run is cut to half of it, with a note.
TEST_CASE("seg_train --epochs 1 with the default warmup trains, and says which lr, warmup and clipping it uses") {
  const Trained& t = trained();
  fs::path out = t.root / "one_epoch.safetensors";
  Run r = run_tool("seg_train", "--images-dir " + (t.data / "images").string() + " --masks-dir " + (t.data / "masks").string() +
                                    " --arch mit_b0 --img-size 64 --batch-size 4 --epochs 1 --save-path " + out.string());
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("--warmup-epochs 2 is not shorter than --epochs 1: warming up for 0.5 epochs") != std::string::npos);
  CHECK(r.output.find("lr 0.0002 (mit default), warmup 0.5 epochs, clip-grad 1 (mit default)") != std::string::npos);
  CHECK(fs::exists(out));
  // ConvNeXt: timm's 4e-3 at batch 4096, square-root scaled: 4e-3 * sqrt(16 / 4096) = 2.5e-4.
  Run convnext = run_tool("cls_train", "--images-dir " + (t.data / "images").string() + " --masks-dir " +
                                           (t.data / "masks").string() + " --arch convnext_atto --img-size 64 --epochs 3"
                                           " --batch-size 16 --clip-grad 0.5 --save-path " + (t.root / "cls_3.safetensors").string());
  INFO(convnext.output);
  CHECK(convnext.status == 0);
  CHECK(convnext.output.find("lr 0.00025 (convnext default), warmup 2 epochs (convnext default), clip-grad 0.5;") != std::string::npos);
}

// The card carries smp's encoder_depth, so predict rebuilds the smaller model from the file alone.
TEST_CASE("seg_train --arch resnet18 --encoder-depth 4 trains a 3.6 M-parameter segmenter that predict loads") {
  const Trained& t = trained();
  fs::path out = t.root / "depth4.safetensors";
  Run r = run_tool("seg_train", "--images-dir " + (t.data / "images").string() + " --masks-dir " + (t.data / "masks").string() +
                                    " --arch resnet18 --encoder-depth 4 --img-size 64 --batch-size 4 --epochs 1 --save-path " +
                                    out.string());
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("model: resnet18, 3600977 parameters") != std::string::npos);
  fs::path image = t.data / "images" / "benign" / "benign_0.png";
  Run p = run_tool("predict", "--image " + image.string() + " --seg_model " + out.string() + " --cls_model " + t.cls.string());
  INFO(p.output);
  CHECK(p.status == 0);
  CHECK(p.output.find("Predicted class: ") != std::string::npos);
}

// The card carries the U-Net's decoder channels beside the encoder depth.
TEST_CASE("seg_train --arch unet_resnet18 trains smp's U-Net that predict rebuilds from its card") {
  const Trained& t = trained();
  fs::path out = t.root / "unet.safetensors";
  Run r = run_tool("seg_train", "--images-dir " + (t.data / "images").string() + " --masks-dir " + (t.data / "masks").string() +
                                    " --arch unet_resnet18 --encoder-depth 4 --decoder-channels 128,64,32,16 --img-size 64"
                                    " --batch-size 4 --epochs 1 --save-path " + out.string());
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("model: unet_resnet18, 3574161 parameters") != std::string::npos);
  CHECK(nn::load_safetensors(out.string()).metadata.at("decoder_channels") == "128,64,32,16");
  fs::path image = t.data / "images" / "benign" / "benign_0.png";
  Run p = run_tool("predict", "--image " + image.string() + " --seg_model " + out.string() + " --cls_model " + t.cls.string());
  INFO(p.output);
  CHECK(p.status == 0);
  CHECK(p.output.find("Predicted class: ") != std::string::npos);
}

// Blobs: a benign lesion is small and bright, a malignant one large and dim, which the
// malignancy channel learns within a few epochs.
struct MalignancySegmenter {
  fs::path file = trained().root / "malignancy.safetensors", log = trained().root / "malignancy_log";
  Run run = run_tool("seg_train", blob_dirs() + " --arch resnet18 --encoder-depth 4 --img-size 64 --batch-size 4"
                                                " --epochs 6 --lr 1e-3 --malignancy-map --save-path " + file.string() +
                                                " --log-dir " + log.string());
};

const MalignancySegmenter& malignancy_segmenter() {
  static MalignancySegmenter m;
  return m;
}

TEST_CASE("seg_train --malignancy-map learns which lesions are malignant; predict reads the lesion channel") {
  const Trained& t = trained();
  const Run& r = malignancy_segmenter().run;
  const fs::path out = malignancy_segmenter().file, log = malignancy_segmenter().log;
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("3601234 parameters, 3 input channels, 2 outputs") != std::string::npos);
  CHECK(nn::load_safetensors(out.string()).metadata.at("classes") == R"(["lesion","malignancy"])");
  const std::vector<double> auroc = test::csv_column(log / "segmentation_log.csv", "val_malignancy_auroc");
  CHECK(auroc.back() >= 0.9);
  CHECK(test::csv_column(log / "segmentation_log.csv", "val_lesion_dice").back() > 0.5);

  fs::path image = t.data / "images" / "malignant" / "malignant_0.png", mask = t.root / "malignancy_mask.png";
  Run p = run_tool("predict", "--image " + image.string() + " --seg_model " + out.string() + " --cls_model " +
                                  t.cls.string() + " --save_mask " + mask.string());
  INFO(p.output);
  CHECK(p.status == 0);
  CHECK(std::regex_search(p.output, std::regex("\nMalignancy channel: [01]\\.[0-9]{2} over the marked lesion\n")));
  const data::Mask predicted = data::load_mask({mask});
  CHECK(predicted.lesion_pixels() > 0);
}

// The stacking's mechanics on the blobs: one segmenter and one classifier stand in for both folds'
// models, so the figures are not out of fold; what is checked is the path from evaluate's fit
// through cls_train's card to predict.
TEST_CASE("evaluate --fit-stacking writes a stacking that cls_train --stacking puts on the card and predict uses") {
  const Trained& t = trained();
  REQUIRE(malignancy_segmenter().run.status == 0);
  const fs::path dir = t.root / "stacking", stacking = dir / "stacking.json", csv = dir / "evaluate.csv";
  fs::create_directories(dir);
  for (const char* fold : {"1", "2"}) {
    fs::copy_file(malignancy_segmenter().file, dir / (std::string("seg.fold") + fold + ".safetensors"));
    fs::copy_file(t.cls, dir / (std::string("cls.fold") + fold + ".safetensors"));
  }
  const std::string folds = " --folds 2 --seg-model " + (dir / "seg.fold{fold}.safetensors").string() +
                            " --cls-model " + (dir / "cls.fold{fold}.safetensors").string();
  Run e = run_tool("evaluate", blob_dirs() + folds + " --fit-stacking " + stacking.string() + " --csv " + csv.string());
  INFO(e.output);
  REQUIRE(e.status == 0);
  CHECK(e.output.find("Stacked with the segmenter's malignancy score") != std::string::npos);
  CHECK(e.output.find("fitted on all 60 images") != std::string::npos);
  CHECK(test::csv_column(csv, "malignancy").size() == 60);
  std::ifstream in(stacking);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::vector<std::string> classes{"benign", "malignant", "normal"};
  REQUIRE(app::parse_stacking(text, classes));
  CHECK(!app::parse_stacking(text, {"benign", "normal", "malignant"}));  // another order is another model

  const fs::path cls = dir / "stacked.safetensors";
  const std::string train = blob_dirs() + " --arch convnext_atto --img-size 64 --epochs 1 --batch-size 8 --val-split 0"
                                          " --seg-model " + t.seg.string() + " --save-path " + cls.string();
  Run c = run_tool("cls_train", train + " --stacking " + stacking.string());
  INFO(c.output);
  REQUIRE(c.status == 0);
  CHECK(nn::load_safetensors(cls.string()).metadata.at("stacking") == app::stacking_text(*app::parse_stacking(text, classes), classes));

  const std::string image = " --image " + (t.data / "images" / "malignant" / "malignant_0.png").string();
  Run p = run_tool("predict", image + " --seg_model " + malignancy_segmenter().file.string() + " --cls_model " + cls.string());
  INFO(p.output);
  CHECK(p.status == 0);
  CHECK(p.output.find("Predicted class: ") != std::string::npos);
  CHECK(p.output.find(", stacked into the probabilities\n") != std::string::npos);
  const fs::path predictions = dir / "predictions.csv";
  Run folder = run_tool("predict", "--image " + (t.data / "images" / "malignant").string() + " --seg_model " +
                                       malignancy_segmenter().file.string() + " --cls_model " + cls.string() +
                                       " --csv " + predictions.string());
  INFO(folder.output);
  CHECK(folder.status == 0);
  const std::vector<double> scores = test::csv_column(predictions, "malignancy");
  CHECK(scores.size() == 20);
  CHECK(std::all_of(scores.begin(), scores.end(), [](double v) { return v >= 0 && v <= 1; }));
  Run plain = run_tool("predict", image + " --seg_model " + t.seg.string() + " --cls_model " + cls.string());
  CHECK(plain.status == 1);
  CHECK(plain.output.find(cls.string() + ": stacks its classes with a segmenter's malignancy score; " + t.seg.string() +
                          " has no malignancy channel") != std::string::npos);

  SUBCASE("bad input") {
    auto refused = [](const std::string& tool, const std::string& args, const std::string& message) {
      Run r = run_tool(tool, args);
      INFO(tool << " " << args << "\n" << r.output);
      CHECK(r.status == 1);
      CHECK(r.output.find(message) != std::string::npos);
    };
    refused("evaluate", blob_dirs() + " --seg-model " + t.seg.string() + " --cls-model " + t.cls.string() +
                            " --fit-stacking " + (dir / "x.json").string(), "--fit-stacking: needs --folds K");
    refused("evaluate", blob_dirs() + " --folds 2 --seg-model " + (dir / "seg.fold{fold}.safetensors").string() +
                            " --cls-model " + cls.string() + " --fit-stacking " + (dir / "x.json").string(),
            cls.string() + " is stacked already");
    refused("evaluate", blob_dirs() + folds + " --fit-stacking " + stacking.string(), stacking.string() + ": --fit-stacking exists");
    refused("cls_train", train + " --stacking " + csv.string(), "--stacking " + csv.string() + ": expected");
    refused("cls_train", train + " --stacking " + (dir / "none.json").string(), "no such file");
    refused("cls_train", blob_dirs() + " --arch convnext_atto --img-size 64 --epochs 1 --save-path " +
                             (dir / "x.safetensors").string() + " --stacking " + stacking.string(),
            "--stacking: only with --val-split 0");
    const fs::path one_normal = dir / "one_normal";  // then the folds without it have no normal scan
    fs::copy(t.data, one_normal, fs::copy_options::recursive);
    for (int i = 1; i < 20; ++i) {
      fs::remove(one_normal / "images" / "normal" / ("normal_" + std::to_string(i) + ".png"));
      fs::remove(one_normal / "masks" / "normal" / ("normal_" + std::to_string(i) + "_mask.png"));
    }
    refused("evaluate", "--images-dir " + (one_normal / "images").string() + " --masks-dir " +
                            (one_normal / "masks").string() + folds + " --fit-stacking " + (dir / "x.json").string(),
            "have no normal image to fit the stacking on");
    CHECK(!fs::exists(dir / "x.json"));
    CHECK(!fs::exists(dir / "x.safetensors"));
  }
}

TEST_CASE("bad input: one line naming the file and the problem, exit 1, nothing written") {
  const Trained& t = trained();
  fs::path bad = t.root / "bad";
  fs::create_directories(bad);
  auto copy_dataset = [&](const std::string& name) {
    fs::path d = bad / name;
    fs::copy(t.data, d, fs::copy_options::recursive);
    return d;
  };
  auto dirs = [](const fs::path& d) {
    return "--images-dir " + (d / "images").string() + " --masks-dir " + (d / "masks").string();
  };
  const std::string seg_opts = " --arch mit_b0 --img-size 64 --epochs 1 --batch-size 4 --save-path ";
  auto expect_error = [&](const std::string& tool, const std::string& args, const std::string& message) {
    Run r = run_tool(tool, args);
    INFO(tool << " " << args << "\n" << r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find(tool + ": error: ") != std::string::npos);
    CHECK(r.output.find(message) != std::string::npos);
  };
  fs::path out = bad / "out.safetensors";

  SUBCASE("missing folder") { expect_error("seg_train", "--images-dir " + (bad / "nowhere").string() + seg_opts + out.string(), (bad / "nowhere").string()); }
  SUBCASE("image without mask") {
    fs::path d = copy_dataset("no_mask");
    fs::remove(d / "masks" / "benign" / "benign_3_mask.png");
    expect_error("seg_train", dirs(d) + seg_opts + out.string(), "benign_3.png");
  }
  SUBCASE("mask of another size") {
    fs::path d = copy_dataset("mask_size");
    data::save_mask_png(d / "masks" / "malignant" / "malignant_1_mask.png", data::Mask(32, 64));
    expect_error("seg_train", dirs(d) + seg_opts + out.string(), "malignant_1_mask.png");
  }
  SUBCASE("truncated PNG") {
    fs::path d = copy_dataset("truncated");
    fs::path image = d / "images" / "normal" / "normal_2.png";
    fs::resize_file(image, fs::file_size(image) / 2);
    expect_error("seg_train", dirs(d) + seg_opts + out.string(), "normal_2.png");
  }
  SUBCASE("empty dataset") {
    fs::create_directories(bad / "empty" / "images");
    fs::create_directories(bad / "empty" / "masks");
    expect_error("seg_train", dirs(bad / "empty") + seg_opts + out.string(), (bad / "empty" / "images").string());
  }
  SUBCASE("a class too small to appear on both sides of the split") {
    fs::path d = copy_dataset("small_class");
    for (int i = 1; i < 20; ++i) fs::remove(d / "images" / "normal" / ("normal_" + std::to_string(i) + ".png"));
    expect_error("cls_train", dirs(d) + " --arch convnext_atto --img-size 64 --epochs 1 --save-path " + out.string(), "normal");
  }
  SUBCASE("--malignancy-map without a malignant class") {
    fs::path d = copy_dataset("no_malignant");
    fs::rename(d / "images" / "malignant", d / "images" / "tumour");
    fs::rename(d / "masks" / "malignant", d / "masks" / "tumour");
    expect_error("seg_train", dirs(d) + " --malignancy-map --arch resnet18 --img-size 64 --epochs 1 --save-path " +
                                  out.string(), "--malignancy-map: " + (d / "images").string() + " has no \"malignant\"");
  }
  SUBCASE("--malignancy-weight out of range, or without --malignancy-map") {
    const std::string args = dirs(t.data) + " --arch resnet18 --img-size 64 --epochs 1 --save-path " + out.string();
    expect_error("seg_train", args + " --malignancy-map --malignancy-weight 0", "--malignancy-weight 0: must be above 0");
    expect_error("seg_train", args + " --malignancy-weight 0.5", "--malignancy-weight: only with --malignancy-map");
  }
  SUBCASE("--img-size not a multiple of 32") { expect_error("seg_train", dirs(t.data) + " --img-size 100 --save-path " + out.string(), "--img-size 100"); }
  SUBCASE("a training whose checkpoint would replace an input") {
    fs::path seg = bad / "seg.safetensors", state = bad / "seg.last.safetensors";
    fs::copy_file(t.seg, seg);
    fs::copy_file(t.root / "seg.last.safetensors", state);
    const std::string seg_before = read_file(seg), state_before = read_file(state);
    expect_error("seg_train", dirs(t.data) + seg_opts + state.string() + " --resume " + state.string(),
                 state.string() + ": --save-path would replace --resume");
    expect_error("cls_train", dirs(t.data) + " --arch convnext_atto --img-size 64 --epochs 1 --seg-model " + seg.string() +
                     " --save-path " + seg.string(), seg.string() + ": --save-path would replace --seg-model");
    CHECK(read_file(seg) == seg_before);
    CHECK(read_file(state) == state_before);
  }
  SUBCASE("fold segmenters without their fold count") {
    expect_error("cls_train", dirs(t.data) + " --arch convnext_atto --img-size 64 --epochs 1 --seg-model " +
                     (bad / "seg.fold{fold}.safetensors").string() + " --save-path " + out.string(),
                 "give the segmenters' fold count by --seg-folds or --folds");
  }
  SUBCASE("--encoder-depth on a MiT encoder") {
    expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --encoder-depth 4",
                 "--encoder-depth 4: only a ResNet encoder (--arch resnet18 ...) stops early; mit_b0 is built whole");
  }
  SUBCASE("--atrous-rates not three rates") {
    expect_error("seg_train", dirs(t.data) + " --arch resnet18 --atrous-rates 2,4 --save-path " + out.string(),
                 "--atrous-rates '2,4': expected three whole numbers from 1 to 64, as 12,24,36");
  }
  SUBCASE("--decoder-channels on DeepLabV3+, or not one per stage") {
    expect_error("seg_train", dirs(t.data) + " --arch resnet18 --decoder-channels 8,8,8,8,8 --save-path " + out.string(),
                 "--decoder-channels: only a U-Net (--arch unet_resnet18 ...) has them; resnet18 is DeepLabV3+");
    expect_error("seg_train", dirs(t.data) + " --arch unet_resnet18 --encoder-depth 4 --decoder-channels 8,8 --save-path " +
                     out.string(),
                 "--decoder-channels '8,8': expected one whole number from 1 to 4096 per encoder stage (--encoder-depth of "
                 "them), as 128,64,32,16");
  }
  SUBCASE("--encoder-depth out of range") {
    expect_error("seg_train", dirs(t.data) + " --arch resnet18 --encoder-depth 6 --save-path " + out.string(),
                 "--encoder-depth 6: must be 3, 4 or 5");
  }
  SUBCASE("a negative warmup") { expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --warmup-epochs -1", "--warmup-epochs -1: must be 0 or more"); }
  SUBCASE("batch size 1 with BatchNorm") { expect_error("seg_train", dirs(t.data) + " --arch mit_b0 --img-size 64 --batch-size 1 --save-path " + out.string(), "BatchNorm"); }
  SUBCASE("an output folder that does not exist") { expect_error("seg_train", dirs(t.data) + " --save-path " + (bad / "no" / "x.safetensors").string(), (bad / "no").string()); }
  SUBCASE("--device cuda without a GPU") { expect_error("seg_train", dirs(t.data) + " --device cuda --save-path " + out.string(), "--device cuda"); }
  SUBCASE("--amp fp16") { expect_error("seg_train", dirs(t.data) + " --amp fp16 --save-path " + out.string(), "--amp fp16: expected off or bf16"); }
  SUBCASE("a checkpoint of the other task") {
    fs::path image = t.data / "images" / "benign" / "benign_0.png";
    expect_error("predict", "--image " + image.string() + " --seg_model " + t.cls.string() + " --cls_model " + t.cls.string(),
                 t.cls.string() + ": is a classification checkpoint");
  }
  SUBCASE("an unreadable checkpoint") {
    fs::path junk = bad / "junk.safetensors";
    std::ofstream(junk) << "not a checkpoint";
    fs::path image = t.data / "images" / "benign" / "benign_0.png";
    expect_error("predict", "--image " + image.string() + " --seg_model " + junk.string() + " --cls_model " + t.cls.string(), junk.string());
  }
  SUBCASE("a masks folder that cannot be created") {
    fs::path file = bad / "plain_file";
    std::ofstream(file).close();
    expect_error("predict", "--image " + (t.data / "images" / "benign").string() + models_args() + " --save_mask " +
                                (file / "masks").string(),
                 "--save_mask " + (file / "masks").string() + ": cannot be created: " + file.string() + " is not a folder");
  }
  SUBCASE("--label-smoothing outside 0..1") {
    expect_error("cls_train", dirs(t.data) + " --arch convnext_atto --label-smoothing 2 --save-path " + out.string(),
                 "--label-smoothing 2: must be from 0 to 1");
  }
  SUBCASE("--hold-out naming an image the data lacks") {
    std::ofstream(bad / "hold.txt") << "benign/benign_0\nbenign/benign_99\n";
    expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --hold-out " + (bad / "hold.txt").string(),
                 (bad / "hold.txt").string() + ":2: 'benign/benign_99' is not an image of --images-dir");
  }
  SUBCASE("a negative --mixup") {
    expect_error("cls_train", dirs(t.data) + " --arch convnext_atto --mixup -0.2 --save-path " + out.string(),
                 "--mixup -0.2: must be 0 (off) or more");
  }
  SUBCASE("--lesion-view outside 0..4") {
    expect_error("cls_train", dirs(t.data) + " --arch convnext_atto --lesion-view -1 --save-path " + out.string(),
                 "--lesion-view -1: must be from 0 (off) to 4");
    expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --lesion-view 4.5",
                 "--lesion-view 4.5: must be from 0 (off) to 4");
    expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --lesion-view 0.5 --val-split 0 --empty-below 0.9",
                 "--empty-below: a refiner (--lesion-view) has no empty-image threshold");
  }
  SUBCASE("--refine-model without --seg-model, or not a refiner") {
    expect_error("evaluate", dirs(t.data) + " --cls-model " + t.cls.string() + " --refine-model " + t.seg.string(),
                 "--refine-model: needs --seg-model, whose lesions it outlines");
    expect_error("evaluate", dirs(t.data) + " --seg-model " + t.seg.string() + " --refine-model " + t.seg.string(),
                 t.seg.string() + ": not a refining segmenter");
  }
  SUBCASE("--checkpoint neither best nor last") {
    expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --checkpoint first", "--checkpoint first: must be best or last");
  }
  SUBCASE("--checkpoint best without validation images") {
    expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --val-split 0 --checkpoint best",
                 "--checkpoint best: --val-split 0 leaves no validation images to pick the best epoch by");
  }
  SUBCASE("--temperature or --empty-below where a validation split fits it") {
    expect_error("cls_train", dirs(t.data) + " --arch convnext_atto --temperature 1.5 --save-path " + out.string(),
                 "--temperature: only with --val-split 0; a validation split fits it");
    expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --folds 2 --empty-below 0.9",
                 "--empty-below: only with --val-split 0; a validation split fits it");
  }
  SUBCASE("--empty-below under 0.5") {
    expect_error("seg_train", dirs(t.data) + seg_opts + out.string() + " --val-split 0 --empty-below 0.3",
                 "--empty-below 0.3: must be from 0.5 to 0.999");
  }
  SUBCASE("model_info --in-channels and --classes beyond any model") {
    expect_error("model_info", "--arch convnext_atto --in-channels 65", "--in-channels 65: must be from 1 to 64");
    expect_error("model_info", "--arch convnext_atto --classes 1001", "--classes 1001: must be from 1 to 1000");
  }
  SUBCASE("evaluate: a class folder the classifier does not know") {
    fs::path d = copy_dataset("unknown_class");
    fs::rename(d / "images" / "normal", d / "images" / "cyst");
    fs::rename(d / "masks" / "normal", d / "masks" / "cyst");
    expect_error("evaluate", dirs(d) + models_args(),
                 "class folder 'cyst' is not one of " + t.cls.string() + "'s classes (benign, malignant, normal)");
  }
  SUBCASE("evaluate without a model") {
    expect_error("evaluate", dirs(t.data), "--seg-model, --cls-model: give one or both");
  }
  SUBCASE("evaluate --folds without {fold} in a checkpoint's name") {
    expect_error("evaluate", dirs(t.data) + models_args() + " --folds 2", "--folds: needs {fold} in --seg-model or --cls-model");
  }
  SUBCASE("a corrupt image leaves the existing mask alone") {
    fs::path image = bad / "cut.png", mask = bad / "kept_mask.png";
    fs::copy_file(t.data / "images" / "benign" / "benign_0.png", image);
    fs::resize_file(image, 100);
    data::save_mask_png(mask, data::Mask(8, 8, 1));
    std::string before = read_file(mask);
    expect_error("predict", "--image " + image.string() + models_args() + " --save_mask " + mask.string() + " --overwrite",
                 image.string());
    CHECK(read_file(mask) == before);
  }
  CHECK_FALSE(fs::exists(out));
}

namespace {

// The rows of a tool's CSV by their first cell.
std::map<std::string, std::vector<std::string>> csv_rows(const fs::path& csv) {
  std::map<std::string, std::vector<std::string>> rows;
  for (std::vector<std::string>& cells : app::csv_records(read_file(csv)))
    if (!cells.empty()) rows[cells[0]] = std::move(cells);
  return rows;
}

// A --folds run's per-image table: this header, every validated image once, each row as long as
// the header and under its own class's folder.
std::map<std::string, std::vector<std::string>> out_of_fold_rows(const fs::path& csv,
                                                                 const std::vector<std::string>& header,
                                                                 const std::map<std::string, int>& validated) {
  auto rows = csv_rows(csv);
  REQUIRE(rows["image"] == header);
  rows.erase("image");
  CHECK(rows.size() == validated.size());
  for (auto& [image, row] : rows) {
    CAPTURE(image);
    REQUIRE(row.size() == header.size());
    CHECK(validated.count(image) == 1);
    CHECK(image.find(row[1] + "/") == 0);
  }
  return rows;
}

}  // namespace

namespace {

// Whether a checkpoint holds the same weights as the resume state beside it (its last epoch).
bool holds_last_epoch(const fs::path& checkpoint, const fs::path& state) {
  nn::SafetensorsFile kept = nn::load_safetensors(checkpoint.string()), last = nn::load_safetensors(state.string());
  for (auto& [name, weights] : kept.tensors)
    if (!last.tensors.count(name) || weights.to_vector() != last.tensors.at(name).to_vector()) return false;
  return !kept.tensors.empty();
}

}  // namespace

TEST_CASE("cross-validation: --folds 2 trains a model per fold, scores each, reports mean and spread") {
  const Trained& t = trained();
  fs::path root = t.root / "cv", seg = root / "seg.safetensors", cls = root / "cls.safetensors";
  fs::create_directories(root);
  const std::string dirs = blob_dirs();
  Run s = run_tool("seg_train", dirs + " --arch mit_b0 --img-size 64 --epochs 1 --warmup-epochs 0 --batch-size 4 --folds 2"
                                       " --malignancy-map --save-path " + seg.string() + " --log-dir " +
                                       (root / "seg_log").string());
  INFO(s.output);
  REQUIRE(s.status == 0);
  CHECK(fs::exists(root / "seg.fold1.safetensors"));
  CHECK(fs::exists(root / "seg.fold2.safetensors"));
  CHECK(s.output.find("empty below ") != std::string::npos);
  CHECK(s.output.find("folds (the last epoch of each, calibrated") != std::string::npos);
  CHECK(holds_last_epoch(root / "seg.fold2.safetensors", root / "seg.fold2.last.safetensors"));
  // Every image validated in exactly one fold, and the two folds' classes within one of each other.
  std::map<std::string, int> validated;
  std::map<std::string, int> fold_class[2];
  for (int k = 0; k < 2; ++k)
    for (auto& [image, row] : csv_rows(root / "seg_log" / ("fold" + std::to_string(k + 1)) / "split.csv"))
      if (row.size() == 4 && row[2] == "val") ++validated[image], ++fold_class[k][row[1]];
  CHECK(validated.size() == 60);
  for (auto& [image, times] : validated) CHECK(times == 1);
  for (const char* c : test::kBlobClasses) CHECK(std::abs(fold_class[0][c] - fold_class[1][c]) <= 1);
  auto seg_rows = csv_rows(root / "seg_log" / "cross_validation.csv");
  REQUIRE(seg_rows.count("val_lesion_dice"));
  REQUIRE(seg_rows["metric"] == std::vector<std::string>{"metric", "fold1", "fold2", "mean", "std", "min", "max"});
  const auto& dice = seg_rows["val_dice"];
  double a = std::stod(dice[1]), b = std::stod(dice[2]);
  CHECK(std::stod(dice[3]) == doctest::Approx((a + b) / 2).epsilon(1e-5));
  CHECK(std::stod(dice[4]) == doctest::Approx(std::abs(a - b) / std::sqrt(2.0)).epsilon(1e-4));
  CHECK(std::stod(dice[5]) == doctest::Approx(std::min(a, b)).epsilon(1e-5));
  // Every image once in the per-image table, lesion found where its Dice is above 0, a lesion-free
  // image's Dice 1 only where nothing is marked, the malignancy over the lesion where there is one;
  // the lesion images' Dice pooled lies between the folds'.
  const auto seg_images = out_of_fold_rows(root / "seg_log" / "out_of_fold.csv",
                                           {"image", "class", "dice", "iou", "lesion_found", "predicted_share",
                                            "true_share", "peak_probability", "malignancy"},
                                           validated);
  double lesion_dice = 0;
  int lesion_images = 0;
  for (auto& [image, row] : seg_images) {
    CAPTURE(image);
    const double image_dice = std::stod(row[2]), marked = std::stod(row[5]), peak = std::stod(row[7]);
    CHECK((peak >= 0 && peak <= 1));
    if (std::stod(row[6]) > 0) {
      CHECK(row[4] == (image_dice > 0 ? "1" : "0"));
      CHECK((std::stod(row[8]) > 0 && std::stod(row[8]) < 1));
      lesion_dice += image_dice, ++lesion_images;
    } else {
      CHECK(row[4].empty());
      CHECK(row[8].empty());
      CHECK(image_dice == (marked == 0 ? 1.0 : 0.0));
    }
  }
  REQUIRE(lesion_images > 0);
  const double fold_lesion[2] = {std::stod(seg_rows["val_lesion_dice"][1]), std::stod(seg_rows["val_lesion_dice"][2])};
  CHECK(lesion_dice / lesion_images >= std::min(fold_lesion[0], fold_lesion[1]) - 1e-5);
  CHECK(lesion_dice / lesion_images <= std::max(fold_lesion[0], fold_lesion[1]) + 1e-5);
  CHECK(s.output.find("per image, out of fold: " + (root / "seg_log" / "out_of_fold.csv").string()) != std::string::npos);

  // One fold as its own job: the same split and the same model as that fold of the whole run.
  Run only = run_tool("seg_train", dirs + " --arch mit_b0 --img-size 64 --epochs 1 --warmup-epochs 0 --batch-size 4"
                                          " --folds 2 --only-fold 2 --save-path " + (root / "only.safetensors").string() +
                                          " --log-dir " + (root / "only_log").string());
  INFO(only.output);
  REQUIRE(only.status == 0);
  CHECK(fs::exists(root / "only.fold2.safetensors"));
  CHECK_FALSE(fs::exists(root / "only.fold1.safetensors"));
  CHECK(csv_rows(root / "only_log" / "fold2" / "split.csv") == csv_rows(root / "seg_log" / "fold2" / "split.csv"));
  auto only_rows = csv_rows(root / "only_log" / "cross_validation.fold2.csv");
  REQUIRE(only_rows["metric"] == std::vector<std::string>{"metric", "fold2", "mean", "std", "min", "max"});
  CHECK(std::stod(only_rows["val_dice"][1]) == doctest::Approx(b).epsilon(1e-5));
  CHECK_FALSE(fs::exists(root / "only_log" / "cross_validation.csv"));

  // Every image's mask comes from the segmenter that did not train on it (out of fold); and
  // with every recipe flag on, which must run through.
  Run c = run_tool("cls_train", dirs + " --arch convnext_atto --img-size 64 --epochs 1 --warmup-epochs 0 --batch-size 8 --folds 2"
                                       " --augment ultrasound --balanced-sampling --ema 0.9 --flip-tta --mixup 0.2 --cutmix 1"
                                       " --seg-model " + (root / "seg.fold{fold}.safetensors").string() +
                                       " --save-path " + cls.string() + " --log-dir " + (root / "cls_log").string());
  INFO(c.output);
  REQUIRE(c.status == 0);
  CHECK(c.output.find("masks: predicted by " + (root / "seg.fold1.safetensors").string() +
                      " ... (each image's out-of-fold segmenter)") != std::string::npos);
  CHECK(std::regex_search(c.output, std::regex(R"(of their lesions found\), [01]\.\d{4} of lesion-free images left empty)")));
  CHECK(c.output.find("temperature ") != std::string::npos);
  auto cls_rows = csv_rows(root / "cls_log" / "cross_validation.csv");
  for (const char* metric : {"val_accuracy", "val_macro_f1", "val_recall_benign", "val_recall_malignant",
                             "val_recall_normal", "val_auroc_malignant", "val_ece"}) {
    CAPTURE(metric);
    REQUIRE(cls_rows[metric].size() == 7);
    double mean = std::stod(cls_rows[metric][3]);
    CHECK(mean >= 0);
    CHECK(mean <= 1);
  }
  std::string svg = read_file(root / "cls_log" / "reliability.svg");
  CHECK(svg.find("out-of-fold calibration, 60 images") != std::string::npos);
  // Every image once, with its own class, probabilities summing to 1 and the argmax as prediction;
  // their accuracy is the folds' accuracies weighted by the folds' sizes.
  const auto per_image = out_of_fold_rows(root / "cls_log" / "out_of_fold.csv",
                                          {"image", "class", "predicted", "p_benign", "p_malignant", "p_normal"}, validated);
  int correct = 0;
  for (auto& [image, row] : per_image) {
    CAPTURE(image);
    const double p[3] = {std::stod(row[3]), std::stod(row[4]), std::stod(row[5])};
    CHECK(p[0] + p[1] + p[2] == doctest::Approx(1).epsilon(1e-5));
    CHECK(row[2] == test::kBlobClasses[std::max_element(p, p + 3) - p]);
    correct += row[1] == row[2];
  }
  double pooled = 0;
  for (int k = 0; k < 2; ++k) {
    int fold_size = 0;
    for (auto& [c, n] : fold_class[k]) fold_size += n;
    pooled += std::stod(cls_rows["val_accuracy"][k + 1]) * fold_size / 60.0;
  }
  CHECK(correct / 60.0 == doctest::Approx(pooled).epsilon(1e-5));

  // evaluate --folds 2 scores the run through predict's pipeline: each image by the pair of the
  // fold that validated it; per fold, the mean of the folds, and pooled.
  const fs::path scores = root / "evaluate.csv";
  Run e = run_tool("evaluate", dirs + " --seg-model " + (root / "seg.fold{fold}.safetensors").string() + " --cls-model " +
                                   (root / "cls.fold{fold}.safetensors").string() + " --folds 2 --csv " + scores.string());
  INFO(e.output);
  REQUIRE(e.status == 0);
  std::smatch f1, f2, mean;
  const std::string figure = R"(, macro-F1 ([0-9.]+),)";
  REQUIRE(std::regex_search(e.output, f1, std::regex("\nfold 1: Dice [0-9.]+.*" + figure)));
  REQUIRE(std::regex_search(e.output, f2, std::regex("\nfold 2: Dice [0-9.]+.*" + figure)));
  REQUIRE(std::regex_search(e.output, mean, std::regex(R"(\n2 folds, mean \+- spread: .*, macro-F1 ([0-9.]+) \+- [0-9.]+,)")));
  CHECK(std::stod(mean[1]) == doctest::Approx((std::stod(f1[1]) + std::stod(f2[1])) / 2).epsilon(2e-4));
  CHECK(e.output.find("\npooled out of fold: Dice ") != std::string::npos);
  std::map<std::string, std::string> validated_by;  // image -> the fold whose split.csv validates it
  for (int k = 0; k < 2; ++k)
    for (auto& [image, row] : csv_rows(root / "seg_log" / ("fold" + std::to_string(k + 1)) / "split.csv"))
      if (row.size() == 4 && row[2] == "val") validated_by[image] = std::to_string(k + 1);
  const auto evaluated = app::csv_records(read_file(scores));
  REQUIRE(evaluated.size() == 61);
  CHECK(evaluated[0][1] == "fold");
  for (size_t i = 1; i < evaluated.size(); ++i) {
    CAPTURE(evaluated[i][0]);
    CHECK(validated_by.at(evaluated[i][0]) == evaluated[i][1]);
  }
}

TEST_CASE("split.csv and the out-of-fold table quote a name with a comma and quotes as CSV does") {
  const fs::path root = trained().root / "quoted", data = root / "blobs";
  fs::remove_all(root);
  test::write_blob_dataset(data, 4, 64, 11);
  const std::string odd = "benign \"0\", first";
  fs::rename(data / "images" / "benign" / "benign_0.png", data / "images" / "benign" / (odd + ".png"));
  fs::rename(data / "masks" / "benign" / "benign_0_mask.png", data / "masks" / "benign" / (odd + "_mask.png"));
  Run s = run_tool("seg_train", "--images-dir " + (data / "images").string() + " --masks-dir " +
                                    (data / "masks").string() +
                                    " --arch mit_b0 --img-size 64 --epochs 1 --warmup-epochs 0 --batch-size 4 --folds 2"
                                    " --save-path " + (root / "seg.safetensors").string() +
                                    " --log-dir " + (root / "log").string());
  INFO(s.output);
  REQUIRE(s.status == 0);
  for (const fs::path& csv : {root / "log" / "fold1" / "split.csv", root / "log" / "out_of_fold.csv"}) {
    CAPTURE(csv);
    const auto records = app::csv_records(read_file(csv));
    REQUIRE(records.size() == 13);  // the header and 12 images
    int named = 0;
    for (const auto& record : records) {
      CHECK(record.size() == records.front().size());
      named += record.front() == "benign/" + odd;
    }
    CHECK(named == 1);
  }
}

TEST_CASE("--val-split 0 trains on every image and keeps the last epoch, calibrated as its flags say") {
  const Trained& t = trained();
  fs::path root = t.root / "all", seg = root / "seg.safetensors", cls = root / "cls.safetensors";
  fs::create_directories(root);
  const std::string dirs = blob_dirs();
  std::ofstream(root / "demo.txt") << "# the demo's scan\nmalignant/malignant_3\n";
  Run s = run_tool("seg_train", dirs + " --arch mit_b0 --img-size 64 --epochs 2 --batch-size 4 --lr 1e-3 --val-split 0"
                                       " --empty-below 0.8 --hold-out " + (root / "demo.txt").string() +
                                       " --save-path " + seg.string() + " --log-dir " + (root / "seg_log").string());
  INFO(s.output);
  REQUIRE(s.status == 0);
  // The scan and its near-duplicates (its duplicate group) are held out, nothing else.
  auto split = csv_rows(root / "seg_log" / "split.csv");
  const std::string group = split["malignant/malignant_3"].at(3);
  int held = 0;
  for (auto& [image, row] : split) {
    if (image == "image") continue;
    CHECK((row.at(2) == "held out") == (row.at(3) == group));
    held += row.at(2) == "held out";
  }
  CHECK(s.output.find("train " + std::to_string(60 - held) + " (") != std::string::npos);
  CHECK(s.output.find("val 0 (benign 0, malignant 0, normal 0), held out " + std::to_string(held) + " (benign 0, malignant " +
                      std::to_string(held) + ", normal 0)") != std::string::npos);
  CHECK(s.output.find("kept the last epoch (2), no validation images: " + seg.string()) != std::string::npos);
  CHECK(holds_last_epoch(seg, root / "seg.last.safetensors"));
  nn::SafetensorsFile seg_file = nn::load_safetensors(seg.string());
  CHECK(seg_file.metadata.at("checkpoint") == "last epoch");
  CHECK(seg_file.metadata.at("empty_below") == "0.8");
  std::vector<double> dice = test::csv_column(root / "seg_log" / "segmentation_log.csv", "val_dice");
  REQUIRE(dice.size() == 2);
  CHECK(std::all_of(dice.begin(), dice.end(), [](double v) { return std::isnan(v); }));

  Run c = run_tool("cls_train", dirs + " --arch convnext_atto --img-size 64 --epochs 2 --batch-size 8 --val-split 0"
                                       " --temperature 1.5 --seg-model " + seg.string() + " --save-path " + cls.string());
  INFO(c.output);
  REQUIRE(c.status == 0);
  CHECK(c.output.find("temperature ") == std::string::npos);  // nothing fitted
  CHECK(holds_last_epoch(cls, root / "cls.last.safetensors"));
  CHECK(nn::load_safetensors(cls.string()).metadata.at("temperature") == "1.5");
  Run p = run_tool("predict", "--image " + (t.data / "images" / "benign" / "benign_0.png").string() + " --seg_model " +
                                  seg.string() + " --cls_model " + cls.string());
  INFO(p.output);
  CHECK(p.status == 0);
  CHECK(p.output.find("Predicted class: ") != std::string::npos);
}

TEST_CASE("--checkpoint last keeps the last epoch where a validation split would pick another; best is the default") {
  const Trained& t = trained();
  fs::path root = t.root / "last", seg = root / "seg.safetensors";
  fs::create_directories(root);
  Run s = run_tool("seg_train", blob_dirs() + " --arch mit_b0 --img-size 64 --epochs 3 --batch-size 4 --lr 1e-3"
                                             " --checkpoint last --save-path " + seg.string());
  INFO(s.output);
  REQUIRE(s.status == 0);
  CHECK(s.output.find("saved " + seg.string() + " (epoch 3, val_dice ") != std::string::npos);
  CHECK(s.output.find("empty below ") != std::string::npos);  // fitted on the last epoch's outputs
  CHECK(holds_last_epoch(seg, root / "seg.last.safetensors"));
  CHECK(nn::load_safetensors(seg.string()).metadata.at("checkpoint") == "last epoch");
  // The shared pair picked its best of 6 epochs: epoch 6 is not always it, so compare by the card.
  nn::SafetensorsFile best = nn::load_safetensors(t.seg.string());
  CHECK(best.metadata.at("checkpoint") == "best epoch");
  CHECK(holds_last_epoch(t.seg, t.root / "seg.last.safetensors") == (best.metadata.at("best_epoch") == "6"));
}

TEST_CASE("the fitted temperature is in the classifier's card, and predict applies it") {
  const Trained& t = trained();
  nn::SafetensorsFile file = nn::load_safetensors(t.cls.string());
  REQUIRE(file.metadata.count("temperature"));
  CHECK(std::stod(file.metadata.at("temperature")) > 0);
  // The same weights at T = 1 (as an old checkpoint without the key) and at T = 4.
  fs::path plain = t.root / "cls_t1.safetensors", hot = t.root / "cls_t4.safetensors";
  file.metadata.erase("temperature");
  nn::save_safetensors(plain.string(), file.tensors, file.metadata);
  file.metadata["temperature"] = "4";
  nn::save_safetensors(hot.string(), file.tensors, file.metadata);
  fs::path image = t.data / "images" / "malignant" / "malignant_3.png";
  auto probabilities = [&](const fs::path& cls, const std::string& extra) {
    Run r = run_tool("predict", "--image " + image.string() + " --seg_model " + t.seg.string() + " --cls_model " +
                                    cls.string() + extra);
    INFO(r.output);
    REQUIRE(r.status == 0);
    std::smatch m;
    REQUIRE(std::regex_search(r.output, m, std::regex("benign (\\S+), malignant (\\S+), normal (\\S+)")));
    return std::make_pair(std::vector<double>{std::stod(m[1]), std::stod(m[2]), std::stod(m[3])}, r.output);
  };
  auto [p1, out1] = probabilities(plain, "");
  auto [p4, out4] = probabilities(hot, " --min_confidence 0.99");
  // softmax(z / 4) = p^(1/4) normalised: p4[a] / p4[b] = (p1[a] / p1[b])^(1/4). predict prints
  // 4 decimals (h = 5e-5 off at most), so the classes compared are those p1 prints as 0.001 or
  // more, within the tolerance that rounding allows (a class printed 0.0000 would pin nothing).
  constexpr double h = 5e-5;
  std::vector<int> printed;
  for (int k = 0; k < 3; ++k)
    if (p1[k] >= 1e-3) printed.push_back(k);
  REQUIRE(printed.size() >= 2);
  for (size_t i = 1; i < printed.size(); ++i) {
    const int a = printed[0], b = printed[i];
    const double tol = 0.25 * (h / p1[a] + h / p1[b]) + h / p4[a] + h / p4[b];
    CHECK(p4[a] / p4[b] == doctest::Approx(std::pow(p1[a] / p1[b], 0.25)).epsilon(tol));
  }
  CHECK(out4.find(" confidence) [low confidence]\n") != std::string::npos);
  CHECK(std::get<1>(probabilities(hot, " --min_confidence 0")).find("[low confidence]") == std::string::npos);
}
