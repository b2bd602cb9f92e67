// pretrain: self-supervised pretraining of an encoder on a folder of images by masked-image
// modelling (SimMIM, tools/app/masked_image_model.h), for `cls_train --pretrained` (convnext_*,
// resnet*) or `seg_train --pretrained` (mit_*, resnet*) where no ImageNet weights can be had.
// Reads the images only: masks and classes are ignored, so pretraining on images later used for
// validation leaks none of their labels.
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>

#include "layers/optim.h"
#include "layers/safetensors.h"
#include "models/registry.h"
#include "models/resnet.h"
#include "tensor/ops.h"
#include "tools/app/checkpoint.h"
#include "tools/app/masked_image_model.h"
#include "tools/app/runtime.h"
#include "tools/app/training.h"
#include "tools/data/dataset.h"
#include "tools/data/loader.h"
#include "tools/data/progress.h"
#include "tools/data/training_log.h"

namespace {

using namespace sono;
namespace fs = std::filesystem;

struct Settings : app::RunSettings {
  std::string augment;
  double lr = 0, warmup_epochs = 0, clip_grad = 0, mask_ratio = 0;
};

void add_options(app::Cli& cli) {
  cli.option("images-dir", "", "images: flat folder, CLASS/ subfolders, or BUSI's Dataset_BUSI_with_GT"
                               " (masks and classes are not read)", true)
      .option("save-path", "", "encoder weights (.safetensors) for cls_train / seg_train --pretrained;"
                               " rewritten after every epoch", true)
      .option("arch", "convnext_atto", "encoder: convnext_* (for cls_train), mit_* (for seg_train) or resnet* (for"
                                       " either: smp's encoder, whose stem cls_train widens to RGB + mask)")
      .option("mask-ratio", "0.6", "fraction of the 32x32 cells of each image blanked and reconstructed")
      .option("epochs", "100", "training epochs")
      .option("batch-size", "16", "images per training step")
      .option("img-size", "256", "training side in pixels, a multiple of 32 from 64")
      .option("lr", "5e-4", "peak learning rate (AdamW, linear warmup then cosine decay to lr / 100)")
      .option("warmup-epochs", "5", "epochs of linear warmup; one not shorter than --epochs is cut to half the run")
      .option("weight-decay", "0.05", "AdamW weight decay (not on biases and norms)")
      .option("clip-grad", "3", "clip the global gradient norm to this, 0: off")
      .option("drop-path", "0", "stochastic depth rate")
      .option("augment", "ultrasound", "augmentation: standard (flips, rotations, affine, brightness/contrast) or"
                                       " ultrasound (also gamma, speckle noise and random zoomed crops)")
      .flag("no-augment", "train without augmentation")
      .option("log-dir", "", "folder for the per-epoch CSV and the loss-curve SVG")
      .option("seed", "0", "seed of the initialisation, masks, augmentation and shuffling")
      .option("workers", "2", "threads preparing batches");
  app::add_runtime_options(cli);
}

Settings read_options(const app::Cli& cli) {
  Settings s;
  // resnet* names both smp's segmentation model and timm's classifier; what is pretrained is
  // smp's encoder (the classifier's trunk has the same weights).
  if (models::is_resnet(cli.str("arch"))) s.task = models::Task::segmentation;
  app::read_run_settings(cli, s);
  s.augment = cli.is_set("no-augment") ? "none" : cli.str("augment");
  s.lr = cli.real("lr");
  s.warmup_epochs = cli.real("warmup-epochs");
  s.clip_grad = cli.real("clip-grad");
  s.mask_ratio = cli.real("mask-ratio");
  SONO_CHECK(s.mask_ratio > 0 && s.mask_ratio < 1, "--mask-ratio ", cli.str("mask-ratio"),
             ": must be between 0 and 1 (exclusive)");
  SONO_CHECK(s.augment == "none" || s.augment == "standard" || s.augment == "ultrasound", "--augment ", s.augment,
             ": expected standard or ultrasound");
  SONO_CHECK(s.img_size >= 2 * app::kMaskCell && s.img_size <= app::kMaxImgSize && s.img_size % app::kMaskCell == 0,
             "--img-size ", s.img_size, ": must be a multiple of 32 from 64 to ", app::kMaxImgSize,
             " (the masked cells are 32x32, and some must stay visible)");
  SONO_CHECK(s.lr > 0, "--lr ", cli.str("lr"), ": must be positive");
  SONO_CHECK(s.warmup_epochs >= 0, "--warmup-epochs ", cli.str("warmup-epochs"), ": must be 0 or more");
  SONO_CHECK(s.clip_grad >= 0, "--clip-grad ", cli.str("clip-grad"), ": must be 0 (off) or more");
  s.device = app::apply_training_runtime_options(cli);
  return s;
}

// The learning rate of each step: linear warmup, then cosine decay to lr / 100.
nn::CosineWarmupSchedule schedule(const Settings& s, int64_t steps_per_epoch) {
  const double warmup_epochs = app::warmup_within_run(s.warmup_epochs, s.epochs);
  const int64_t total = s.epochs * steps_per_epoch;
  return {s.lr, std::min(std::lround(warmup_epochs * steps_per_epoch), total - 1), total, s.lr * 1e-2};
}

// The images at training size, with every mask left empty: no label reaches pretraining (the
// ultrasound chain's lesion crop then zooms anywhere, and the classifier's mask channel is 0).
std::shared_ptr<data::SampleCache> load_images(const Settings& s) {
  data::Dataset dataset = data::scan_dataset(s.images_dir, {}, {.masks_required = false, .check_sizes = false});
  for (data::Sample& sample : dataset.samples) sample.masks.clear();
  std::cout << dataset.summary() << " (images only)\n";
  return std::make_shared<data::SampleCache>(std::move(dataset), static_cast<int>(s.img_size));
}

data::LoaderOptions loader_options(const Settings& s, data::InputKind input) {
  data::LoaderOptions o;
  o.batch_size = s.batch_size;
  o.input = input;
  o.augment = s.augment != "none";
  o.augmentation = s.augment == "ultrasound" ? data::AugmentOptions::ultrasound() : data::AugmentOptions{};
  o.workers = static_cast<int>(s.workers);
  o.seed = s.seed;
  return o;
}

// What the weights file says about itself; --pretrained reads the tensors only.
std::map<std::string, std::string> metadata(const Settings& s, const data::SampleCache& cache, int epochs_done,
                                            double loss) {
  return {{"pretraining", "masked-image modelling (SimMIM: L1 on 32x32 cells)"},
          {"arch", s.arch},
          {"img_size", std::to_string(s.img_size)},
          {"mask_ratio", app::run_argument_number(s.mask_ratio)},
          {"epochs", std::to_string(epochs_done)},
          {"train_loss", app::run_argument_number(loss)},
          {"trained_on", cache.dataset().summary()}};
}

class Pretrainer {
 public:
  explicit Pretrainer(const Settings& s)
      : s_(s), masks_(s.seed ^ 0x6d61736b63656c6cull), log_({"epoch", "train_loss", "lr", "train_images_per_s"}) {}

  int run() {
    cache_ = load_images(s_);
    manual_seed(s_.seed);
    model_ = std::make_unique<app::MaskedImageModel>(s_.arch, s_.drop_path);
    model_->to(s_.device);
    std::vector<size_t> all(cache_->count());
    std::iota(all.begin(), all.end(), size_t{0});
    loader_ = std::make_unique<data::Loader>(cache_, all, loader_options(s_, model_->input()));
    optimizer_ = std::make_unique<nn::AdamW>(nn::param_groups_weight_decay(*model_, s_.weight_decay),
                                             nn::AdamOptions{.lr = s_.lr, .weight_decay = s_.weight_decay});
    schedule_ = schedule(s_, static_cast<int64_t>(loader_->batches_per_epoch()));
    std::cout << "model: " << s_.arch << " encoder + SimMIM decoder, " << model_->num_parameters()
              << " parameters, mask ratio " << s_.mask_ratio << ", on " << device_name(s_.device) << "\n";
    for (int epoch = 0; epoch < s_.epochs; ++epoch) end_epoch(epoch, train_epoch(epoch));
    std::cout << "encoder weights: " << s_.save_path << " (for --pretrained)\n";
    return 0;
  }

 private:
  struct EpochResult {
    double loss, images_per_second;
  };

  EpochResult train_epoch(int epoch) {
    model_->train();
    loader_->start_epoch(epoch);
    std::ostringstream title;
    title << "epoch " << epoch + 1 << "/" << s_.epochs << " pretrain";
    data::Progress bar(title.str(), loader_->size());
    const std::vector<Tensor> params = model_->parameters();
    while (auto batch = loader_->next()) {
      optimizer_->set_lr(schedule_(optimizer_->steps()));
      const Tensor images = batch->images.to(s_.device);
      const Tensor cells = app::draw_masked_cells(images.size(0), s_.img_size / app::kMaskCell, s_.mask_ratio, masks_);
      optimizer_->zero_grad();
      Tensor loss = model_->loss(images, cells);
      loss.backward();
      if (s_.clip_grad > 0) nn::clip_grad_norm(params, s_.clip_grad);
      optimizer_->step();
      const double value = loss.item();
      SONO_CHECK(std::isfinite(value), "pretraining diverged at epoch ", epoch + 1, " (loss ", value,
                 "); lower --lr or --clip-grad");
      bar.step(batch->samples.size(), value);
    }
    std::ostringstream lr;
    lr << "lr " << std::setprecision(3) << optimizer_->lr();
    bar.finish(lr.str());
    return {bar.mean_loss(), bar.images_per_second()};
  }

  // The log and the weights after every epoch: a stopped run leaves its last epoch's encoder.
  void end_epoch(int epoch, const EpochResult& result) {
    log_.add({double(epoch + 1), result.loss, optimizer_->lr(), result.images_per_second});
    if (!s_.log_dir.empty()) {
      fs::create_directories(s_.log_dir);
      log_.write_csv(fs::path(s_.log_dir) / "pretrain_log.csv");
      log_.write_svg(fs::path(s_.log_dir) / "pretrain_curves.svg", "pretraining " + s_.arch, {"train_loss"}, {"lr"});
    }
    nn::save_safetensors(s_.save_path, model_->encoder_state(), metadata(s_, *cache_, epoch + 1, result.loss));
  }

  const Settings& s_;
  Generator masks_;
  data::TrainingLog log_;
  std::unique_ptr<app::MaskedImageModel> model_;
  std::shared_ptr<data::SampleCache> cache_;
  std::unique_ptr<data::Loader> loader_;
  std::unique_ptr<nn::AdamW> optimizer_;
  nn::CosineWarmupSchedule schedule_{};
};

int pretrain(int argc, char** argv) {
  app::Cli cli("pretrain",
               "Self-supervised pretraining of an encoder by masked-image modelling (SimMIM) on a folder of images;\n"
               "the weights feed cls_train --pretrained (convnext_*, resnet*) or seg_train --pretrained (mit_*, resnet*).\n"
               "  pretrain --images-dir DATA --arch convnext_atto --save-path enc.safetensors\n"
               "  cls_train --images-dir DATA --arch convnext_atto --pretrained enc.safetensors --save-path cls.safetensors");
  add_options(cli);
  if (!cli.parse(argc, argv)) return 0;
  const Settings settings = read_options(cli);
  return Pretrainer(settings).run();
}

}  // namespace

int main(int argc, char** argv) {
  return sono::app::run_tool("pretrain", [&] { return pretrain(argc, argv); });
}
