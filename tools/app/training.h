#pragma once
// The training loop seg_train and cls_train share: data scan, duplicate-aware split, model
// (optionally from pretrained backbone weights), AdamW with warmup + cosine, per-epoch
// validation, the kept checkpoint (best or last epoch) and resumable state written atomically,
// CSV + SVG log.
// What differs between the two tools is a TrainingTask.
#include <array>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "layers/module.h"
#include "models/registry.h"
#include "tensor/tensor.h"
#include "tools/app/cli.h"
#include "tools/app/recipe.h"
#include "tools/data/cache.h"
#include "tools/data/loader.h"
#include "tools/data/mixup.h"
#include "tools/data/model_input.h"
#include "tools/data/split.h"

namespace sono::app {

// What every training tool (seg_train, cls_train, pretrain) reads and checks alike.
struct RunSettings {
  std::string images_dir, save_path, arch, log_dir;
  int64_t epochs = 30, batch_size = 4, img_size = 256, workers = 2;
  uint64_t seed = 0;
  double weight_decay = 1e-2, drop_path = 0;
  Device device = Device::cpu;
  std::optional<models::Task> task;  // the tool's, set before reading: --arch is a model for it
};
// Reads the flags of RunSettings but --threads and --device (apply_runtime_options, last) and
// checks them: a known --arch (for the task), --epochs and --batch-size at least 1, --workers, --weight-decay,
// --drop-path, --log-dir and --save-path writable. --img-size's range is each tool's.
void read_run_settings(const Cli& cli, RunSettings& s);

struct TrainSettings : RunSettings {
  std::string masks_dir, pretrained, resume;
  std::string hold_out;  // --hold-out: a file of image names kept out of training and validation
  double lr = 1e-3, val_split = 0.2, warmup_epochs = 1, clip_grad = 0;
  bool augment = true, resume_anyway = false;
  // --checkpoint last: --save-path holds the last epoch's weights, not the best validated ones.
  bool keep_last_epoch = false;
  // Whether the run validates (a split or --folds) and so can pick an epoch and fit calibration.
  bool has_validation() const { return val_split > 0 || recipe_options.folds > 0; }
  RecipeOptions recipe_options;  // augmentation, sampling, EMA, TTA, folds (recipe.h)
  // A tool's own flags that shape what it trains ("--label-smoothing" -> "0.1"): a resumed run
  // must share them as it shares the common ones.
  std::map<std::string, std::string> tool_arguments;
  // What a tool's checkpoints tell predict beyond the common card (cls_train: "lesion_view").
  std::map<std::string, std::string> card_extra;
  data::MixOptions mix;       // cls_train's --mixup and --cutmix
  int64_t encoder_depth = 5;  // seg_train's --encoder-depth
  std::array<int64_t, 3> atrous_rates = models::kSmpAtrousRates;  // seg_train's --atrous-rates
  std::vector<int64_t> decoder_channels;  // seg_train's --decoder-channels (U-Net)
  // The size the samples are decoded at, when `prepare` (run_training) makes them img_size
  // itself (SampleCache::reframe); 0: img_size.
  int64_t decode_size = 0;
};
// The cache the samples of a run are decoded into before `prepare`.
std::shared_ptr<data::SampleCache> decode_samples(const TrainSettings& s, const data::Dataset& dataset);
// Throws unless `prepare` left the samples at the training size.
void check_prepared(const TrainSettings& s, const data::SampleCache& cache);
// A number as run arguments record it (0.1 and 0.10 alike).
std::string run_argument_number(double x);

// Per-tool defaults of the shared flags.
struct TrainDefaults {
  std::string arch;
  int64_t batch_size;
  double weight_decay;
  double drop_path;
};

void add_training_options(Cli& cli, const TrainDefaults& defaults);
// Reads and checks the shared flags (and applies --threads): ranges, --img-size a multiple
// of 32, the save path writable. --lr, --warmup-epochs and --clip-grad not given take the
// architecture's defaults (default_recipe); a warmup not shorter than --epochs is cut to half
// the run. Prints the effective values and where they came from.
TrainSettings read_training_options(const Cli& cli, models::Task task);

// From-scratch defaults per architecture family. MiT: AdamW lr 2e-4 (the top of SegFormer's
// 6e-5..2e-4) and the gradient norm clipped to 1, since MiT-B2 at lr 1e-3 unclipped diverged
// at epoch 7 on BUSI (shared/measurements/h200-2026-12-04/train_22epochs.log). ConvNeXt: timm's
// lr 4e-3 at batch 4096 scaled by sqrt(batch / 4096) (2.5e-4 at batch 16), no clipping as in
// timm. ResNet: lr 1e-3 unclipped, what the shipped ResNet-18 classifier and the 5-fold ResNet
// rows of models/weights/README.md were trained with. Warmup 2 epochs for all.
struct Recipe {
  std::string family;  // "mit", "convnext", "resnet"
  double lr, warmup_epochs, clip_grad;
};
Recipe default_recipe(const std::string& arch, int64_t batch_size);

// The task-specific part of training: loss and validation metrics (higher is better).
class TrainingTask {
 public:
  virtual ~TrainingTask() = default;
  virtual models::Task task() const = 0;
  virtual data::InputKind input() const = 0;
  virtual std::vector<std::string> class_names(const data::Dataset& dataset) const = 0;
  // The mean loss of a batch (its tensors on the model's device).
  virtual Tensor loss(const Tensor& logits, const data::Batch& batch) const = 0;

  virtual void reset_metrics() = 0;
  virtual void add_metrics(const Tensor& logits, const data::Batch& batch) = 0;
  virtual std::vector<std::string> metric_columns() const = 0;  // e.g. {"val_dice", ...}
  virtual std::vector<double> metric_values() const = 0;
  virtual std::string best_metric() const = 0;  // the column that picks the checkpoint
  virtual std::string report() const { return ""; }  // printed after each validation

  // Once training is done: fit on the kept checkpoint's validation outputs what its card
  // should carry (cls: the temperature; seg: the empty-image threshold), and rewrite it.
  virtual void after_training(const TrainSettings&, data::Loader& /*val*/) {}
  // Cross-validation: each fold's validation outputs (calibrated as the card says, and as the
  // model gave them), pooled over the folds, and the figures drawn from them into the log folder.
  virtual void add_out_of_fold(const Tensor& /*logits*/, const Tensor& /*uncalibrated*/,
                               const data::Batch& /*batch*/) {}
  virtual void write_out_of_fold(const std::string& /*log_dir*/, const data::Dataset& /*dataset*/) const {}
};

// Everything after the dataset scan. `prepare` may change the cached samples before
// training (cls_train --seg-model puts predicted masks there). Returns the exit status.
int run_training(const TrainSettings& settings, TrainingTask& task, const data::Dataset& dataset,
                 const std::function<void(data::SampleCache&)>& prepare = {});
// The same on prepared samples and a given split (a cross-validation fold).
int run_training(const TrainSettings& settings, TrainingTask& task, std::shared_ptr<data::SampleCache> cache,
                 const data::Split& split);

// --lesion-view C (cls_train, seg_train): train on the window around each mask's lesion
// (data::lesion_window, its box grown by C times its side) instead of the whole scan; 0: off.
// Checked, put on the card (what predict crops by), and the samples decoded large enough that
// the smallest window still has --img-size pixels. Returns C.
double read_lesion_view(const Cli& cli, TrainSettings& settings);
// The cached samples cropped to the windows around their masks' lesions at --img-size (left as
// they are when `context` is 0).
void frame_lesions(data::SampleCache& cache, const TrainSettings& settings, double context);

// --warmup-epochs as the schedule can take it: one not shorter than the run is cut to half the
// run, with a note saying so.
double warmup_within_run(double warmup_epochs, int64_t epochs);
// "X.safetensors" -> "X.last.safetensors": the state --resume continues from.
std::string resume_state_path(const std::string& save_path);
// --pretrained: backbone weights (timm, smp, torchvision, `pretrain`'s output), or for a classifier
// a seg_train checkpoint of the same ResNet, whose encoder is the classifier's trunk: the
// classifier then starts from features learnt segmenting lesions on the same images; for a
// segmenter a seg_train checkpoint of the same architecture, the whole model (fine-tuning).
void load_backbone_weights(nn::Module& model, const models::ModelEntry& entry, const std::string& path);
// The --pretrained file, or with {fold} in its name each fold's (fold_path), as --folds K runs use them.
std::vector<std::string> pretrained_files(const TrainSettings& s);

}  // namespace sono::app
