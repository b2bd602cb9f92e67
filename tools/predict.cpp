// predict: segments the lesion, then classifies image + predicted mask.
//   predict --image scan.png --seg_model S --cls_model C --save_mask scan_mask.png
// prints "Predicted class: benign (0.92 confidence)" and the class probabilities; the confidence
// is calibrated by the temperature in the classifier's card, and " [low confidence]" follows
// it when under --min_confidence. With a folder for --image it writes one CSV row per image
// (and masks into the --save_mask folder, probability maps into the --save_prob folder).
// DICOM scans (.dcm) are read through DCMTK where the build has it; --frame picks a frame.
// --save_prob writes the lesion probability map, --explain the classifier's Grad-CAM.
#include <algorithm>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "tools/app/explain.h"
#include "tools/app/inference.h"
#include "tools/app/runtime.h"
#include "tensor/atomic_file.h"
#include "tools/data/dataset.h"
#include "tools/data/dicom.h"

namespace {

using namespace sono;
namespace fs = std::filesystem;

struct Predictor {
  app::LoadedModel seg, cls;
  Device device;
  bool overlay;
  double min_confidence = 0.6;
  bool flip = false;
  int frame = 0;  // of DICOM files
};

data::Image load_scan(const Predictor& p, const fs::path& file) {
  return data::is_dicom_file(file) ? data::load_dicom(file, p.frame) : data::load_image(file);
}

struct Prediction {
  std::vector<double> probabilities;
  size_t predicted = 0;
  data::Image lesion_logits;  // what the mask thresholds, for --save_prob
  data::Mask mask;
};

Prediction predict_image(Predictor& p, const data::Image& image) {
  Prediction r;
  r.lesion_logits = app::lesion_logits(p.seg, image, image.height, image.width, p.device, p.flip);
  r.mask = data::mask_from_logit_map(r.lesion_logits);
  r.probabilities = app::classify(p.cls, image, r.mask, p.device, p.flip);
  r.predicted = std::max_element(r.probabilities.begin(), r.probabilities.end()) - r.probabilities.begin();
  return r;
}

std::string class_line(const Predictor& p, const Prediction& r) {
  char line[160];
  std::snprintf(line, sizeof line, "Predicted class: %s (%.2f confidence)%s",
                p.cls.card.classes.at(r.predicted).c_str(), r.probabilities[r.predicted],
                r.probabilities[r.predicted] < p.min_confidence ? " [low confidence]" : "");
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

// Where an image's outputs go; an empty path is not written.
struct OutputPaths {
  fs::path mask, prob, explain;
};

// Mask (and overlay) at `mask_path`; returns what was written, for the report.
std::string save_mask(const Predictor& p, const data::Image& image, const Prediction& r, const fs::path& mask_path) {
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

// The outputs asked for; returns a line per file written (none: ""), for the report.
std::string save_outputs(Predictor& p, const data::Image& image, const Prediction& r, const OutputPaths& out) {
  std::string report = out.mask.empty() ? "" : save_mask(p, image, r, out.mask) + "\n";
  if (!out.prob.empty()) {
    data::save_probability_png(out.prob, data::probability_map(r.lesion_logits));
    report += "Lesion probability map saved to " + out.prob.string() + " (16-bit grey, 65535 = 1)\n";
  }
  if (!out.explain.empty()) {
    data::Image heat = app::explain(p.cls, image, r.mask, r.predicted, p.device);
    data::save_image_png(out.explain, data::heatmap_overlay(image, heat));
    report += "Grad-CAM of " + p.cls.card.classes.at(r.predicted) + " saved to " + out.explain.string() + "\n";
  }
  return report;
}

// The lesion's area where the DICOM file gives the pixel spacing ("" otherwise).
std::string lesion_area_line(const fs::path& dicom, const data::Mask& mask) {
  std::optional<data::PixelSpacing> spacing = data::read_pixel_spacing(dicom);
  if (!spacing) return "";
  char line[160];
  std::snprintf(line, sizeof line, "Lesion area: %.1f mm^2 (pixels %.3g x %.3g mm)\n",
                mask.lesion_pixels() * spacing->row_mm * spacing->column_mm, spacing->row_mm, spacing->column_mm);
  return line;
}

int predict_one(Predictor& p, const fs::path& image_path, const OutputPaths& out) {
  data::Image image = load_scan(p, image_path);
  Prediction r = predict_image(p, image);
  std::cout << class_line(p, r) << "\n" << probabilities_line(p, r) << "\n";
  if (data::is_dicom_file(image_path)) std::cout << lesion_area_line(image_path, r.mask);
  std::cout << save_outputs(p, image, r, out);
  return 0;
}

std::vector<fs::path> images_in(const fs::path& folder) {
  std::vector<fs::path> files;
  for (auto& entry : fs::directory_iterator(folder)) {
    std::string stem = entry.path().stem().string();
    bool is_mask = stem.find("_mask") != std::string::npos || stem.find("_overlay") != std::string::npos ||
                   stem.find("_prob") != std::string::npos || stem.find("_explain") != std::string::npos;
    if (entry.is_regular_file() && data::is_image_file(entry.path()) && !is_mask) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  SONO_CHECK(!files.empty(), folder.string(), ": no images (.png .jpg .jpeg .bmp .dcm) in this folder");
  return files;
}

// "x.png" -> "x<suffix>" ("x_mask.png"); images that share a stem (x.png, x.PNG, x.bmp) keep
// their whole name, "x.PNG_mask.png", so that no output replaces another.
std::vector<fs::path> output_paths(const std::vector<fs::path>& files, const fs::path& folder,
                                   const std::string& suffix) {
  std::map<std::string, int> stems;
  for (auto& file : files) ++stems[file.stem().string()];
  std::vector<fs::path> outputs;
  for (auto& file : files) {
    bool shared = stems[file.stem().string()] > 1;
    outputs.push_back(folder / ((shared ? file.filename() : file.stem()).string() + suffix));
  }
  return outputs;
}

// What a run reads and writes, checked (app::check_outputs) before the models are loaded.
struct RunFiles {
  std::vector<fs::path> images, masks, probs, explains;  // empty without --save_mask, --save_prob, --explain
  std::string csv;                                       // folder runs only

  OutputPaths outputs(size_t i) const {
    auto at = [i](const std::vector<fs::path>& paths) { return paths.empty() ? fs::path() : paths[i]; };
    return {at(masks), at(probs), at(explains)};
  }
};

void check_run_files(const app::Cli& cli, const RunFiles& run, bool overlay) {
  std::vector<app::RunFile> inputs = {{cli.str("seg_model"), "--seg_model"}, {cli.str("cls_model"), "--cls_model"}};
  for (auto& image : run.images)
    inputs.push_back({image, run.csv.empty() ? "--image" : "the image " + image.filename().string()});
  std::vector<app::RunFile> outputs;
  for (size_t i = 0; i < run.masks.size(); ++i) {
    std::string of = run.csv.empty() ? "" : " of " + run.images[i].filename().string();
    outputs.push_back({run.masks[i], run.csv.empty() ? "--save_mask" : "the mask" + of});
    if (overlay) outputs.push_back({overlay_path(run.masks[i]), "the overlay" + of});
  }
  for (size_t i = 0; i < run.probs.size(); ++i)
    outputs.push_back({run.probs[i], run.csv.empty() ? "--save_prob" : "the probability map of " + run.images[i].filename().string()});
  for (size_t i = 0; i < run.explains.size(); ++i)
    outputs.push_back({run.explains[i], run.csv.empty() ? "--explain" : "the Grad-CAM of " + run.images[i].filename().string()});
  if (!run.csv.empty()) outputs.push_back({run.csv, "--csv"});
  app::check_outputs(inputs, outputs, cli.is_set("overwrite"));
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

// One CSV row per image; a file that fails is reported in its row and the run exits 1. No CSV
// is written when no image could be predicted: an error-only table must not replace results.
int predict_folder(Predictor& p, const RunFiles& run) {
  if (!run.masks.empty()) fs::create_directories(run.masks.front().parent_path());
  if (!run.probs.empty()) fs::create_directories(run.probs.front().parent_path());
  if (!run.explains.empty()) fs::create_directories(run.explains.front().parent_path());
  std::ostringstream csv;
  csv << "image,predicted_class,confidence";
  for (auto& c : p.cls.card.classes) csv << ",p_" << c;
  csv << ",lesion_fraction,mask,error\n" << std::setprecision(6);
  size_t failures = 0;
  for (size_t i = 0; i < run.images.size(); ++i) {
    const fs::path& file = run.images[i];
    csv << csv_field(file.filename().string());
    try {
      data::Image image = load_scan(p, file);
      Prediction r = predict_image(p, image);
      csv << "," << p.cls.card.classes[r.predicted] << "," << r.probabilities[r.predicted];
      for (double prob : r.probabilities) csv << "," << prob;
      csv << "," << double(r.mask.lesion_pixels()) / r.mask.values.size();
      OutputPaths out = run.outputs(i);
      save_outputs(p, image, r, out);
      csv << "," << csv_field(out.mask.string()) << ",\n";
      std::cout << file.filename().string() << ": " << class_line(p, r) << "\n";
    } catch (const Error& e) {
      ++failures;
      csv << std::string(p.cls.card.classes.size() + 4, ',') << csv_field(e.what()) << "\n";
      std::cerr << "predict: error: " << e.what() << "\n";
    }
  }
  std::cout << run.images.size() - failures << " of " << run.images.size() << " images predicted; ";
  if (failures == run.images.size()) {
    std::cout << "CSV " << run.csv << " not written\n";
    return 1;
  }
  write_file_atomic(run.csv, csv.str());
  std::cout << "CSV " << run.csv << "\n";
  return failures ? 1 : 0;
}

int predict(int argc, char** argv) {
  app::Cli cli("predict", "Segment the lesion in a breast ultrasound image, then classify it.");
  cli.option("image", "", "an image (PNG, JPEG, BMP, DICOM), or a folder of them", true)
      .option("seg_model", "", "segmentation checkpoint (seg_train --save-path)", true)
      .option("cls_model", "", "classification checkpoint (cls_train --save-path)", true)
      .option("save_mask", "", "mask PNG at the image's size; for a folder --image, a folder for the masks")
      .option("save_prob", "", "the lesion probability map as a 16-bit grey PNG (0..65535 = 0..1) at the image's "
              "size; for a folder --image, a folder for them (X_prob.png)")
      .option("explain", "", "Grad-CAM of the predicted class over the scan, a heat-map overlay PNG; for a folder "
              "--image, a folder for them (X_explain.png)")
      .flag("overlay", "also save X_overlay.png beside the mask: the lesion outline on the image")
      .option("csv", "predictions.csv", "for a folder --image: the CSV with one row per image")
      .flag("overwrite", "replace masks, overlays or a CSV that exist (never the run's inputs)")
      .option("min_confidence", "0.6", "flag a prediction whose (calibrated) probability is under this as low confidence")
      .flag("flip_tta", "average each model's outputs on the image and its mirror image")
      .option("frame", "0", "for DICOM images: the frame (from 0) of a multi-frame file");
  app::add_runtime_options(cli);
  if (!cli.parse(argc, argv)) return 0;
  Device device = app::apply_runtime_options(cli);
  fs::path image = cli.str("image");
  std::string save_mask = cli.str("save_mask"), save_prob = cli.str("save_prob"), explain = cli.str("explain");
  SONO_CHECK(fs::exists(image), image.string(), ": no such file or folder");
  bool folder = fs::is_directory(image);
  SONO_CHECK(!cli.is_set("overlay") || !save_mask.empty(), "--overlay: needs --save_mask (the overlay goes beside the mask)");
  RunFiles run;
  if (folder) {
    run.images = images_in(image);
    run.csv = cli.str("csv");
    app::check_writable(run.csv);
    // The folder scan skips X_mask.png as ground truth; predicted masks of the same names
    // beside the images would replace or mix with it.
    SONO_CHECK(save_mask.empty() || !fs::exists(save_mask) || !fs::equivalent(save_mask, image), save_mask,
               ": --save_mask is the --image folder, where X_mask.png are ground-truth masks; give another folder");
    if (!save_mask.empty()) {
      app::check_writable_folder("save_mask", save_mask);
      run.masks = output_paths(run.images, save_mask, "_mask.png");
    }
    if (!save_prob.empty()) {
      app::check_writable_folder("save_prob", save_prob);
      run.probs = output_paths(run.images, save_prob, "_prob.png");
    }
    if (!explain.empty()) {
      app::check_writable_folder("explain", explain);
      run.explains = output_paths(run.images, explain, "_explain.png");
    }
  } else {
    run.images = {image};
    if (!save_mask.empty()) {
      run.masks = {save_mask};
      app::check_writable(save_mask);
      if (cli.is_set("overlay")) app::check_writable(overlay_path(save_mask));
    }
    if (!save_prob.empty()) {
      run.probs = {save_prob};
      app::check_writable(save_prob);
    }
    if (!explain.empty()) {
      run.explains = {explain};
      app::check_writable(explain);
    }
  }
  check_run_files(cli, run, cli.is_set("overlay"));
  double min_confidence = cli.real("min_confidence");
  SONO_CHECK(min_confidence >= 0 && min_confidence <= 1, "--min_confidence ", min_confidence,
             ": must be between 0 and 1");
  const int64_t frame = cli.integer("frame");
  SONO_CHECK(frame >= 0 && frame <= INT32_MAX, "--frame ", frame, ": must be 0 or more");
  SONO_CHECK(frame == 0 || folder || data::is_dicom_file(image), "--frame ", frame, ": ", image.string(),
             " is not a DICOM file (only those have frames)");
  Predictor p{app::load_checkpoint(cli.str("seg_model"), "segmentation"),
              app::load_checkpoint(cli.str("cls_model"), "classification"), device, cli.is_set("overlay"),
              min_confidence, cli.is_set("flip_tta"), static_cast<int>(frame)};
  if (!explain.empty()) app::explainable(p.cls);
  p.seg.model->to(device);
  p.cls.model->to(device);
  return folder ? predict_folder(p, run) : predict_one(p, image, run.outputs(0));
}

}  // namespace

int main(int argc, char** argv) {
  return sono::app::run_tool("predict", [&] { return predict(argc, argv); });
}
