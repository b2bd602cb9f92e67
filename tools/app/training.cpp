#include "tools/app/training.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "autograd/node.h"
#include "layers/norm.h"
#include "layers/optim.h"
#include "layers/safetensors.h"
#include "models/registry.h"
#include "models/resnet.h"
#include "tensor/random.h"
#include "tools/app/checkpoint.h"
#include "tools/app/cross_validation.h"
#include "tools/app/csv_table.h"
#include "tools/app/distributed.h"
#include "tools/app/inference.h"
#include "tools/app/runtime.h"
#include "tools/app/weight_average.h"
#include "tensor/atomic_file.h"
#include "tools/data/lesion_view.h"
#include "tools/data/progress.h"
#include "tools/data/seeding.h"
#include "tools/data/split.h"
#include "tools/data/training_log.h"

namespace sono::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

void add_training_options(Cli& cli, const TrainDefaults& d) {
  cli.option("images-dir", "", "images: flat folder, CLASS/ subfolders, or BUSI's Dataset_BUSI_with_GT", true)
      .option("masks-dir", "", "masks (X_mask.png); leave out when they sit beside the images (BUSI)")
      .option("epochs", "30", "training epochs")
      .option("lr", "", "peak learning rate (AdamW, linear warmup then cosine decay); default per --arch: "
                        "mit 2e-4, convnext 4e-3 * sqrt(batch / 4096)")
      .option("batch-size", std::to_string(d.batch_size), "images per training step")
      .option("img-size", "256", "training side in pixels, a multiple of 32")
      .option("val-split", "0.2", "fraction of images (by duplicate group, per class) for validation; 0: train on "
                                  "every image (a final model after --folds chose the recipe: no validation, the "
                                  "last epoch is kept)")
      .option("hold-out", "", "a file of image names (as the log's split.csv writes them, one a line) kept out of "
                              "training and validation with their near-duplicates, e.g. the demo's scans")
      .option("checkpoint", "", "which epoch --save-path keeps: best (by the validation metric) or last; default "
                                "best, but last with --folds (a fold's figures then involve no choice made on its "
                                "own images) and with --val-split 0")
      .option("save-path", "", "the kept checkpoint (.safetensors); X.last.safetensors holds the resume state", true)
      .option("arch", d.arch, "model architecture")
      .option("pretrained", "", "backbone weights (.safetensors from timm/smp/torchvision or pretrain); for a ResNet "
                                "classifier also a seg_train checkpoint on the same ResNet (its encoder); for a "
                                "segmenter a seg_train checkpoint of the same --arch (the whole model, fine-tuned "
                                "on these images); {fold} in the name: each fold's file of a --folds run")
      .option("resume", "", "continue from a X.last.safetensors state (same arguments and data)")
      .flag("resume-anyway", "with --resume: continue although arguments or data differ from the saved run")
      .option("log-dir", "", "folder for the per-epoch CSV and the training-curve SVG")
      .option("seed", "0", "seed of the split, initialisation, augmentation and shuffling")
      .option("weight-decay", std::to_string(d.weight_decay), "AdamW weight decay (not on biases and norms)")
      .option("warmup-epochs", "", "epochs of linear learning-rate warmup (default 2); one not shorter than "
                                   "--epochs is cut to half the run")
      .option("drop-path", std::to_string(d.drop_path),
              "stochastic depth rate (MiT, ConvNeXt, ResNet classifier; smp's ResNet encoder has none)")
      .option("clip-grad", "", "clip the global gradient norm to this, 0: off (default: mit 1, convnext and resnet 0)")
      .option("workers", "2", "threads preparing batches")
      .flag("no-augment", "train without augmentation");
  add_recipe_options(cli);
  add_runtime_options(cli);
  distributed::add_options(cli);
}

Recipe default_recipe(const std::string& arch, int64_t batch_size) {
  if (arch.rfind("mit_", 0) == 0) return {"mit", 2e-4, 2, 1.0};
  if (arch.rfind("convnext_", 0) == 0) return {"convnext", 4e-3 * std::sqrt(batch_size / 4096.0), 2, 0};
  if (models::is_resnet(models::segmentation_encoder(arch))) return {"resnet", 1e-3, 2, 0};
  fail("--arch ", arch, ": no default --lr, --warmup-epochs and --clip-grad for it; give all three");
}

namespace {

// --checkpoint: whether the last epoch, not the best validated one, is kept.
bool read_checkpoint_choice(const Cli& cli, const TrainSettings& s) {
  const std::string choice = cli.str("checkpoint");
  SONO_CHECK(choice.empty() || choice == "best" || choice == "last", "--checkpoint ", choice, ": must be best or last");
  SONO_CHECK(!(choice == "best" && !s.has_validation()),
             "--checkpoint best: --val-split 0 leaves no validation images to pick the best epoch by");
  if (!choice.empty()) return choice == "last";
  return s.recipe_options.folds > 0 || !s.has_validation();
}

// --lr, --warmup-epochs and --clip-grad: the flag where given, else the recipe's value; then the
// line that says which values this run uses.
void apply_recipe(const Cli& cli, TrainSettings& s) {
  auto given = [&](const char* flag) { return !cli.str(flag).empty(); };
  const bool all_given = given("lr") && given("warmup-epochs") && given("clip-grad");
  const Recipe recipe = all_given ? Recipe{} : default_recipe(s.arch, s.batch_size);
  const std::string from_recipe = " (" + recipe.family + " default)";
  auto pick = [&](const char* flag, double fallback, std::string& source) {
    source = given(flag) ? "" : from_recipe;
    return given(flag) ? cli.real(flag) : fallback;
  };
  std::string lr_source, warmup_source, clip_source;
  s.lr = pick("lr", recipe.lr, lr_source);
  s.warmup_epochs = pick("warmup-epochs", recipe.warmup_epochs, warmup_source);
  s.clip_grad = pick("clip-grad", recipe.clip_grad, clip_source);
  SONO_CHECK(s.warmup_epochs >= 0, "--warmup-epochs ", s.warmup_epochs, ": must be 0 or more");
  SONO_CHECK(s.clip_grad >= 0, "--clip-grad ", s.clip_grad, ": must be 0 (off) or more");
  if (const double warmup = warmup_within_run(s.warmup_epochs, s.epochs); warmup != s.warmup_epochs) {
    s.warmup_epochs = warmup;
    warmup_source.clear();
  }
  std::cout << "training: epochs " << s.epochs << ", batch size " << s.batch_size << "; AdamW lr " << s.lr << lr_source
            << ", warmup " << s.warmup_epochs << " epochs" << warmup_source << ", clip-grad "
            << s.clip_grad << clip_source << "; weight decay " << s.weight_decay << ", cosine decay to lr / 100\n";
}

}  // namespace

void read_run_settings(const Cli& cli, RunSettings& s) {
  s.images_dir = cli.str("images-dir");
  s.save_path = cli.str("save-path");
  s.arch = cli.str("arch");
  s.log_dir = cli.str("log-dir");
  s.epochs = cli.integer("epochs");
  s.batch_size = cli.integer("batch-size");
  s.img_size = cli.integer("img-size");
  s.workers = cli.integer("workers");
  s.seed = static_cast<uint64_t>(cli.integer("seed"));
  s.weight_decay = cli.real("weight-decay");
  s.drop_path = cli.real("drop-path");
  models::find_model(s.arch, s.task);  // an unknown --arch fails here, listing the known ones
  SONO_CHECK(s.epochs >= 1, "--epochs ", s.epochs, ": must be at least 1");
  SONO_CHECK(s.batch_size >= 1, "--batch-size ", s.batch_size, ": must be at least 1");
  check_thread_count("workers", s.workers, 1);
  SONO_CHECK(s.drop_path >= 0 && s.drop_path < 1, "--drop-path ", cli.str("drop-path"),
             ": must be at least 0 and below 1 (the stochastic depth of the last block)");
  SONO_CHECK(s.weight_decay >= 0, "--weight-decay ", cli.str("weight-decay"), ": must be 0 or more");
  if (!s.log_dir.empty()) check_writable_folder("log-dir", s.log_dir);
  check_writable(s.save_path);
}

TrainSettings read_training_options(const Cli& cli, models::Task task) {
  TrainSettings s;
  s.task = task;
  s.masks_dir = cli.str("masks-dir");
  s.pretrained = cli.str("pretrained");
  s.resume = cli.str("resume");
  s.hold_out = cli.str("hold-out");
  s.val_split = cli.real("val-split");
  s.augment = !cli.is_set("no-augment");
  s.resume_anyway = cli.is_set("resume-anyway");
  s.recipe_options = read_recipe_options(cli);
  distributed::read_options(cli);
  read_run_settings(cli, s);
  apply_recipe(cli, s);
  SONO_CHECK(s.img_size >= 32 && s.img_size <= kMaxImgSize && s.img_size % 32 == 0, "--img-size ", s.img_size,
             ": must be a multiple of 32 from 32 to ", kMaxImgSize, " (the encoders downsample 32x)");
  SONO_CHECK(s.val_split >= 0 && s.val_split < 1, "--val-split ", s.val_split, ": must be at least 0 and under 1");
  s.keep_last_epoch = read_checkpoint_choice(cli, s);
  SONO_CHECK(s.lr > 0, "--lr ", s.lr, ": must be positive");
  check_writable(resume_state_path(s.save_path));
  SONO_CHECK(s.resume.empty() || fs::is_regular_file(s.resume), s.resume, ": --resume file not found");
  SONO_CHECK(s.hold_out.empty() || fs::is_regular_file(s.hold_out), s.hold_out, ": --hold-out file not found");
  SONO_CHECK(s.hold_out.empty() || !s.recipe_options.folds, "--hold-out: for a split run; --folds scores every image");
  // The resume state may continue in the --resume file itself (that is resuming); the best
  // checkpoint may replace neither input.
  std::vector<RunFile> inputs;
  for (const std::string& path : pretrained_files(s)) {
    SONO_CHECK(fs::is_regular_file(path), path, ": --pretrained file not found");
    inputs.push_back({path, "--pretrained"});
  }
  check_outputs(inputs, {{resume_state_path(s.save_path), "the resume state of --save-path"}}, true);
  if (!s.resume.empty()) inputs.push_back({s.resume, "--resume"});
  check_outputs(inputs, {{s.save_path, "--save-path"}}, true);
  s.device = apply_training_runtime_options(cli);
  return s;
}

double read_lesion_view(const Cli& cli, TrainSettings& settings) {
  const double context = cli.real("lesion-view");
  SONO_CHECK(context >= 0 && context <= 4, "--lesion-view ", cli.str("lesion-view"), ": must be from 0 (off) to 4");
  if (context > 0) {
    settings.decode_size = std::lround(static_cast<double>(settings.img_size) / data::kMinWindowFraction);
    settings.card_extra["lesion_view"] = run_argument_number(context);
  }
  return context;
}

void frame_lesions(data::SampleCache& cache, const TrainSettings& settings, double context) {
  if (context <= 0) return;
  cache.reframe(static_cast<int>(settings.img_size),
                [&](data::Image& image, data::Mask& mask) { data::apply_lesion_view(image, mask, context); });
}

double warmup_within_run(double warmup_epochs, int64_t epochs) {
  if (warmup_epochs < static_cast<double>(epochs)) return warmup_epochs;
  // The cosine decay needs steps after the warmup; half the run keeps a gentle start.
  const double half = static_cast<double>(epochs) / 2;
  std::cout << "note: --warmup-epochs " << warmup_epochs << " is not shorter than --epochs " << epochs
            << ": warming up for " << half << (half == 1 ? " epoch" : " epochs") << " (half the run)\n";
  return half;
}

namespace {

// The whole segmenter from a checkpoint on the same architecture (fine-tuning on other images):
// encoder and decoder must fit; a segmentation head of another shape (another channel count,
// e.g. with or without --malignancy-map) stays fresh.
void load_segmenter(nn::Module& model, nn::StateDict weights, const std::string& path) {
  for (const auto& [key, fresh] : model.state_dict()) {
    if (!key.starts_with("segmentation_head.")) continue;
    auto theirs = weights.find(key);
    if (theirs == weights.end() || theirs->second.shape() != fresh.shape()) weights[key] = fresh.detach().clone();
  }
  try {
    model.load_state_dict(weights, true);
  } catch (const Error& e) {
    fail(path, ": the segmenter does not fit the model (same --arch, --encoder-depth and decoder needed): ", e.what());
  }
}

}  // namespace

void load_backbone_weights(nn::Module& model, const models::ModelEntry& entry, const std::string& path) {
  nn::SafetensorsFile file = nn::load_safetensors(path);
  const std::string task = file.metadata["task"], arch = file.metadata["arch"];
  const std::string segmentation = models::task_name(models::Task::segmentation);
  if (task == segmentation && entry.task == models::Task::segmentation) {
    SONO_CHECK(arch == entry.name, path, ": --pretrained is a ", arch, " segmenter; it cannot start a ", entry.name,
               " one");
    return load_segmenter(model, std::move(file.tensors), path);
  }
  if (task == segmentation && entry.task == models::Task::classification) {
    SONO_CHECK(models::segmentation_encoder(arch) == entry.name, path, ": --pretrained is a ", arch, " segmenter; its encoder cannot start a ",
               entry.name, " classifier (a segmenter on the same ResNet can)");
    const std::string depth = file.metadata.count("encoder_depth") ? file.metadata["encoder_depth"] : "5";
    SONO_CHECK(depth == "5", path, ": --pretrained is a ", arch, " segmenter at encoder depth ", depth,
               "; its encoder lacks the last layers a classifier needs (a depth-5 segmenter has them)");
    nn::StateDict encoder;
    for (auto& [key, value] : file.tensors)
      if (key.starts_with("encoder.")) encoder[key.substr(8)] = value;
    file.tensors = std::move(encoder);
  }
  try {
    models::load_backbone(model, entry, std::move(file.tensors));
  } catch (const Error& e) {
    fail(path, ": pretrained weights do not fit the model: ", e.what());
  }
}

std::vector<std::string> pretrained_files(const TrainSettings& s) {
  if (s.pretrained.empty()) return {};
  if (s.pretrained.find("{fold}") == std::string::npos) return {s.pretrained};
  SONO_CHECK(s.recipe_options.folds >= 2, "--pretrained ", s.pretrained,
             ": {fold} stands for a fold's number; it needs --folds");
  std::vector<std::string> files;
  for (int fold = 0; fold < s.recipe_options.folds; ++fold) files.push_back(fold_path(s.pretrained, fold));
  return files;
}

namespace {

// --hold-out's names, as dataset indices; a name the data lacks stops the run, naming its line.
std::vector<size_t> read_hold_out(const std::string& path, const data::Dataset& dataset) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < dataset.samples.size(); ++i) index[dataset.samples[i].name] = i;
  std::ifstream in(path);
  SONO_CHECK(in, path, ": cannot be read");
  std::vector<size_t> samples;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    auto it = index.find(line);
    SONO_CHECK(it != index.end(), path, ":", number, ": '", line,
               "' is not an image of --images-dir (names as split.csv writes them)");
    samples.push_back(it->second);
  }
  return samples;
}

}  // namespace

std::shared_ptr<data::SampleCache> decode_samples(const TrainSettings& s, const data::Dataset& dataset) {
  return std::make_shared<data::SampleCache>(dataset, static_cast<int>(s.decode_size ? s.decode_size : s.img_size));
}

void check_prepared(const TrainSettings& s, const data::SampleCache& cache) {
  SONO_CHECK(cache.size() == s.img_size, "training samples are ", cache.size(), " px, --img-size is ", s.img_size);
}

std::string resume_state_path(const std::string& save_path) {
  fs::path p(save_path);
  return (p.parent_path() / (p.stem().string() + ".last" + p.extension().string())).string();
}

std::string run_argument_number(double x) {
  std::ostringstream os;
  os << std::setprecision(10) << x;
  return os.str();
}

namespace {

bool has_batch_norm(const nn::Module& model) {
  for (auto& [name, t] : model.named_buffers())
    if (name.size() >= 12 && name.compare(name.size() - 12, 12, "running_mean") == 0) return true;
  return false;
}

// Whether some rank's share of the epoch's last batch holds exactly `images_in_share` images.
bool last_share_of(size_t images_in_share, size_t images, int64_t batch_size, int ranks) {
  const size_t last_batch = (images - 1) % static_cast<size_t>(batch_size) + 1;
  for (int r = 0; r < ranks; ++r)
    if (auto [first, end] = data::rank_share(last_batch, r, ranks); end - first == images_in_share) return true;
  return false;
}

data::Batch to_device(data::Batch batch, Device device) {
  batch.images = batch.images.to(device);
  batch.masks = batch.masks.to(device);
  batch.labels = batch.labels.to(device);
  return batch;
}

std::string join_metrics(const std::vector<std::string>& names, const std::vector<double>& values) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(4);
  for (size_t i = 0; i < names.size(); ++i) os << (i ? ", " : "") << names[i] << " " << values[i];
  return os.str();
}

// The arguments a resumed run must share with the saved one: another value would continue a
// different schedule, input size or split. Effective values (after the recipe's defaults).
std::map<std::string, std::string> run_arguments(const TrainSettings& s) {
  const auto number = run_argument_number;
  const RecipeOptions& r = s.recipe_options;
  std::map<std::string, std::string> arguments = {
      {"--img-size", std::to_string(s.img_size)},   {"--epochs", std::to_string(s.epochs)},
      {"--batch-size", std::to_string(s.batch_size)}, {"--lr", number(s.lr)},
      {"--weight-decay", number(s.weight_decay)},    {"--warmup-epochs", number(s.warmup_epochs)},
      {"--drop-path", number(s.drop_path)},          {"--clip-grad", number(s.clip_grad)},
      {"--val-split", number(s.val_split)},          {"--seed", std::to_string(s.seed)},
      {"--no-augment", s.augment ? "no" : "yes"},    {"--augment", r.augment},
      {"--elastic", number(r.elastic)},
      {"--keep-upright", r.keep_upright ? "yes" : "no"},
      {"--balanced-sampling", r.balanced_sampling ? "yes" : "no"},
      {"--ema", number(r.ema_decay)},
      {"--checkpoint", s.keep_last_epoch ? "last" : "best"}, {"--hold-out", s.hold_out}};
  arguments.insert(s.tool_arguments.begin(), s.tool_arguments.end());
  return arguments;
}

// Each sample's side of the split: "train", "val" or "held out".
std::vector<const char*> sides(const data::Dataset& dataset, const data::Split& split) {
  std::vector<const char*> side(dataset.samples.size(), "train");
  for (size_t i : split.val) side[i] = "val";
  for (size_t i : split.held_out) side[i] = "held out";
  return side;
}

// Which images (names, classes, perceptual hashes of the pixels) a run sees and on which side
// of the split each one is: FNV-1a over all of it, with the counts to read it by.
std::string data_fingerprint(const data::Dataset& dataset, const std::vector<uint64_t>& hashes, const data::Split& split) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const std::string& bytes) {
    for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  };
  std::vector<const char*> side = sides(dataset, split);
  for (size_t i = 0; i < dataset.samples.size(); ++i)
    mix(dataset.samples[i].name + "\t" + std::to_string(dataset.samples[i].label) + "\t" + side[i] + "\t" +
        std::to_string(hashes[i]) + "\n");
  std::ostringstream os;
  os << dataset.samples.size() << " images, " << split.val.size() << " for validation, fnv1a " << std::hex
     << std::setw(16) << std::setfill('0') << h;
  return os.str();
}

// The CSV a TrainingLog wrote, read back for --resume by column name, so that a state saved by
// a build that logged other columns still resumes: a column it did not log is NaN for its epochs.
void restore_log(data::TrainingLog& log, const std::string& csv) {
  const std::vector<std::vector<std::string>> records = csv_records(csv);
  if (records.empty()) return;
  const std::vector<std::string>& saved = records.front();
  std::vector<size_t> saved_index;  // per column of `log`; saved.size() where the state has none
  for (const std::string& column : log.columns())
    saved_index.push_back(static_cast<size_t>(std::find(saved.begin(), saved.end(), column) - saved.begin()));
  for (size_t r = 1; r < records.size(); ++r) {
    std::vector<double> row;
    for (size_t i : saved_index) {
      const bool absent = i >= records[r].size() || records[r][i] == "nan";
      row.push_back(absent ? NAN : std::stod(records[r][i]));
    }
    log.add(row);
  }
}

class Trainer {
 public:
  Trainer(const TrainSettings& s, TrainingTask& task, const data::Dataset& dataset)
      : s_(s), task_(task), dataset_(dataset) {}
  // On prepared samples and a given split.
  Trainer(const TrainSettings& s, TrainingTask& task, std::shared_ptr<data::SampleCache> cache, data::Split split)
      : s_(s), task_(task), dataset_(cache->dataset()), cache_(std::move(cache)), split_(std::move(split)) {}

  int run(const std::function<void(data::SampleCache&)>& prepare);

 private:
  void build_data(const std::function<void(data::SampleCache&)>& prepare);
  void write_split(const data::Split& split) const;
  void build_model();
  void resume();
  double train_epoch(int epoch, double& images_per_second);
  double backward(const data::Batch& batch);
  double validate(int epoch);
  void end_epoch(int epoch, const std::vector<double>& row, double metric);
  void write_log_and_best(int epoch, double metric);
  void write_resume_state(int epoch, const nn::StateDict& optimizer_state);
  std::vector<std::string> differences_from(const ModelCard& saved) const;
  ModelCard card() const;
  nn::StateDict optimizer_state() const;

  const TrainSettings& s_;
  TrainingTask& task_;
  const data::Dataset& dataset_;
  std::shared_ptr<data::SampleCache> cache_;
  std::optional<data::Split> split_;
  std::unique_ptr<data::Loader> train_, val_;
  std::unique_ptr<WeightAverage> ema_;
  std::shared_ptr<nn::UnaryModule> model_;
  std::unique_ptr<nn::AdamW> optimizer_;
  std::unique_ptr<distributed::GradientReducer> reducer_;  // with more than one MPI rank
  std::unique_ptr<distributed::OptimizerShards> shards_;   // --shard-optimizer
  nn::CosineWarmupSchedule schedule_{};
  std::unique_ptr<data::TrainingLog> log_;
  std::string data_fingerprint_;
  int start_epoch_ = 0;
  double best_ = NAN;
  int best_epoch_ = 0;
};

// split.csv in the log folder: which image went where, so a result can be audited.
void Trainer::write_split(const data::Split& split) const {
  std::vector<const char*> side = sides(dataset_, split);
  std::string csv = csv_row({"image", "class", "side", "duplicate_group"});
  for (size_t i = 0; i < dataset_.samples.size(); ++i) {
    const data::Sample& sample = dataset_.samples[i];
    csv += csv_row({sample.name, dataset_.classes.empty() ? "" : dataset_.classes[sample.label], side[i],
                    std::to_string(split.group[i])});
  }
  fs::create_directories(s_.log_dir);
  write_file_atomic(fs::path(s_.log_dir) / "split.csv", csv);
}

void Trainer::build_data(const std::function<void(data::SampleCache&)>& prepare) {
  std::cout << dataset_.summary() << "\n";
  if (!cache_) {
    cache_ = decode_samples(s_, dataset_);
    if (prepare) prepare(*cache_);
    check_prepared(s_, *cache_);
    split_ = data::split_dataset(dataset_, cache_->hashes(), {s_.val_split, s_.seed});
    if (!s_.hold_out.empty()) data::hold_out(*split_, read_hold_out(s_.hold_out, dataset_));
  }
  const data::Split& split = *split_;
  std::cout << "split: " << split.summary(dataset_) << "\n";
  data_fingerprint_ = data_fingerprint(dataset_, cache_->hashes(), split);
  if (!s_.log_dir.empty() && distributed::is_root()) write_split(split);
  distributed::check_batch_size(s_.batch_size);

  data::LoaderOptions train;
  train.batch_size = s_.batch_size;
  train.input = task_.input();
  train.augment = s_.augment;
  train.augmentation = s_.recipe_options.augment_options();
  train.workers = static_cast<int>(s_.workers);
  train.seed = s_.seed;
  train.balanced = s_.recipe_options.balanced_sampling;
  train.rank = distributed::rank();
  train.ranks = distributed::size();
  // BatchNorm cannot train on a last batch of one image (on any rank); SyncBatchNorm can, but
  // needs every rank in every step's forward.
  train.drop_last = has_batch_norm(*model_) &&
                    last_share_of(distributed::sync_batch_norm() ? 0 : 1, split.train.size(), s_.batch_size, train.ranks);
  data::LoaderOptions val = train;
  val.shuffle = val.augment = val.drop_last = val.balanced = false;
  val.rank = 0, val.ranks = 1;  // every rank loads every batch; distributed::map_rows shares the work
  train_ = std::make_unique<data::Loader>(cache_, split.train, train);
  if (!split.val.empty()) val_ = std::make_unique<data::Loader>(cache_, split.val, val);
}

void Trainer::build_model() {
  manual_seed(s_.seed);
  models::ModelOptions options;
  options.in_channels = data::input_channels(task_.input());
  options.num_classes = static_cast<int64_t>(task_.class_names(dataset_).size());
  options.drop_path_rate = s_.drop_path;
  options.encoder_depth = s_.encoder_depth;
  options.atrous_rates = s_.atrous_rates;
  options.decoder_channels = s_.decoder_channels;
  model_ = models::create_model(s_.arch, options, task_.task());
  SONO_CHECK(!(s_.batch_size == distributed::size() && has_batch_norm(*model_) && !distributed::sync_batch_norm()),
             "--batch-size ", s_.batch_size,
             ": ", s_.arch, " has BatchNorm layers, which need at least 2 images per training batch",
             distributed::size() > 1 ? " on each MPI rank" : "");
  if (!s_.pretrained.empty()) {
    load_backbone_weights(*model_, models::find_model(s_.arch, task_.task()), s_.pretrained);
    std::cout << "backbone weights: " << s_.pretrained << "\n";
  }
  model_->to(s_.device);
  std::cout << "model: " << s_.arch << ", " << model_->num_parameters() << " parameters, "
            << options.in_channels << " input channels, " << options.num_classes << " outputs, on "
            << device_name(s_.device) << "\n";
}

void Trainer::resume() {
  if (s_.resume.empty()) return;
  nn::SafetensorsFile file = nn::load_safetensors(s_.resume);
  ModelCard saved = ModelCard::from_metadata(s_.resume, file.metadata);
  SONO_CHECK(saved.task == task_.task() && saved.arch == s_.arch, s_.resume, ": holds a ", models::task_name(saved.task),
             " ", saved.arch, " state; this run trains ", models::task_name(task_.task()), " ", s_.arch);
  SONO_CHECK(file.metadata.count("history"), s_.resume, ": not a resume state (no history); pass the .last file");
  if (std::vector<std::string> differences = differences_from(saved); !differences.empty()) {
    std::string list;
    for (auto& d : differences) list += (list.empty() ? "" : ", ") + d;
    SONO_CHECK(s_.resume_anyway, s_.resume, ": saved by another run: ", list,
               "; pass --resume-anyway to continue it regardless");
    std::cout << "note: " << s_.resume << ": continuing (--resume-anyway) although " << list << "\n";
  }
  nn::StateDict weights, optimizer;
  for (auto& [k, v] : file.tensors) {
    if (k.rfind("optimizer.", 0) == 0)
      optimizer[k.substr(10)] = v;
    else
      weights[k] = v;
  }
  try {
    model_->load_state_dict(weights);
    optimizer_->load_state_dict(optimizer);
  } catch (const Error& e) {
    fail(s_.resume, ": ", e.what());
  }
  start_epoch_ = std::stoi(saved.extra.at("epoch"));
  best_ = std::stod(saved.extra.at("best_value"));
  best_epoch_ = std::stoi(saved.extra.at("best_epoch"));
  restore_log(*log_, file.metadata.at("history"));
  std::cout << "resumed from " << s_.resume << " after epoch " << start_epoch_ << " (best "
            << task_.best_metric() << " " << best_ << " at epoch " << best_epoch_ << ")\n";
}

// What in this run differs from the run that saved `saved`, one "--flag now (saved: then)" each.
std::vector<std::string> Trainer::differences_from(const ModelCard& saved) const {
  auto recorded = saved.extra.find("run_arguments");
  if (recorded == saved.extra.end()) return {"its arguments and data are not recorded (saved by an older sono)"};
  std::map<std::string, std::string> before;
  try {
    before = json::parse(recorded->second).get<std::map<std::string, std::string>>();
  } catch (const json::exception& e) {
    fail(s_.resume, ": malformed run_arguments in its metadata (", e.what(), ")");
  }
  std::vector<std::string> differences;
  for (auto& [flag, value] : run_arguments(s_)) {
    auto it = before.find(flag);  // a flag the saving version did not record is not compared
    if (it != before.end() && it->second != value)
      differences.push_back(flag + " " + value + " (saved: " + it->second + ")");
  }
  auto fingerprint = saved.extra.find("data_fingerprint");
  std::string then = fingerprint == saved.extra.end() ? "not recorded" : fingerprint->second;
  if (then != data_fingerprint_)
    differences.push_back("data and split differ (saved: " + then + "; now: " + data_fingerprint_ + ")");
  return differences;
}

ModelCard Trainer::card() const {
  ModelCard c;
  c.arch = s_.arch;
  c.task = task_.task();
  c.classes = task_.class_names(dataset_);
  c.reads_lesion_probability = task_.input() == data::InputKind::rgb_lesion_probability;
  c.in_channels = data::input_channels(task_.input());
  c.img_size = s_.img_size;
  c.encoder_depth = s_.encoder_depth;
  c.atrous_rates = s_.atrous_rates;
  c.decoder_channels = s_.decoder_channels;
  c.normalisation = data::kImagenet;  // what the loader applies
  c.extra["best_metric"] = task_.best_metric();
  c.extra["best_value"] = std::to_string(best_);
  c.extra["best_epoch"] = std::to_string(best_epoch_);
  c.extra["checkpoint"] = s_.keep_last_epoch ? "last epoch" : "best epoch";
  c.extra["trained_on"] = dataset_.summary();
  for (auto& [key, value] : s_.card_extra) c.extra[key] = value;
  return c;
}

// The whole optimizer's, on every rank: a collective where each rank keeps its shard.
nn::StateDict Trainer::optimizer_state() const {
  nn::StateDict state;
  for (auto& [k, v] : shards_ ? shards_->state_dict() : optimizer_->state_dict()) state["optimizer." + k] = v;
  return state;
}

// The step's loss over all ranks; the gradient of its mean over the step's images in .grad.
double Trainer::backward(const data::Batch& b) {
  if (!reducer_) {
    Tensor loss = task_.loss((*model_)(b.images), b);
    loss.backward();
    return loss.item();
  }
  const double share = static_cast<double>(b.samples.size()) / static_cast<double>(b.global_images);
  Tensor loss = b.samples.empty() ? Tensor() : task_.loss((*model_)(b.images), b);
  reducer_->backward(loss, share);
  return distributed::sum(loss.defined() ? loss.item() * share : 0.0);
}

double Trainer::train_epoch(int epoch, double& images_per_second) {
  // Dropout / drop-path draws; other ranks draw other masks for their other images.
  manual_seed(s_.seed * 1000003 + static_cast<uint64_t>(epoch) + distributed::rank() * 0x9e3779b97f4a7c15ull);
  model_->train();
  train_->start_epoch(epoch);
  std::ostringstream title;
  title << "epoch " << epoch + 1 << "/" << s_.epochs << " train";
  data::Progress bar(title.str(), train_->size());
  std::vector<Tensor> params = model_->parameters();
  const auto rank = static_cast<uint64_t>(distributed::rank());
  Generator mix_generator(data::mix_seed({s_.seed, static_cast<uint64_t>(epoch), rank, 0x6d6978}));  // "mix"
  while (auto batch = train_->next()) {
    data::mix_batch(*batch, s_.mix, mix_generator);
    optimizer_->set_lr(schedule_(optimizer_->steps()));
    data::Batch b = to_device(std::move(*batch), s_.device);
    optimizer_->zero_grad();
    double value = backward(b);
    if (s_.clip_grad > 0) nn::clip_grad_norm(params, s_.clip_grad);
    optimizer_->step();
    if (shards_) shards_->gather_parameters();
    if (ema_) ema_->update(*model_);
    SONO_CHECK(std::isfinite(value), "training diverged at epoch ", epoch + 1, " (loss ", value,
               "); lower --lr or set --clip-grad");
    bar.step(b.global_images, value);
  }
  std::ostringstream lr;
  lr << "lr " << std::setprecision(3) << optimizer_->lr();
  if (reducer_) lr << ", all-reduce waited " << reducer_->take_wait_per_step() * 1e3 << " ms/step";
  bar.finish(lr.str());
  images_per_second = bar.images_per_second();
  return bar.mean_loss();
}

double Trainer::validate(int epoch) {
  distributed::broadcast_buffers_from_root(*model_);
  model_->eval();
  autograd::NoGradGuard no_grad;
  task_.reset_metrics();
  val_->start_epoch(epoch);
  std::ostringstream title;
  title << "epoch " << epoch + 1 << "/" << s_.epochs << " val";
  data::Progress bar(title.str(), val_->size());
  while (auto batch = val_->next()) {
    data::Batch b = to_device(std::move(*batch), s_.device);
    Tensor logits = distributed::map_rows(
        [&](const Tensor& images) { return forward(*model_, images, s_.recipe_options.flip_tta); }, b.images);
    bar.step(b.samples.size(), task_.loss(logits, b).item());
    task_.add_metrics(logits, b);
  }
  bar.finish(join_metrics(task_.metric_columns(), task_.metric_values()));
  std::string report = task_.report();
  if (!report.empty()) std::cout << report;
  return bar.mean_loss();
}

void Trainer::end_epoch(int epoch, const std::vector<double>& row, double metric) {
  log_->add(row);
  if (distributed::is_root()) write_log_and_best(epoch, metric);
  if (ema_) ema_->swap(*model_);  // the resume state holds the trained weights
  const nn::StateDict optimizer = optimizer_state();
  if (distributed::is_root()) write_resume_state(epoch, optimizer);
}

// Rank 0's, for all: every rank holds the same model.
void Trainer::write_log_and_best(int epoch, double metric) {
  if (!s_.log_dir.empty()) {
    fs::create_directories(s_.log_dir);
    const std::string task = models::task_name(task_.task());
    log_->write_csv(fs::path(s_.log_dir) / (task + "_log.csv"));
    std::vector<std::string> metrics = task_.metric_columns();
    log_->write_svg(fs::path(s_.log_dir) / (task + "_curves.svg"), task + " " + s_.arch,
                    {"train_loss", "val_loss"}, metrics);
  }
  const bool best = std::isnan(best_) || metric > best_;
  if (best) best_ = metric, best_epoch_ = epoch + 1;
  if (!best && !s_.keep_last_epoch) return;
  save_checkpoint(s_.save_path, *model_, card());
  std::cout << "saved " << s_.save_path << " (";
  if (s_.keep_last_epoch) std::cout << "epoch " << epoch + 1 << (std::isnan(metric) ? "" : ", ");
  if (!std::isnan(metric))
    std::cout << task_.best_metric() << " " << metric << (best && s_.keep_last_epoch ? ", the best so far" : "");
  std::cout << ")\n";
}

void Trainer::write_resume_state(int epoch, const nn::StateDict& optimizer_state) {
  ModelCard state_card = card();
  state_card.extra["epoch"] = std::to_string(epoch + 1);
  state_card.extra["history"] = log_->csv();
  state_card.extra["run_arguments"] = json(run_arguments(s_)).dump();
  state_card.extra["data_fingerprint"] = data_fingerprint_;
  save_checkpoint(resume_state_path(s_.save_path), *model_, state_card, optimizer_state);
}

int Trainer::run(const std::function<void(data::SampleCache&)>& prepare) {
  build_model();
  build_data(prepare);
  if (s_.recipe_options.ema_decay > 0) ema_ = std::make_unique<WeightAverage>(*model_, s_.recipe_options.ema_decay);
  optimizer_ = std::make_unique<nn::AdamW>(
      nn::param_groups_weight_decay(*model_, s_.weight_decay),
      nn::AdamOptions{.lr = s_.lr, .weight_decay = s_.weight_decay});
  if (distributed::size() > 1) reducer_ = std::make_unique<distributed::GradientReducer>(model_->parameters());
  if (distributed::shard_optimizer()) shards_ = std::make_unique<distributed::OptimizerShards>(*optimizer_);
  if (distributed::sync_batch_norm()) nn::BatchNorm2d::sum_over_ranks = distributed::sum_over_ranks;
  auto steps_per_epoch = static_cast<int64_t>(train_->batches_per_epoch());
  const int64_t total_steps = s_.epochs * steps_per_epoch;
  const int64_t warmup_steps = std::min(std::lround(s_.warmup_epochs * steps_per_epoch), total_steps - 1);
  schedule_ = {s_.lr, warmup_steps, total_steps, s_.lr * 1e-2};
  std::vector<std::string> columns = {"epoch", "train_loss", "val_loss", "lr", "train_images_per_s"};
  for (auto& c : task_.metric_columns()) columns.push_back(c);
  log_ = std::make_unique<data::TrainingLog>(columns);
  resume();
  std::vector<std::string> metrics = task_.metric_columns();
  size_t best_index = std::find(metrics.begin(), metrics.end(), task_.best_metric()) - metrics.begin();
  const bool validating = !split_->val.empty();
  for (int epoch = start_epoch_; epoch < s_.epochs; ++epoch) {
    double images_per_second = 0;
    double train_loss = train_epoch(epoch, images_per_second);
    double lr = optimizer_->lr();
    if (ema_) ema_->swap(*model_);  // validated, and saved when best, are the averaged weights
    // Without validation images (--val-split 0) the validation columns stay NaN.
    double val_loss = validating ? validate(epoch) : NAN;
    std::vector<double> row = {double(epoch + 1), train_loss, val_loss, lr, images_per_second};
    std::vector<double> values = validating ? task_.metric_values() : std::vector<double>(metrics.size(), NAN);
    row.insert(row.end(), values.begin(), values.end());
    end_epoch(epoch, row, values.at(best_index));
  }
  // A resumed run may never beat the best of the run before. Without validation images the
  // card keeps what the tool's flags gave it (--temperature, --empty-below).
  if (distributed::is_root() && fs::exists(s_.save_path) && validating) task_.after_training(s_, *val_);
  if (s_.keep_last_epoch)
    std::cout << "kept the last epoch (" << s_.epochs << ")" << (validating ? "" : ", no validation images") << ": ";
  else
    std::cout << "best " << task_.best_metric() << " " << best_ << " at epoch " << best_epoch_ << ": ";
  std::cout << s_.save_path << "\n";
  return 0;
}

}  // namespace

int run_training(const TrainSettings& settings, TrainingTask& task, const data::Dataset& dataset,
                 const std::function<void(data::SampleCache&)>& prepare) {
  Trainer trainer(settings, task, dataset);
  return trainer.run(prepare);
}

int run_training(const TrainSettings& settings, TrainingTask& task, std::shared_ptr<data::SampleCache> cache,
                 const data::Split& split) {
  Trainer trainer(settings, task, std::move(cache), split);
  return trainer.run({});
}

}  // namespace sono::app
