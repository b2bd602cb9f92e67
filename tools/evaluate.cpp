// evaluate: scores a segmentation and a classification checkpoint on labelled scans, through
// predict's pipeline, so a held-out set is scored as users will run the models (either alone:
// the segmenter's figures, or the classifier's on the ground-truth masks):
//   evaluate --images-dir BUSI_TEST --seg-model S --cls-model C
// Images as the training tools read them (BUSI's folders, CLASS/ subfolders with a masks folder,
// or a flat folder without classes). Each image is segmented and classified alone (predict's
// batches give the same results on the CPU, bit for bit) and scored at its own size: Dice, IoU,
// lesions found and lesion-free scans left empty against its mask; accuracy, macro-F1, recall,
// the confusion matrix, malignant-against-rest AUROC and ECE against its class folder.
// --csv: a row per image; --reliability: the reliability diagram. With --folds K and {fold} in
// the checkpoints' names, a --folds K training run is scored out of fold the same way: each image
// by the pair of the fold that validated it, with figures per fold, their mean and spread.
// --fit-stacking: on such a run with a --malignancy-map segmenter, fits the stacking of the
// classifier's probabilities with the segmenter's malignancy score (data/stacking.h) on the
// out-of-fold rows, scores it fold by fold fitted on the other folds, and writes the one fitted on
// all for cls_train --stacking.
#include <algorithm>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include "tensor/atomic_file.h"
#include "tools/app/cross_validation.h"
#include "tools/app/csv_table.h"
#include "tools/app/inference.h"
#include "tools/app/runtime.h"
#include "tools/data/calibration.h"
#include "tools/data/dataset.h"
#include "tools/data/folds.h"
#include "tools/data/metrics.h"
#include "tools/data/parallel.h"
#include "tools/data/progress.h"
#include "tools/data/stacking.h"

namespace {

using namespace sono;
namespace fs = std::filesystem;

// The classifier's class index of each of the data set's classes (by folder name); a class the
// classifier does not know is refused, since its images could only be scored as errors.
std::vector<size_t> classifier_classes(const data::Dataset& dataset, const app::ModelCard& cls,
                                       const std::string& cls_path) {
  std::vector<size_t> index;
  for (const std::string& name : dataset.classes) {
    auto it = std::find(cls.classes.begin(), cls.classes.end(), name);
    if (it == cls.classes.end()) {
      std::string known;
      for (const std::string& c : cls.classes) known += (known.empty() ? "" : ", ") + c;
      fail("class folder '", name, "' is not one of ", cls_path, "'s classes (", known, ")");
    }
    index.push_back(static_cast<size_t>(it - cls.classes.begin()));
  }
  return index;
}

// The figures of a set of images (a fold's, or all of them).
struct Scores {
  data::SegmentationMetrics segmentation;
  data::ClassificationMetrics classification;
  data::ProbabilityRecord probabilities;

  explicit Scores(size_t classes) : classification(static_cast<int>(classes)) {}
  // Each figure by name, in the order printed: the segmentation's where masks were scored, the
  // classifier's where classes were.
  std::vector<std::pair<std::string, double>> figures(const std::vector<std::string>& classes) const;
};

std::vector<std::pair<std::string, double>> Scores::figures(const std::vector<std::string>& classes) const {
  std::vector<std::pair<std::string, double>> f;
  const data::SegmentationMetrics& m = segmentation;
  if (m.images() > 0) f.insert(f.end(), {{"Dice", m.dice()}, {"IoU", m.iou()}});
  if (m.lesion_images() > 0)
    f.insert(f.end(), {{"lesion Dice", m.lesion_dice()}, {"lesion IoU", m.lesion_iou()},
                       {"lesions found", m.lesions_found()}, {"found lesions' Dice", m.found_lesion_dice()}});
  if (m.images() > m.lesion_images()) f.emplace_back("lesion-free left empty", m.empty_kept_empty());
  if (classification.count() == 0) return f;
  f.insert(f.end(), {{"accuracy", classification.accuracy()}, {"macro-F1", classification.macro_f1()}});
  for (size_t c = 0; c < classes.size(); ++c)
    f.emplace_back("recall " + classes[c], classification.recall(static_cast<int>(c)));
  auto malignant = std::find(classes.begin(), classes.end(), "malignant");
  if (malignant != classes.end())
    f.emplace_back("AUROC malignant", probabilities.auroc(static_cast<int>(malignant - classes.begin())));
  f.emplace_back("ECE", probabilities.ece());
  return f;
}

void add_classification(Scores& s, const std::vector<double>& probabilities, size_t truth) {
  const size_t predicted = std::max_element(probabilities.begin(), probabilities.end()) - probabilities.begin();
  s.classification.add(static_cast<int>(truth), static_cast<int>(predicted));
  s.probabilities.add(probabilities, static_cast<int>(truth));
}

// The checkpoints of one fold (or of the whole run), each absent where its flag was not given.
struct Models {
  std::optional<app::LoadedModel> seg, cls, refine;
};

// An image's out-of-fold classifier probabilities and malignancy score, kept for --fit-stacking.
struct StackingRow {
  std::vector<double> probabilities;
  double malignancy;
  size_t truth;
  int fold;
};

// One image: its mask from the segmenter as predict draws it (outline_map once the classifier has
// named the class, then the refiner), or without one its ground truth for the classifier;
// its class from the classifier; the figures added to `scores` (and its row to `stacking_rows`
// where given), its CSV row returned. `class_name`: its class folder's ("" without classes);
// `truth`: that class's index in the classifier.
std::string score_image(Models& models, Device device, bool flip, const data::Sample& sample, const std::string& class_name,
                        std::optional<size_t> truth, std::optional<int> fold, const std::vector<Scores*>& scores,
                        std::vector<StackingRow>* stacking_rows) {
  const data::Image image = data::load_image(sample.image);
  std::optional<data::Mask> target;
  if (!sample.masks.empty()) target = data::load_mask(sample.masks);
  SONO_CHECK(models.seg || target, sample.image.string(), ": no mask, and without --seg-model the classifier reads "
             "the ground-truth masks");
  app::ScanSegmentation segmentation;
  if (models.seg) segmentation = app::segment_scan(*models.seg, image, image.height, image.width, device, flip);
  const data::Image* outline = &segmentation.lesion_logits;
  std::vector<std::string> row{sample.name};
  if (fold) row.push_back(std::to_string(*fold + 1));
  row.push_back(class_name);
  if (models.cls) {
    const data::InputKind classifier_input = models.cls->card.input();
    const data::Mask channel = models.seg ? app::classifier_mask(classifier_input, segmentation)
                                          : app::classifier_mask(classifier_input, *target);
    const std::vector<double> p = app::classify(*models.cls, image, channel, device, flip, segmentation.malignancy);
    const size_t predicted = std::max_element(p.begin(), p.end()) - p.begin();
    outline = &app::outline_map(segmentation, models.cls->card.classes, predicted);
    row.insert(row.end(), {models.cls->card.classes[predicted], app::csv_number(p[predicted])});
    for (double v : p) row.push_back(app::csv_number(v));
    if (truth)
      for (Scores* s : scores) add_classification(*s, p, *truth);
    if (truth && stacking_rows) stacking_rows->push_back({p, segmentation.malignancy.value(), *truth, fold.value()});
  }
  if (models.seg) {
    const data::Mask mask = data::mask_from_logit_map(
        models.refine ? app::refine_lesions(*models.refine, {&image}, {*outline}, device, flip)[0] : *outline);
    row.push_back(target ? app::csv_number(data::overlap(mask, *target).dice) : "");
    row.push_back(std::to_string(mask.lesion_pixels()));
    if (segmentation.malignancy) row.push_back(app::csv_number(*segmentation.malignancy));
    for (Scores* s : scores)
      if (target) s->segmentation.add(mask, *target);
  }
  return app::csv_row(row);
}

// With --folds K, the fold (0..K-1) whose models did not train on each sample: the folds of
// `seg_train --folds K` / `cls_train --folds K` on the same images and --seed. Otherwise all 0.
std::vector<int> sample_folds(const data::Dataset& dataset, int k, uint64_t seed) {
  if (k == 0) return std::vector<int>(dataset.samples.size(), 0);
  std::vector<uint64_t> hashes(dataset.samples.size());
  data::parallel_for_openmp(hashes.size(),
                            [&](size_t i) { hashes[i] = data::perceptual_hash(data::load_image(dataset.samples[i].image)); });
  return data::make_folds(dataset, hashes, k, seed).fold;
}

void print_figures(const std::string& title, const std::vector<std::pair<std::string, double>>& figures) {
  std::cout << title << ":";
  for (size_t i = 0; i < figures.size(); ++i) std::cout << (i ? ", " : " ") << figures[i].first << " " << figures[i].second;
  std::cout << "\n";
}

// Each figure's mean +- spread (sample standard deviation) over the folds.
void print_fold_summary(const std::vector<Scores>& folds, const std::vector<std::string>& classes) {
  std::vector<std::map<std::string, double>> per_fold;
  for (const Scores& s : folds) {
    const auto figures = s.figures(classes);
    per_fold.emplace_back(figures.begin(), figures.end());
  }
  std::cout << folds.size() << " folds, mean +- spread:";
  const char* separator = " ";
  for (const auto& [name, value] : folds.front().figures(classes)) {
    std::vector<double> values;  // the folds that have the figure (a fold without lesion-free images has no "left empty")
    for (const auto& fold : per_fold)
      if (fold.count(name)) values.push_back(fold.at(name));
    const app::FoldSummary s = app::summarise(values);
    std::cout << separator << name << " " << s.mean << " +- " << s.std;
    separator = ", ";
  }
  std::cout << "\n";
}

std::string csv_header(const Models& models, bool folds) {
  std::vector<std::string> fields{"image"};
  if (folds) fields.push_back("fold");
  fields.push_back("class");
  if (models.cls) {
    fields.insert(fields.end(), {"predicted", "confidence"});
    for (const std::string& c : models.cls->card.classes) fields.push_back("p_" + c);
  }
  if (models.seg) fields.insert(fields.end(), {"dice", "lesion_pixels"});
  if (models.seg && models.seg->card.has_malignancy_channel()) fields.push_back("malignancy");
  return app::csv_row(fields);
}

// One fold's checkpoint paths, "" where the flag was not given.
struct ModelFiles {
  std::string seg, cls, refine;
};

// Each fold's (one "fold" without --folds).
std::vector<ModelFiles> model_files(const ModelFiles& given, int64_t k) {
  auto file = [](const std::string& path, int fold) {
    return path.find("{fold}") != std::string::npos ? app::fold_path(path, fold) : path;
  };
  std::vector<ModelFiles> files;
  for (int fold = 0; fold < std::max<int>(1, static_cast<int>(k)); ++fold)
    files.push_back({file(given.seg, fold), file(given.cls, fold), file(given.refine, fold)});
  return files;
}

Models load_models(const ModelFiles& files, Device device, bool fit_stacking) {
  Models m;
  if (!files.seg.empty()) m.seg = app::load_for_inference(files.seg, models::Task::segmentation, device);
  if (!files.cls.empty()) m.cls = app::load_for_inference(files.cls, models::Task::classification, device);
  if (!files.refine.empty()) m.refine = app::load_refiner(files.refine, device);
  if (m.cls) app::check_stacking_inputs(m.seg ? &*m.seg : nullptr, files.seg, *m.cls, files.cls);
  if (!fit_stacking) return m;
  SONO_CHECK(m.seg->card.has_malignancy_channel(), "--fit-stacking: ", files.seg,
             " has no malignancy channel (seg_train --malignancy-map)");
  SONO_CHECK(!m.cls->card.stacking, "--fit-stacking: ", files.cls, " is stacked already; fit on the classifiers "
             "of cls_train --folds");
  return m;
}

void print_results(const std::vector<Scores>& folds, const Scores& pooled, const std::vector<std::string>& classes) {
  std::cout << std::fixed << std::setprecision(4);
  if (folds.size() > 1) {
    for (size_t f = 0; f < folds.size(); ++f) print_figures("fold " + std::to_string(f + 1), folds[f].figures(classes));
    print_fold_summary(folds, classes);
  }
  print_figures(folds.size() > 1 ? "pooled out of fold" : "figures", pooled.figures(classes));
  if (pooled.classification.count() > 0) std::cout << pooled.classification.confusion_table(classes);
}

// The stacking scored fold by fold, each fold's fitted on the other folds' rows (nested, so no
// image is scored by a stacking fitted on it), then fitted on all rows and written to `path`.
void fit_stacking(const std::vector<StackingRow>& rows, size_t folds, const std::vector<std::string>& classes,
                  const std::string& path) {
  auto fit = [&](const std::string& which, auto&& use) {
    data::Rows probabilities, scores;
    std::vector<int> labels;
    for (const StackingRow& r : rows)
      if (use(r)) probabilities.push_back(r.probabilities), scores.push_back({r.malignancy}),
                  labels.push_back(static_cast<int>(r.truth));
    for (size_t c = 0; c < classes.size(); ++c)
      SONO_CHECK(std::count(labels.begin(), labels.end(), static_cast<int>(c)), "--fit-stacking: ", which, " have no ",
                 classes[c], " image to fit the stacking on");
    return data::fit_stacking(probabilities, scores, labels);
  };
  std::vector<Scores> per_fold(folds, Scores(classes.size()));
  Scores pooled(classes.size());
  for (size_t f = 0; f < folds; ++f) {
    const data::Stacking s = fit("the images outside fold " + std::to_string(f + 1),
                                 [&](const StackingRow& r) { return r.fold != static_cast<int>(f); });
    for (const StackingRow& r : rows) {
      if (r.fold != static_cast<int>(f)) continue;
      const std::vector<double> p = s.probabilities(r.probabilities, {r.malignancy});
      add_classification(per_fold[f], p, r.truth);
      add_classification(pooled, p, r.truth);
    }
  }
  std::cout << "\nStacked with the segmenter's malignancy score, each fold's stacking fitted on the other folds:\n";
  print_results(per_fold, pooled, classes);
  write_file_atomic(path, app::stacking_text(fit("the images", [](const StackingRow&) { return true; }), classes) + "\n");
  std::cout << "wrote " << path << ": the stacking fitted on all " << rows.size() << " images (cls_train --stacking)\n";
}

void write_reliability(const std::string& path, const data::ProbabilityRecord& probabilities) {
  std::ostringstream title;
  title << std::fixed << std::setprecision(3) << "calibration, " << probabilities.count() << " images: ECE "
        << probabilities.ece();
  write_file_atomic(path, data::reliability_svg(probabilities.bins(), title.str()));
}

int evaluate(int argc, char** argv) {
  app::Cli cli("evaluate", "Score segmentation and classification checkpoints on labelled scans, as predict runs them.");
  cli.option("images-dir", "", "images: BUSI's Dataset_BUSI_with_GT, CLASS/ subfolders, or a flat folder (no classes)", true)
      .option("masks-dir", "", "masks (X_mask.png); leave out when they sit beside the images (BUSI); images without "
              "a mask are left out of the segmentation figures")
      .option("seg-model", "", "segmentation checkpoint (seg_train --save-path); {fold} in the name: each fold's, "
              "with --folds; left out: the classifier reads the ground-truth masks (an upper bound: on BUSI the traced "
              "outlines alone tell malignant from benign, models/weights/README.md)")
      .option("cls-model", "", "classification checkpoint (cls_train --save-path); {fold} in the name: each fold's, "
              "with --folds; left out: segmentation figures only")
      .option("refine-model", "", "a refining segmenter (seg_train --lesion-view) that redraws the outline in the "
              "window around what --seg-model found; {fold} in the name: each fold's, with --folds")
      .option("folds", "0", "score a --folds K training run out of fold: each image by the {fold} checkpoints of "
              "the fold that validated it (the same duplicate-grouped folds of the same images and --seed), "
              "figures per fold, their mean and spread, and pooled")
      .option("seed", "0", "with --folds: the training runs' --seed")
      .flag("flip-tta", "average each model's outputs on the image and its mirror image, as predict --flip-tta")
      .option("csv", "", "a row per image: image, (with --folds) the fold that scored it, class, predicted class, "
              "confidence, class probabilities, Dice against its mask, predicted lesion pixels, the malignancy score "
              "(a --malignancy-map segmenter's)")
      .option("reliability", "", "the classifier's reliability diagram (SVG)")
      .option("fit-stacking", "", "with --folds and a segmenter trained with --malignancy-map: fit the stacking of "
              "the classifier's probabilities with the segmenter's malignancy score on the out-of-fold images, "
              "score it per fold (fitted on the other folds), and write the one fitted on all to this JSON file, "
              "for cls_train --stacking")
      .flag("overwrite", "replace a --csv or --reliability file that exists");
  app::add_runtime_options(cli);
  if (!cli.parse(argc, argv)) return 0;
  const Device device = app::apply_runtime_options(cli);
  const ModelFiles given{cli.str("seg-model"), cli.str("cls-model"), cli.str("refine-model")};
  const std::string &seg_path = given.seg, &cls_path = given.cls, reliability = cli.str("reliability");
  const int64_t k = cli.integer("folds");
  SONO_CHECK(!seg_path.empty() || !cls_path.empty(), "--seg-model, --cls-model: give one or both");
  SONO_CHECK(reliability.empty() || !cls_path.empty(), "--reliability: needs --cls-model");
  SONO_CHECK(given.refine.empty() || !seg_path.empty(), "--refine-model: needs --seg-model, whose lesions it outlines");
  const std::string stacking_path = cli.str("fit-stacking");
  SONO_CHECK(stacking_path.empty() || (k > 0 && !seg_path.empty() && !cls_path.empty()), "--fit-stacking: needs "
             "--folds K with both --seg-model and --cls-model: the stacking is fitted on out-of-fold rows");
  const bool per_fold = seg_path.find("{fold}") != std::string::npos || cls_path.find("{fold}") != std::string::npos ||
                        given.refine.find("{fold}") != std::string::npos;
  SONO_CHECK(k == 0 || k >= 2, "--folds ", k, ": 0 (no folds) or at least 2");
  SONO_CHECK(per_fold == (k > 0), per_fold ? "{fold} in --seg-model, --cls-model or --refine-model: needs --folds K"
                                           : "--folds: needs {fold} in --seg-model or --cls-model");
  const auto files = model_files(given, k);
  std::vector<app::RunFile> inputs, outputs;
  for (const auto& [seg, cls, refine] : files)
    for (const auto& [path, flag] :
         {std::pair{seg, "--seg-model"}, std::pair{cls, "--cls-model"}, std::pair{refine, "--refine-model"}})
      if (!path.empty()) {
        SONO_CHECK(fs::is_regular_file(path), flag, " ", path, ": no such checkpoint");
        inputs.push_back({path, flag});
      }
  for (const char* flag : {"csv", "reliability", "fit-stacking"})
    if (!cli.str(flag).empty()) {
      app::check_writable(cli.str(flag));
      outputs.push_back({cli.str(flag), std::string("--") + flag});
    }
  app::check_outputs(inputs, outputs, cli.is_set("overwrite"));
  const data::Dataset dataset =
      data::scan_dataset(cli.str("images-dir"), cli.str("masks-dir"), {.masks_required = false, .check_sizes = true});
  std::cout << dataset.summary() << (seg_path.empty() ? "; masks: the ground truth" : "") << "\n";
  for (const char* flag : {"reliability", "fit-stacking"})
    SONO_CHECK(!dataset.classes.empty() || cli.str(flag).empty(), "--", flag, ": ", cli.str("images-dir"),
               " has no class folders to score the classifier against");
  const std::vector<int> fold_of = sample_folds(dataset, static_cast<int>(k), static_cast<uint64_t>(cli.integer("seed")));

  std::vector<std::string> classes;  // the first classifier's; the others must have the same
  std::vector<Scores> folds;
  std::optional<Scores> pooled;
  std::ostringstream csv;
  std::vector<StackingRow> stacking_rows;
  // On stderr, as predict's: stdout keeps the figures alone, for a file or a pipe.
  data::Progress progress("evaluate", dataset.samples.size(), std::cerr, data::stderr_is_terminal());
  for (int fold = 0; fold < static_cast<int>(files.size()); ++fold) {
    Models models = load_models(files[fold], device, !stacking_path.empty());
    std::vector<size_t> truth_index;
    if (models.cls) {
      if (fold == 0) classes = models.cls->card.classes;
      SONO_CHECK(models.cls->card.classes == classes, files[fold].cls, ": its classes differ from ",
                 files[0].cls, "'s");
      truth_index = classifier_classes(dataset, models.cls->card, files[fold].cls);
    }
    if (fold == 0) pooled.emplace(std::max<size_t>(1, classes.size())), csv << csv_header(models, k > 0);
    folds.emplace_back(std::max<size_t>(1, classes.size()));
    for (size_t i = 0; i < dataset.samples.size(); ++i) {
      if (fold_of[i] != fold) continue;
      const data::Sample& sample = dataset.samples[i];
      std::optional<size_t> truth;
      if (!truth_index.empty()) truth = truth_index[static_cast<size_t>(sample.label)];
      const std::string class_name = dataset.classes.empty() ? "" : dataset.classes[static_cast<size_t>(sample.label)];
      csv << score_image(models, device, cli.is_set("flip-tta"), sample, class_name, truth,
                         k > 0 ? std::optional(fold) : std::nullopt, {&folds.back(), &*pooled},
                         stacking_path.empty() ? nullptr : &stacking_rows);
      progress.step(1, std::nan(""));
    }
  }
  progress.finish();
  print_results(folds, *pooled, classes);
  if (!cli.str("csv").empty()) write_file_atomic(cli.str("csv"), csv.str());
  if (!reliability.empty()) write_reliability(reliability, pooled->probabilities);
  if (!stacking_path.empty()) fit_stacking(stacking_rows, files.size(), classes, stacking_path);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return sono::app::run_tool("evaluate", [&] { return evaluate(argc, argv); });
}
