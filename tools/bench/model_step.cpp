#include "tools/bench/model_step.h"

#include <chrono>

#include "autograd/node.h"
#include "tensor/ops.h"

namespace sono::bench {

namespace {

using Clock = std::chrono::steady_clock;

// Seconds since `since`, once the device has done the work queued so far.
double elapsed_s(Clock::time_point since, Device device) {
  backend(device).synchronize();
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// What the training tools minimise: BCE + soft Dice for masks, cross-entropy for classes.
Tensor loss_of(models::Task task, const Tensor& logits, const Tensor& target) {
  if (task == models::Task::segmentation)
    return add(bce_with_logits(logits, target), soft_dice_loss(logits, target));
  return cross_entropy(logits, target);
}

}  // namespace

void add_step_options(app::Cli& cli) {
  cli.option("model", "mit_b2", "registry name (mit_b2, convnext_base, ...)")
      .option("task", "", "segmentation or classification (default: the name's; segmentation for resnet18 ..)")
      .option("size", "256", "image side in pixels")
      .option("batch", "1", "batch size")
      .option("mode", "train", "train (forward, loss, backward, optimiser step) or infer")
      .option("in-channels", "", "input channels (default: 3 segmentation, 4 classification)")
      .option("classes", "", "output classes (default: 1 segmentation, 3 classification)")
      .flag("fused", "infer as predict does: BatchNorms folded into convs, ReLUs into their epilogues");
}

StepConfig parse_step_config(const app::Cli& cli, Device device) {
  StepConfig c;
  c.model = cli.str("model");
  c.task = models::task_from_flag(cli.str("task"));
  // A name both tasks use (resnet18) is benchmarked as smp's DeepLabV3+ unless --task says otherwise.
  for (const models::ModelEntry& e : models::all_models())
    if (!c.task && e.name == c.model && e.task == models::Task::segmentation) c.task = e.task;
  const bool segmentation = models::find_model(c.model, c.task).task == models::Task::segmentation;
  c.size = cli.integer("size");
  c.batch = cli.integer("batch");
  // Defaults as the toolkit uses them: RGB masks-out for segmentation, RGB + mask for classes.
  c.in_channels = cli.is_set("in-channels") ? cli.integer("in-channels") : segmentation ? 3 : 4;
  c.classes = cli.is_set("classes") ? cli.integer("classes") : segmentation ? 1 : 3;
  const std::string mode = cli.str("mode");
  SONO_CHECK(mode == "train" || mode == "infer", "--mode is train or infer, got '", mode, "'");
  c.train = mode == "train";
  c.fused = cli.is_set("fused");
  SONO_CHECK(!c.fused || !c.train, "--fused is for --mode infer");
  c.device = device;
  return c;
}

ModelStep::ModelStep(const StepConfig& c)
    : config_(c),
      entry_(models::find_model(c.model, c.task)),
      model_(entry_.build({c.in_channels, c.classes, 0.0})) {
  model_->train(c.train);
  if (c.fused) model_->fuse_for_inference();  // before the move, as load_for_inference does
  model_->to(c.device);
  if (c.fused) model_->freeze_parameters();
  Generator gen(0);
  images_ = randn({c.batch, c.size, c.size, c.in_channels}, gen).to(c.device);
  if (entry_.task == models::Task::segmentation) {
    target_ = gt(rand({c.batch, c.size, c.size, c.classes}, gen), 0.5).to(c.device);
  } else {
    std::vector<int64_t> labels(c.batch);
    for (int64_t i = 0; i < c.batch; ++i) labels[i] = i % c.classes;
    target_ = Tensor::from_labels(labels).to(c.device);
  }
  // One group with decay on every parameter, as torch_bench's AdamW(model.parameters()).
  optimizer_ = std::make_unique<nn::AdamW>(nn::single_group(*model_),
                                           nn::AdamOptions{.lr = 1e-4, .weight_decay = 0.05});
}

const std::vector<std::string>& ModelStep::phases() const {
  static const std::vector<std::string> train_phases{"forward", "backward", "optimizer"};
  static const std::vector<std::string> infer_phases{"forward"};
  return config_.train ? train_phases : infer_phases;
}

std::vector<double> ModelStep::run() {
  const Device device = config_.device;
  auto start = Clock::now();
  if (!config_.train) {
    autograd::NoGradGuard no_grad;
    model_->forward(images_);
    return {elapsed_s(start, device)};
  }
  model_->zero_grad();
  Tensor loss = loss_of(entry_.task, model_->forward(images_), target_);
  const double forward = elapsed_s(start, device);
  start = Clock::now();
  loss.backward();
  const double backward = elapsed_s(start, device);
  start = Clock::now();
  optimizer_->step();
  return {forward, backward, elapsed_s(start, device)};
}

}  // namespace sono::bench
