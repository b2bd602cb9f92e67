// predict: segments the lesion, then classifies image + predicted mask.
//   predict --image scan.png --seg_model S --cls_model C --save_mask scan_mask.png
// prints "Predicted class: benign (0.92 confidence)" and the class probabilities; the confidence
// is calibrated by the temperature in the classifier's card, and " [low confidence]" follows
// it when under --min_confidence. With a folder for --image it is a batch job: decode threads
// read and resize the images ahead of the models, which take --batch_size images per forward
// pass; a CSV row is written per image as it is done (--skip-existing resumes a stopped run),
// masks go into the --save_mask folder, probability maps into the --save_prob folder, and
// --report writes an HTML page of the run.
// DICOM scans (.dcm) are read through DCMTK where the build has it; --frame picks a frame, and
// --frame all makes every frame of a multi-frame file a scan of a batch run.
// --save_prob writes the lesion probability map, --explain the classifier's Grad-CAM.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <future>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "tools/app/csv_table.h"
#include "tools/app/explain.h"
#include "tools/app/html_report.h"
#include "tools/app/inference.h"
#include "tools/app/runtime.h"
#include "tensor/atomic_file.h"
#include "tools/data/dataset.h"
#include "tools/data/dicom.h"
#include "tools/data/model_input.h"
#include "tools/data/parallel.h"
#include "tools/data/progress.h"

namespace {

using namespace sono;
namespace fs = std::filesystem;

struct Predictor {
  app::LoadedModel seg, cls;
  Device device;
  bool overlay;
  double min_confidence = 0.6;
  bool flip = false;
  std::optional<app::LoadedModel> refine;  // --refine_model
};

// One scan of a run: an image file, or a frame of a DICOM file.
struct Source {
  fs::path file;
  std::optional<int> frame;  // DICOM files: the frame read

  std::string name() const { return file.filename().string() + (frame ? " frame " + std::to_string(*frame) : ""); }
  std::string frame_field() const { return frame ? std::to_string(*frame) : ""; }  // the CSV's
  std::string key() const;
};

// What identifies a scan in a CSV row: its image and frame fields.
std::string scan_key(const std::string& image, const std::string& frame) { return image + "\n" + frame; }
std::string Source::key() const { return scan_key(file.filename().string(), frame_field()); }

// A scan decoded and resized for both models: a folder run's decode threads make these ahead of
// the models.
struct DecodedScan {
  data::Image image;
  data::Image seg_input, cls_input;  // the whole image at each model's input size
  std::optional<data::PixelSpacing> spacing;  // DICOM files that give it
};

DecodedScan decode_scan(const Predictor& p, data::DicomFrameReader& dicom_files, const Source& source) {
  DecodedScan s;
  if (source.frame) {
    data::DicomFrame dicom = dicom_files.frame(source.file, *source.frame);
    s.image = std::move(dicom.image);
    s.spacing = dicom.spacing;
  } else {
    s.image = data::load_image(source.file);
  }
  const int seg_size = static_cast<int>(p.seg.card.img_size), cls_size = static_cast<int>(p.cls.card.img_size);
  s.seg_input = data::resize_bilinear(s.image, seg_size, seg_size);
  s.cls_input = cls_size == seg_size ? s.seg_input : data::resize_bilinear(s.image, cls_size, cls_size);
  return s;
}

struct Prediction {
  std::vector<double> probabilities;
  size_t predicted = 0;
  data::Image lesion_logits;  // what the mask thresholds (app::outline_map, then the refiner's), for --save_prob
  data::Mask mask;
  data::Mask classifier_mask;  // what the classifier read beside the scan (app::classifier_mask)
  std::optional<double> malignancy;  // a --malignancy-map segmenter's app::lesion_malignancy
};

// A folder run's per-scan work (decoding, resizing, PNG encoding): on `workers` threads, or on
// the CPU on the kernels' own OpenMP threads (see data::parallel_for_openmp).
void for_each_scan(const Predictor& p, size_t n, int workers, const std::function<void(size_t)>& fn) {
  if (p.device == Device::cpu) data::parallel_for_openmp(n, fn);
  else data::parallel_for(n, workers, fn);
}

// --refine_model: each outline redrawn by the refiner in the window around its lesion. The
// classifier reads the first segmenter's map, as it was trained to.
void refine_outlines(Predictor& p, const std::vector<const DecodedScan*>& scans, std::vector<Prediction>& r) {
  std::vector<const data::Image*> images;
  std::vector<data::Image> maps;
  for (size_t i = 0; i < r.size(); ++i) images.push_back(&scans[i]->image), maps.push_back(std::move(r[i].lesion_logits));
  maps = app::refine_lesions(*p.refine, images, std::move(maps), p.device, p.flip);
  for (size_t i = 0; i < r.size(); ++i) r[i].lesion_logits = std::move(maps[i]);
}

// Both models on a batch, each in one forward pass, then each outline as the class asks
// (app::outline_map) and refined; the per-image work around them (resizing the logits back, the
// classifier's input) by for_each_scan.
std::vector<Prediction> predict_batch(Predictor& p, const std::vector<const DecodedScan*>& scans, int workers) {
  const int64_t n = static_cast<int64_t>(scans.size()), seg_size = p.seg.card.img_size, cls_size = p.cls.card.img_size;
  Tensor seg_x = Tensor::empty({n, seg_size, seg_size, 3});
  for (int64_t i = 0; i < n; ++i)
    data::write_input(scans[i]->seg_input, data::Mask(), data::InputKind::rgb, p.seg.card.normalisation,
                      seg_x.data<float>() + i * seg_size * seg_size * 3);
  const app::BatchSegmentation segmentation = app::segment_batch(p.seg, seg_x, p.device, p.flip);
  const std::vector<data::Image> maps = data::logit_maps(segmentation.lesion_logits),
                                  uncalibrated = data::logit_maps(segmentation.uncalibrated_lesion_logits);
  std::vector<Prediction> r(scans.size());
  std::vector<app::ScanSegmentation> at_scan_size(scans.size());
  Tensor cls_x = Tensor::empty({n, cls_size, cls_size, 4});
  for_each_scan(p, scans.size(), workers, [&](size_t i) {
    const data::Image& image = scans[i]->image;
    at_scan_size[i] = app::scan_segmentation(maps[i], uncalibrated[i], image.height, image.width);
    r[i].classifier_mask = app::classifier_mask(p.cls.card.input(), at_scan_size[i]);
    app::write_classifier_input(p.cls, image, r[i].classifier_mask, cls_x.data<float>() + i * cls_size * cls_size * 4,
                                &scans[i]->cls_input);
  });
  std::vector<std::vector<double>> probabilities = app::classify(p.cls, cls_x, p.device, p.flip, segmentation.malignancy);
  for (size_t i = 0; i < r.size(); ++i) {
    r[i].probabilities = std::move(probabilities[i]);
    if (!segmentation.malignancy.empty()) r[i].malignancy = segmentation.malignancy[i];
    r[i].predicted = std::max_element(r[i].probabilities.begin(), r[i].probabilities.end()) - r[i].probabilities.begin();
  }
  for_each_scan(p, scans.size(), workers, [&](size_t i) {
    r[i].lesion_logits = app::outline_map(at_scan_size[i], p.cls.card.classes, r[i].predicted);
  });
  if (p.refine) refine_outlines(p, scans, r);
  for_each_scan(p, scans.size(), workers, [&](size_t i) { r[i].mask = data::mask_from_logit_map(r[i].lesion_logits); });
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

// The Grad-CAM overlay of the predicted class, on the caller's thread: it runs the classifier.
data::Image explain_picture(Predictor& p, const data::Image& image, const Prediction& r) {
  return data::heatmap_overlay(image, app::explain(p.cls, image, r.classifier_mask, r.predicted, p.device, p.flip));
}

// The outputs asked for (`heat`: the Grad-CAM overlay, for --explain); returns a line per file
// written (none: ""), for the report. Safe on several threads at once.
std::string save_outputs(const Predictor& p, const data::Image& image, const Prediction& r, const OutputPaths& out,
                         const data::Image& heat) {
  std::string report = out.mask.empty() ? "" : save_mask(p, image, r, out.mask) + "\n";
  if (!out.prob.empty()) {
    data::save_probability_png(out.prob, data::probability_map(r.lesion_logits));
    report += "Lesion probability map saved to " + out.prob.string() + " (16-bit grey, 65535 = 1)\n";
  }
  if (!out.explain.empty()) {
    data::save_image_png(out.explain, heat);
    report += "Grad-CAM of " + p.cls.card.classes.at(r.predicted) + " saved to " + out.explain.string() + "\n";
  }
  return report;
}

double area_mm2(size_t lesion_pixels, const data::PixelSpacing& spacing) {
  return lesion_pixels * spacing.row_mm * spacing.column_mm;
}

std::string lesion_area_line(const data::PixelSpacing& spacing, const data::Mask& mask) {
  char line[160];
  std::snprintf(line, sizeof line, "Lesion area: %.1f mm^2 (pixels %.3g x %.3g mm)\n", area_mm2(mask.lesion_pixels(), spacing),
                spacing.row_mm, spacing.column_mm);
  return line;
}

int predict_one(Predictor& p, const Source& source, const OutputPaths& out) {
  data::DicomFrameReader dicom_files(1);
  const DecodedScan scan = decode_scan(p, dicom_files, source);
  const Prediction r = std::move(predict_batch(p, {&scan}, 1).front());
  std::cout << class_line(p, r) << "\n" << probabilities_line(p, r) << "\n";
  if (r.malignancy)
    std::cout << "Malignancy channel: " << std::fixed << std::setprecision(2) << *r.malignancy
              << (r.mask.lesion_pixels() ? " over the marked lesion" : " over the most lesion-like pixels (no lesion marked)")
              << (p.cls.card.stacking ? ", stacked into the probabilities" : "") << "\n";
  if (scan.spacing) std::cout << lesion_area_line(*scan.spacing, r.mask);
  const data::Image heat = out.explain.empty() ? data::Image() : explain_picture(p, scan.image, r);
  std::cout << save_outputs(p, scan.image, r, out, heat);
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
// their whole name, "x.PNG_mask.png", so that no output replaces another. With `frames_named`
// (--frame all), a DICOM file's frame 3 gives "x_frame3<suffix>".
std::vector<fs::path> output_paths(const std::vector<Source>& sources, const fs::path& folder,
                                   const std::string& suffix, bool frames_named) {
  std::map<std::string, std::set<fs::path>> files_of_stem;
  for (auto& s : sources) files_of_stem[s.file.stem().string()].insert(s.file.filename());
  std::vector<fs::path> outputs;
  for (auto& s : sources) {
    const bool shared = files_of_stem[s.file.stem().string()].size() > 1;
    const std::string frame = frames_named && s.frame ? "_frame" + std::to_string(*s.frame) : "";
    outputs.push_back(folder / ((shared ? s.file.filename() : s.file.stem()).string() + frame + suffix));
  }
  return outputs;
}

// The scans of `files`: a DICOM file's frame `frame`, or with none (--frame all) each of its frames.
// A file whose frames cannot be counted is one scan, whose decoding then says why.
std::vector<Source> sources_of(const std::vector<fs::path>& files, std::optional<int> frame) {
  std::vector<Source> sources;
  for (const fs::path& file : files) {
    if (!data::is_dicom_file(file)) {
      sources.push_back({file, std::nullopt});
      continue;
    }
    int frames = 1;
    if (!frame) try {
        frames = data::read_dicom_frames(file);
      } catch (const Error&) {
      }
    for (int f = 0; f < frames; ++f) sources.push_back({file, frame ? *frame : f});
  }
  return sources;
}

// What a run reads and writes, checked (app::check_outputs) before the models are loaded.
struct RunFiles {
  std::vector<Source> scans;
  std::vector<fs::path> masks, probs, explains;  // empty without --save_mask, --save_prob, --explain
  std::string csv;                                       // folder runs only
  std::string report;                                    // --report, folder runs only

  OutputPaths outputs(size_t i) const {
    auto at = [i](const std::vector<fs::path>& paths) { return paths.empty() ? fs::path() : paths[i]; };
    return {at(masks), at(probs), at(explains)};
  }

  // Without the scans in `done` (by Source::key) and their outputs.
  RunFiles without(const std::set<std::string>& done) const {
    RunFiles left{{}, {}, {}, {}, csv, report};
    for (size_t i = 0; i < scans.size(); ++i) {
      if (done.count(scans[i].key())) continue;
      left.scans.push_back(scans[i]);
      OutputPaths out = outputs(i);
      if (!masks.empty()) left.masks.push_back(out.mask);
      if (!probs.empty()) left.probs.push_back(out.prob);
      if (!explains.empty()) left.explains.push_back(out.explain);
    }
    return left;
  }
};

// `overwrite`: outputs that exist may be replaced (the CSV included).
void check_run_files(const app::Cli& cli, const RunFiles& run, bool overlay, bool overwrite) {
  std::vector<app::RunFile> inputs = {{cli.str("seg_model"), "--seg_model"}, {cli.str("cls_model"), "--cls_model"}};
  if (!cli.str("refine_model").empty()) inputs.push_back({cli.str("refine_model"), "--refine_model"});
  for (auto& scan : run.scans)
    inputs.push_back({scan.file, run.csv.empty() ? "--image" : "the image " + scan.file.filename().string()});
  std::vector<app::RunFile> outputs;
  for (size_t i = 0; i < run.masks.size(); ++i) {
    std::string of = run.csv.empty() ? "" : " of " + run.scans[i].name();
    outputs.push_back({run.masks[i], run.csv.empty() ? "--save_mask" : "the mask" + of});
    if (overlay) outputs.push_back({overlay_path(run.masks[i]), "the overlay" + of});
  }
  for (size_t i = 0; i < run.probs.size(); ++i)
    outputs.push_back({run.probs[i], run.csv.empty() ? "--save_prob" : "the probability map of " + run.scans[i].name()});
  for (size_t i = 0; i < run.explains.size(); ++i)
    outputs.push_back({run.explains[i], run.csv.empty() ? "--explain" : "the Grad-CAM of " + run.scans[i].name()});
  if (!run.csv.empty()) outputs.push_back({run.csv, "--csv"});
  if (!run.report.empty()) outputs.push_back({run.report, "--report"});
  app::check_outputs(inputs, outputs, overwrite);
}

std::vector<std::string> csv_columns(const Predictor& p) {
  std::vector<std::string> columns = {"image", "frame", "predicted_class", "confidence"};
  for (auto& c : p.cls.card.classes) columns.push_back("p_" + c);
  for (const char* c : {"lesion_fraction", "lesion_pixels", "lesion_area_mm2"}) columns.push_back(c);
  if (p.seg.card.has_malignancy_channel()) columns.push_back("malignancy");
  for (const char* c : {"mask", "error"}) columns.push_back(c);
  return columns;
}

std::string prediction_row(const Predictor& p, const Source& scan, const Prediction& r,
                           const std::optional<data::PixelSpacing>& spacing, const fs::path& mask) {
  std::vector<std::string> fields = {scan.file.filename().string(), scan.frame_field(),
                                     p.cls.card.classes[r.predicted], app::csv_number(r.probabilities[r.predicted])};
  for (double prob : r.probabilities) fields.push_back(app::csv_number(prob));
  const size_t lesion_pixels = r.mask.lesion_pixels();  // a count over the scan's every pixel
  fields.push_back(app::csv_number(double(lesion_pixels) / r.mask.values.size()));
  fields.push_back(std::to_string(lesion_pixels));
  fields.push_back(spacing ? app::csv_number(area_mm2(lesion_pixels, *spacing)) : "");
  if (p.seg.card.has_malignancy_channel()) fields.push_back(app::csv_number(r.malignancy.value()));
  fields.push_back(mask.string());
  fields.push_back("");
  return app::csv_row(fields);
}

std::string error_row(const Predictor& p, const Source& scan, const std::string& error) {
  std::vector<std::string> fields(csv_columns(p).size());
  fields[0] = scan.file.filename().string();
  fields[1] = scan.frame_field();
  fields.back() = error;
  return app::csv_row(fields);
}

// What --skip-existing keeps of an earlier run's CSV: the rows of scans predicted whose
// outputs are on disk (and rows of scans no longer in the folder); rows with an error, or
// whose outputs are missing, are dropped and their scans run again.
struct EarlierRun {
  std::string rows;            // the rows kept, as CSV text
  std::set<std::string> done;  // their scans' Source::key
};

EarlierRun read_earlier_run(const Predictor& p, const RunFiles& run) {
  std::ifstream in(run.csv, std::ios::binary);
  SONO_CHECK(in, run.csv, ": cannot be read (--skip-existing)");
  const std::string text{std::istreambuf_iterator<char>(in), {}};
  const std::vector<std::vector<std::string>> records = app::csv_records(text);
  const std::vector<std::string> columns = csv_columns(p);
  auto line = [](const std::vector<std::string>& fields) {
    const std::string row = app::csv_row(fields);
    return row.substr(0, std::min<size_t>(row.size() - 1, 200));
  };
  SONO_CHECK(!records.empty() && records.front() == columns, run.csv, ": --skip-existing: not this run's CSV (",
             records.empty() ? std::string("no header") : "columns " + line(records.front()), "); this run writes ",
             line(columns), ": give another --csv, or --overwrite without --skip-existing");
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < run.scans.size(); ++i) index[run.scans[i].key()] = i;
  auto outputs_exist = [&](size_t i) {
    const OutputPaths out = run.outputs(i);
    for (const fs::path& file : {out.mask, p.overlay ? overlay_path(out.mask) : fs::path(), out.prob, out.explain})
      if (!file.empty() && !fs::exists(file)) return false;
    return true;
  };
  EarlierRun earlier;
  for (size_t r = 1; r < records.size(); ++r) {
    const std::vector<std::string>& row = records[r];
    if (row.size() != columns.size() || !row.back().empty()) continue;
    const std::string key = scan_key(row[0], row[1]);
    if (earlier.done.count(key)) continue;
    auto it = index.find(key);
    if (it != index.end() && !outputs_exist(it->second)) continue;
    earlier.rows += app::csv_row(row);
    earlier.done.insert(key);
  }
  return earlier;
}

// A folder run's CSV, a row written and flushed per image, so that a killed run leaves the
// rows of what it did. Rows of an earlier run (--skip-existing) come first; without those the
// file is first written at the first prediction: a run where every image fails leaves an
// existing CSV as it was.
class PredictionCsv {
 public:
  PredictionCsv(fs::path path, const std::string& header, const std::optional<EarlierRun>& earlier)
      : path_(std::move(path)), pending_(header) {
    if (earlier) open(earlier->rows);
  }

  void add(const std::string& row, bool predicted) {
    if (file_.is_open()) {
      file_ << row << std::flush;
      SONO_CHECK(file_, path_.string(), ": cannot be written");
    } else {
      pending_ += row;
      if (predicted) open("");
    }
  }

  bool written() const { return file_.is_open(); }

 private:
  void open(const std::string& rows) {
    write_file_atomic(path_, pending_ + rows);
    file_.open(path_, std::ios::binary | std::ios::app);
    SONO_CHECK(file_, path_.string(), ": cannot be opened to add rows");
  }

  fs::path path_;
  std::string pending_;
  std::ofstream file_;
};

struct FolderOptions {
  size_t batch_size = 8;
  int workers = 2;  // decode threads
  int streams = 1;  // batches side by side (--streams)
  std::optional<EarlierRun> earlier;
  size_t skipped = 0;  // images of the folder done by an earlier run
};

// A scan as a decode thread left it: decoded, or why not.
struct Decoded {
  DecodedScan scan;
  std::string error;
};

std::vector<Decoded> decode_batch(const Predictor& p, data::DicomFrameReader& dicom_files,
                                  const std::vector<Source>& sources, int workers) {
  std::vector<Decoded> scans(sources.size());
  for_each_scan(p, sources.size(), workers, [&](size_t i) {
    try {
      scans[i].scan = decode_scan(p, dicom_files, sources[i]);
    } catch (const Error& e) {
      scans[i].error = e.what();
    }
  });
  return scans;
}

app::ReportEntry report_entry(const Predictor& p, const Source& scan, const data::Image& image,
                              const Prediction& r, const data::Image& heat) {
  return {scan.name(),
          r.predicted,
          r.probabilities,
          r.probabilities[r.predicted] < p.min_confidence,
          app::report_png(data::draw_outline(image, r.mask, {255, 48, 48})),
          heat.pixels.empty() ? "" : app::report_png(heat)};
}

// What a batch gave: per image, its prediction or why it has none, its pixel spacing where the
// file gives one, and its report entry.
struct BatchResult {
  std::vector<Prediction> predictions;
  std::vector<std::string> errors;
  std::vector<std::optional<data::PixelSpacing>> spacings;
  std::vector<app::ReportEntry> entries;
};

// Runs the models on a batch's decoded scans and writes their outputs (PNG encoding on the
// decode threads; Grad-CAM, which runs the classifier, here).
BatchResult run_batch(Predictor& p, const RunFiles& run, size_t first, std::vector<Decoded>& scans, bool report,
                      int workers) {
  BatchResult b{std::vector<Prediction>(scans.size()), std::vector<std::string>(scans.size()),
                std::vector<std::optional<data::PixelSpacing>>(scans.size()),
                std::vector<app::ReportEntry>(scans.size())};
  std::vector<const DecodedScan*> decoded;
  std::vector<size_t> at;
  for (size_t i = 0; i < scans.size(); ++i) {
    b.errors[i] = scans[i].error;
    b.spacings[i] = scans[i].scan.spacing;
    if (scans[i].error.empty()) decoded.push_back(&scans[i].scan), at.push_back(i);
  }
  if (decoded.empty()) return b;
  try {
    std::vector<Prediction> predictions = predict_batch(p, decoded, workers);
    for (size_t j = 0; j < at.size(); ++j) b.predictions[at[j]] = std::move(predictions[j]);
  } catch (const Error& e) {
    for (size_t i : at) b.errors[i] = e.what();
    return b;
  }
  std::vector<data::Image> heats(at.size());
  if (!run.explains.empty())
    for (size_t j = 0; j < at.size(); ++j) heats[j] = explain_picture(p, decoded[j]->image, b.predictions[at[j]]);
  for_each_scan(p, at.size(), workers, [&](size_t j) {
    const size_t i = at[j];
    try {
      save_outputs(p, decoded[j]->image, b.predictions[i], run.outputs(first + i), heats[j]);
      if (report) b.entries[i] = report_entry(p, run.scans[first + i], decoded[j]->image, b.predictions[i], heats[j]);
    } catch (const Error& e) {
      b.errors[i] = e.what();
    }
  });
  return b;
}

// A folder run's results as its batches come, in the folder's order: a CSV row and a line per
// image, the progress bar, the report. A file that failed is named on stderr and in its row.
class FolderResults {
 public:
  FolderResults(const Predictor& p, const RunFiles& run, const FolderOptions& o)
      : p_(p),
        run_(run),
        options_(o),
        csv_(run.csv, app::csv_row(csv_columns(p)), o.earlier),
        interactive_(data::stderr_is_terminal()),
        progress_("predict", run.scans.size(), std::cerr, interactive_) {}

  void add(size_t first, BatchResult& b) {
    for (size_t i = 0; i < b.errors.size(); ++i) {
      const Source& scan = run_.scans[first + i];
      if (interactive_) std::cerr << "\r\x1b[K";  // the bar, redrawn below the line
      if (b.errors[i].empty()) {
        csv_.add(prediction_row(p_, scan, b.predictions[i], b.spacings[i], run_.outputs(first + i).mask), true);
        std::cout << scan.name() << ": " << class_line(p_, b.predictions[i]) << "\n" << std::flush;
        if (!run_.report.empty()) report_.push_back(std::move(b.entries[i]));
      } else {
        ++failures_;
        csv_.add(error_row(p_, scan, b.errors[i]), false);
        std::cerr << "predict: error: " << b.errors[i] << "\n";
      }
    }
    progress_.step(b.errors.size(), NAN);
  }

  // The summary line and the report; the run's exit status (1 where an image failed).
  int finish() {
    progress_.finish();
    const size_t n = run_.scans.size();
    std::cout << n - failures_ << " of " << n << " images predicted";
    if (options_.skipped) std::cout << " (" << options_.skipped << " skipped, in the CSV already)";
    if (!csv_.written()) {
      std::cout << "; CSV " << run_.csv << " not written\n";
      return 1;
    }
    std::cout << "; CSV " << run_.csv << "\n";
    if (!run_.report.empty() && !report_.empty()) {
      std::string note = std::to_string(report_.size()) + " scans predicted in this run";
      if (options_.skipped)
        note += "; " + std::to_string(options_.skipped) + " done by an earlier run (--skip-existing) are in the CSV only";
      write_file_atomic(run_.report, app::html_report(std::move(report_), p_.cls.card.classes, note));
      std::cout << "Report " << run_.report << "\n";
    }
    return failures_ ? 1 : 0;
  }

 private:
  const Predictor& p_;
  const RunFiles& run_;
  const FolderOptions& options_;
  PredictionCsv csv_;
  const bool interactive_;
  data::Progress progress_;
  std::vector<app::ReportEntry> report_;
  size_t failures_ = 0;
};

// The scans of the batch from `first`.
std::vector<Source> batch_sources(const RunFiles& run, size_t first, size_t batch_size) {
  const auto begin = run.scans.begin() + static_cast<std::ptrdiff_t>(first);
  return std::vector<Source>(begin, begin + static_cast<std::ptrdiff_t>(std::min(batch_size, run.scans.size() - first)));
}

// Batch after batch on one copy of the models. With the models on a GPU, the decode threads read
// batch k + 1 while the models run batch k. On the CPU the kernels' OpenMP threads decode it when
// it is due instead: threads beside them would oversubscribe the cores, and OpenMP's spinning at
// its barriers then slows the kernels several times over.
void run_batches_in_turn(Predictor& p, const RunFiles& run, const FolderOptions& o, FolderResults& results) {
  const size_t n = run.scans.size();
  auto batch_files = [&](size_t first) { return batch_sources(run, first, o.batch_size); };
  const std::launch decode = p.device == Device::cpu ? std::launch::deferred : std::launch::async;
  // --frame all reads a file's frames in turn; a file is decoded once while they are.
  data::DicomFrameReader dicom_files(2);
  std::future<std::vector<Decoded>> next =
      std::async(decode, decode_batch, std::cref(p), std::ref(dicom_files), batch_files(0), o.workers);
  for (size_t first = 0; first < n; first += o.batch_size) {
    std::vector<Decoded> scans = next.get();
    if (first + o.batch_size < n)
      next = std::async(decode, decode_batch, std::cref(p), std::ref(dicom_files), batch_files(first + o.batch_size),
                        o.workers);
    BatchResult b = run_batch(p, run, first, scans, !run.report.empty(), o.workers);
    results.add(first, b);
  }
}

// --streams on the CPU: batches side by side, each stream on its own thread with its share of
// the kernel threads, decoding its batches itself. The streams share the models: a model loaded
// for inference keeps no state between calls, and the kernels' weight caches lock. Small layers
// leave a team of threads waiting at its barriers; streams of fewer threads wait less.
void run_batches_in_streams(Predictor& p, const RunFiles& run, const FolderOptions& o, FolderResults& results) {
  const size_t batches = (run.scans.size() + o.batch_size - 1) / o.batch_size;
  const int threads = app::kernel_threads();
  data::DicomFrameReader dicom_files(2);
  data::run_in_streams(
      batches, o.streams, [&](int s) { app::set_threads(threads / o.streams + (s < threads % o.streams)); },
      [&](int, size_t k) {
        const size_t first = k * o.batch_size;
        std::vector<Decoded> scans = decode_batch(p, dicom_files, batch_sources(run, first, o.batch_size), o.workers);
        return run_batch(p, run, first, scans, !run.report.empty(), o.workers);
      },
      [&](size_t k, BatchResult& b) { results.add(k * o.batch_size, b); });
}

// The folder's images in batches; one CSV row per image, in the folder's order; a file that
// fails is named, the run goes on and exits 1.
int predict_folder(Predictor& p, const RunFiles& run, const FolderOptions& o) {
  if (!run.masks.empty()) fs::create_directories(run.masks.front().parent_path());
  if (!run.probs.empty()) fs::create_directories(run.probs.front().parent_path());
  if (!run.explains.empty()) fs::create_directories(run.explains.front().parent_path());
  FolderResults results(p, run, o);
  if (o.streams == 1) run_batches_in_turn(p, run, o, results);
  else run_batches_in_streams(p, run, o, results);
  return results.finish();
}

// --frame: a frame of DICOM files, or none for "all" (each frame a scan).
std::optional<int> frame_option(const app::Cli& cli, const fs::path& image) {
  const std::string text = cli.str("frame");
  if (text == "all") return std::nullopt;
  const int64_t frame = cli.integer("frame");
  SONO_CHECK(frame >= 0 && frame <= INT32_MAX, "--frame ", frame, ": must be 0 or more, or all");
  SONO_CHECK(frame == 0 || fs::is_directory(image) || data::is_dicom_file(image), "--frame ", frame, ": ",
             image.string(), " is not a DICOM file (only those have frames)");
  return static_cast<int>(frame);
}

// A folder's images, or a file's frames (--frame all): outputs into folders, a row each in the CSV.
RunFiles batch_run_files(const app::Cli& cli, const fs::path& image, std::optional<int> frame) {
  RunFiles run;
  run.scans = sources_of(fs::is_directory(image) ? images_in(image) : std::vector<fs::path>{image}, frame);
  run.csv = cli.str("csv");
  app::check_writable(run.csv);
  run.report = cli.str("report");
  if (!run.report.empty()) app::check_writable(run.report);
  const std::string save_mask = cli.str("save_mask");
  // The folder scan skips X_mask.png as ground truth; predicted masks of the same names
  // beside the images would replace or mix with it.
  SONO_CHECK(save_mask.empty() || !fs::is_directory(image) || !fs::exists(save_mask) || !fs::equivalent(save_mask, image),
             save_mask, ": --save_mask is the --image folder, where X_mask.png are ground-truth masks; give another folder");
  auto outputs = [&](const char* option, const char* suffix) {
    const std::string folder = cli.str(option);
    if (folder.empty()) return std::vector<fs::path>();
    app::check_writable_folder(option, folder);
    return output_paths(run.scans, folder, suffix, !frame);
  };
  run.masks = outputs("save_mask", "_mask.png");
  run.probs = outputs("save_prob", "_prob.png");
  run.explains = outputs("explain", "_explain.png");
  return run;
}

// One file: each output where its option says.
RunFiles one_scan_files(const app::Cli& cli, const fs::path& image, std::optional<int> frame) {
  RunFiles run;
  run.scans = sources_of({image}, frame);
  auto output = [&](const char* option) {
    const std::string file = cli.str(option);
    if (file.empty()) return std::vector<fs::path>();
    app::check_writable(file);
    return std::vector<fs::path>{file};
  };
  run.masks = output("save_mask");
  if (!run.masks.empty() && cli.is_set("overlay")) app::check_writable(overlay_path(run.masks.front()));
  run.probs = output("save_prob");
  run.explains = output("explain");
  return run;
}

// --streams N, or none for auto (2 on the CPU, where there are 2 threads and 2 batches or more).
std::optional<int> streams_option(const app::Cli& cli, Device device) {
  if (cli.str("streams") == "auto") return std::nullopt;
  const int64_t streams = cli.integer("streams"), threads = app::kernel_threads();
  SONO_CHECK(streams >= 1 && streams <= threads, "--streams ", streams, ": must be from 1 to the kernel threads (",
             threads, ", --threads)");
  SONO_CHECK(streams == 1 || device == Device::cpu, "--streams ", streams,
             ": for the CPU only; on a GPU the batches run one at a time");
  return static_cast<int>(streams);
}

int predict(int argc, char** argv) {
  app::Cli cli("predict", "Segment the lesion in a breast ultrasound image, then classify it.");
  cli.option("image", "", "an image (PNG, JPEG, BMP, DICOM), or a folder of them", true)
      .option("seg_model", "", "segmentation checkpoint (seg_train --save-path)", true)
      .option("cls_model", "", "classification checkpoint (cls_train --save-path)", true)
      .option("refine_model", "", "a refining segmenter (seg_train --lesion-view): redraws the outline in the window "
              "around the lesion --seg_model found, from more of the scan's pixels; the mask, probability map and "
              "overlay are its, the classifier reads --seg_model's")
      .option("save_mask", "", "mask PNG at the image's size; for a folder --image, a folder for the masks")
      .option("save_prob", "", "the lesion probability map as a 16-bit grey PNG (0..65535 = 0..1) at the image's "
              "size; for a folder --image, a folder for them (X_prob.png)")
      .option("explain", "", "Grad-CAM of the predicted class over the scan, a heat-map overlay PNG; for a folder "
              "--image, a folder for them (X_explain.png)")
      .flag("overlay", "also save X_overlay.png beside the mask: the lesion outline on the image")
      .option("csv", "predictions.csv", "for a folder --image: the CSV, a row per image written as each is done "
              "(image, class, confidence, class probabilities, lesion fraction, lesion pixels, lesion area in mm^2 "
              "where a DICOM file gives the pixel spacing, mask, error); an image that cannot be read or "
              "predicted gets its error in its row, the run goes on and exits 1")
      .option("batch_size", "8", "for a folder --image: images per forward pass (on a CPU with AVX2 or AVX-512, every result is bit for bit the one-image result)")
      .option("workers", "2", "for a folder --image on a GPU: threads decoding and resizing images ahead of the "
              "models (on the CPU the kernels' --threads do it, between the batches)")
      .option("streams", "auto", "for a folder --image on the CPU: batches run side by side, each stream on its "
              "share of --threads (more images/s for more memory; auto: 2 where there are 2 threads or more)")
      .flag("skip_existing", "for a folder --image: keep the rows of an existing --csv of the same columns whose "
            "outputs exist, and predict the other images (a run that was stopped resumes; their outputs may be "
            "replaced, the interrupted run may have left them)")
      .option("report", "", "for a folder --image: an HTML page of the run's scans (outline overlay, Grad-CAM "
              "with --explain, class and confidence), by malignant probability, images embedded")
      .flag("overwrite", "replace masks, overlays, a CSV or a report that exist (never the run's inputs)")
      .option("min_confidence", "0.6", "flag a prediction whose (calibrated) probability is under this as low confidence")
      .flag("flip_tta", "average each model's outputs on the image and its mirror image (--explain explains the average)")
      .option("frame", "0", "for DICOM images: the frame (from 0) of a multi-frame file, or all: each frame a "
              "scan of a batch run, as for a folder (outputs X_frameN_mask.png ..., a CSV row per frame)");
  app::add_runtime_options(cli);
  if (!cli.parse(argc, argv)) return 0;
  Device device = app::apply_runtime_options(cli);
  const fs::path image = cli.str("image");
  SONO_CHECK(fs::exists(image), image.string(), ": no such file or folder");
  const std::optional<int> frame = frame_option(cli, image);
  // A folder, or every frame of a file, is a batch run: CSV, output folders, batches.
  const bool batch = fs::is_directory(image) || !frame;
  SONO_CHECK(!cli.is_set("overlay") || !cli.str("save_mask").empty(), "--overlay: needs --save_mask (the overlay goes beside the mask)");
  const int64_t batch_size = cli.integer("batch_size"), workers = cli.integer("workers");
  SONO_CHECK(batch_size >= 1, "--batch_size ", batch_size, ": must be 1 or more");
  app::check_thread_count("workers", workers, 1);
  for (const char* name : {"skip_existing", "report"})
    SONO_CHECK(batch || !cli.is_set(name), "--", name, ": only for a folder --image or --frame all, ", image.string(),
               " is a file");
  RunFiles run = batch ? batch_run_files(cli, image, frame) : one_scan_files(cli, image, frame);
  double min_confidence = cli.real("min_confidence");
  SONO_CHECK(min_confidence >= 0 && min_confidence <= 1, "--min_confidence ", min_confidence,
             ": must be between 0 and 1");
  const bool resume = cli.is_set("skip_existing") && fs::exists(run.csv);
  // A resumed run replaces what the interrupted one may have left of the scans it runs again.
  check_run_files(cli, run, cli.is_set("overlay"), cli.is_set("overwrite") || resume);
  const std::optional<int> streams = streams_option(cli, device);
  Predictor p{app::load_for_inference(cli.str("seg_model"), models::Task::segmentation, device),
              app::load_for_inference(cli.str("cls_model"), models::Task::classification, device), device,
              cli.is_set("overlay"), min_confidence, cli.is_set("flip_tta"), std::nullopt};
  app::check_stacking_inputs(&p.seg, cli.str("seg_model"), p.cls, cli.str("cls_model"));
  if (!cli.str("refine_model").empty()) p.refine = app::load_refiner(cli.str("refine_model"), device);
  if (!cli.str("explain").empty()) app::explainable(p.cls);
  if (!batch) return predict_one(p, run.scans.front(), run.outputs(0));
  FolderOptions options{static_cast<size_t>(batch_size), static_cast<int>(workers), 1, std::nullopt, 0};
  if (resume) {
    options.earlier = read_earlier_run(p, run);
    const size_t all = run.scans.size();
    run = run.without(options.earlier->done);
    options.skipped = all - run.scans.size();
    if (run.scans.empty()) {
      std::cout << "All " << all << " images are in " << run.csv << " already (--skip-existing)\n";
      return 0;
    }
  }
  const size_t batches = (run.scans.size() + options.batch_size - 1) / options.batch_size;
  options.streams = static_cast<int>(std::min<size_t>({static_cast<size_t>(streams.value_or(device == Device::cpu ? 2 : 1)),
                                                       batches, static_cast<size_t>(app::kernel_threads())}));
  return predict_folder(p, run, options);
}

}  // namespace

int main(int argc, char** argv) {
  return sono::app::run_tool("predict", [&] { return predict(argc, argv); });
}
