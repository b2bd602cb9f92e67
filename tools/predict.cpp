// predict: segments the lesion, then classifies image + predicted mask.
//   predict --image scan.png --seg_model S --cls_model C --save_mask scan_mask.png
// prints "Predicted class: benign (0.92 confidence)" and the class probabilities. With a
// folder for --image it writes one CSV row per image (and masks into the --save_mask folder).
#include <algorithm>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "tools/app/inference.h"
#include "tools/app/runtime.h"
#include "tools/data/atomic_file.h"
#include "tools/data/dataset.h"

namespace {

using namespace sono;
namespace fs = std::filesystem;

struct Predictor {
  app::LoadedModel seg, cls;
  Device device;
  bool overlay;
};

struct Prediction {
  std::vector<double> probabilities;
  size_t predicted = 0;
  data::Mask mask;
};

Prediction predict_image(Predictor& p, const data::Image& image) {
  Prediction r;
  r.mask = app::segment(p.seg, image, image.height, image.width, p.device);
  r.probabilities = app::classify(p.cls, image, r.mask, p.device);
  r.predicted = std::max_element(r.probabilities.begin(), r.probabilities.end()) - r.probabilities.begin();
  return r;
}

std::string class_line(const Predictor& p, const Prediction& r) {
  char line[160];
  std::snprintf(line, sizeof line, "Predicted class: %s (%.2f confidence)",
                p.cls.card.classes.at(r.predicted).c_str(), r.probabilities[r.predicted]);
  return line;
}

std::string probabilities_line(const Predictor& p, const Prediction& r) {
  std::ostringstream os;
  os << "Probabilities:" << std::fixed << std::setprecision(4);
  for (size_t c = 0; c < r.probabilities.size(); ++c)
    os << (c ? ", " : " ") << p.cls.card.classes[c] << " " << r.probabilities[c];
  return os.str();
}

fs::path overlay_path(const fs::path& mask_path) {
  return mask_path.parent_path() / (mask_path.stem().string() + "_overlay.png");
}

// Mask (and overlay) at `mask_path`; returns what was written, for the report.
std::string save_outputs(const Predictor& p, const data::Image& image, const Prediction& r, const fs::path& mask_path) {
  data::save_mask_png(mask_path, r.mask);
  std::ostringstream os;
  os << "Mask saved to " << mask_path.string() << " (lesion " << std::fixed << std::setprecision(1)
     << 100.0 * r.mask.lesion_pixels() / (r.mask.values.size() ? r.mask.values.size() : 1) << "% of the image)";
  if (p.overlay) {
    data::save_overlay_png(overlay_path(mask_path), image, r.mask);
    os << ", overlay " << overlay_path(mask_path).string();
  }
  return os.str();
}

int predict_one(Predictor& p, const fs::path& image_path, const std::string& save_mask) {
  data::Image image = data::load_image(image_path);
  Prediction r = predict_image(p, image);
  std::cout << class_line(p, r) << "\n" << probabilities_line(p, r) << "\n";
  if (!save_mask.empty()) std::cout << save_outputs(p, image, r, save_mask) << "\n";
  return 0;
}

std::vector<fs::path> images_in(const fs::path& folder) {
  std::vector<fs::path> files;
  for (auto& entry : fs::directory_iterator(folder)) {
    std::string stem = entry.path().stem().string();
    bool is_mask = stem.find("_mask") != std::string::npos || stem.find("_overlay") != std::string::npos;
    if (entry.is_regular_file() && data::is_image_file(entry.path()) && !is_mask) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  SONO_CHECK(!files.empty(), folder.string(), ": no images (.png .jpg .jpeg .bmp) in this folder");
  return files;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

// One CSV row per image; a file that fails is reported in its row and the run exits 1.
int predict_folder(Predictor& p, const fs::path& folder, const std::string& mask_folder, const std::string& csv_path) {
  std::vector<fs::path> files = images_in(folder);
  if (!mask_folder.empty()) fs::create_directories(mask_folder);
  std::ostringstream csv;
  csv << "image,predicted_class,confidence";
  for (auto& c : p.cls.card.classes) csv << ",p_" << c;
  csv << ",lesion_fraction,mask,error\n" << std::setprecision(6);
  int failures = 0;
  for (auto& file : files) {
    csv << csv_field(file.filename().string());
    try {
      data::Image image = data::load_image(file);
      Prediction r = predict_image(p, image);
      csv << "," << p.cls.card.classes[r.predicted] << "," << r.probabilities[r.predicted];
      for (double prob : r.probabilities) csv << "," << prob;
      csv << "," << double(r.mask.lesion_pixels()) / r.mask.values.size();
      fs::path mask_path;
      if (!mask_folder.empty()) {
        mask_path = fs::path(mask_folder) / (file.stem().string() + "_mask.png");
        save_outputs(p, image, r, mask_path);
      }
      csv << "," << csv_field(mask_path.string()) << ",\n";
      std::cout << file.filename().string() << ": " << class_line(p, r) << "\n";
    } catch (const Error& e) {
      ++failures;
      csv << std::string(p.cls.card.classes.size() + 4, ',') << csv_field(e.what()) << "\n";
      std::cerr << "predict: error: " << e.what() << "\n";
    }
  }
  data::write_file_atomic(csv_path, csv.str());
  std::cout << files.size() - failures << " of " << files.size() << " images predicted; CSV " << csv_path << "\n";
  return failures ? 1 : 0;
}

int predict(int argc, char** argv) {
  app::Cli cli("predict", "Segment the lesion in a breast ultrasound image, then classify it.");
  cli.option("image", "", "an image (PNG, JPEG, BMP), or a folder of them", true)
      .option("seg_model", "", "segmentation checkpoint (seg_train --save-path)", true)
      .option("cls_model", "", "classification checkpoint (cls_train --save-path)", true)
      .option("save_mask", "", "mask PNG at the image's size; for a folder --image, a folder for the masks")
      .flag("overlay", "also save X_overlay.png beside the mask: the lesion outline on the image")
      .option("csv", "predictions.csv", "for a folder --image: the CSV with one row per image");
  app::add_runtime_options(cli);
  if (!cli.parse(argc, argv)) return 0;
  Device device = app::apply_runtime_options(cli);
  fs::path image = cli.str("image");
  std::string save_mask = cli.str("save_mask");
  SONO_CHECK(fs::exists(image), image.string(), ": no such file or folder");
  bool folder = fs::is_directory(image);
  SONO_CHECK(!cli.is_set("overlay") || !save_mask.empty(), "--overlay: needs --save_mask (the overlay goes beside the mask)");
  if (folder) {
    app::check_writable(cli.str("csv"));
    if (!save_mask.empty()) app::check_writable_folder("save_mask", save_mask);
  } else if (!save_mask.empty()) {
    app::check_writable(save_mask);
    if (cli.is_set("overlay")) app::check_writable(overlay_path(save_mask));
  }
  Predictor p{app::load_checkpoint(cli.str("seg_model"), "segmentation"),
              app::load_checkpoint(cli.str("cls_model"), "classification"), device, cli.is_set("overlay")};
  p.seg.model->to(device);
  p.cls.model->to(device);
  return folder ? predict_folder(p, image, save_mask, cli.str("csv")) : predict_one(p, image, save_mask);
}

}  // namespace

int main(int argc, char** argv) {
  return sono::app::run_tool("predict", [&] { return predict(argc, argv); });
}
