// model_info: what a model or a checkpoint is.
//   model_info --arch mit_b2 --in-channels 3 --classes 1   parameter count and the first keys
//   model_info --checkpoint X.safetensors                   its card (arch, classes, size, ...)
//   model_info --checkpoint X --export-f16 Y                the model weights as F16, for shipping
#include <iostream>

#include "layers/safetensors.h"
#include "models/registry.h"
#include "tools/app/checkpoint.h"
#include "tools/app/runtime.h"

namespace {

using namespace sono;

// Far above any image's channels; without a bound --in-channels 100000 built 67M parameters.
constexpr int64_t kMaxInChannels = 64;

void describe_arch(const app::Cli& cli) {
  models::ModelOptions options;
  options.in_channels = cli.integer("in-channels");
  options.num_classes = cli.integer("classes");
  SONO_CHECK(options.in_channels >= 1 && options.in_channels <= kMaxInChannels, "--in-channels ",
             options.in_channels, ": must be from 1 to ", kMaxInChannels);
  SONO_CHECK(options.num_classes >= 1 && options.num_classes <= app::kMaxClasses, "--classes ", options.num_classes,
             ": must be from 1 to ", app::kMaxClasses);
  auto model = models::create_model(cli.str("arch"), options, models::task_from_flag(cli.str("task")));
  std::cout << cli.str("arch") << " (" << options.in_channels << " in, " << options.num_classes
            << " out): " << model->num_parameters() << " parameters, " << model->named_parameters().size()
            << " parameter tensors, " << model->named_buffers().size() << " buffers\n";
}

void describe_checkpoint(const std::string& path, const std::string& export_path) {
  if (!export_path.empty()) {
    app::check_writable(export_path);
    // Exporting over its own input (say X.last.safetensors) would destroy the resume state.
    app::check_outputs({{path, "--checkpoint"}}, {{export_path, "--export-f16"}}, true);
  }
  app::LoadedModel loaded = app::load_checkpoint(path);
  for (auto& [k, v] : loaded.card.to_metadata())
    if (k != "history") std::cout << k << ": " << v << "\n";
  std::cout << "parameters: " << loaded.model->num_parameters() << "\n";
  if (export_path.empty()) return;
  nn::save_safetensors(export_path, loaded.model->state_dict(), loaded.card.to_metadata(), true);
  std::cout << "wrote " << export_path << " (float32 weights stored as F16)\n";
}

int model_info(int argc, char** argv) {
  app::Cli cli("model_info", "Parameter count of an architecture, or the card of a checkpoint.");
  cli.option("arch", "", "registry name (mit_b0..mit_b5, resnet18..resnet152, convnext_atto..convnext_large)")
      .option("task", "", "segmentation or classification, for a name that is both (resnet18: smp's or timm's)")
      .option("in-channels", "3", "input channels for --arch")
      .option("classes", "1", "outputs for --arch")
      .option("checkpoint", "", "a seg_train / cls_train checkpoint")
      .option("export-f16", "", "with --checkpoint: write its model weights and card with F16 storage");
  app::add_runtime_options(cli);
  if (!cli.parse(argc, argv)) return 0;
  app::apply_runtime_options(cli);
  SONO_CHECK(cli.is_set("arch") != cli.is_set("checkpoint"), "give one of --arch or --checkpoint (see --help)");
  if (cli.is_set("arch"))
    describe_arch(cli);
  else
    describe_checkpoint(cli.str("checkpoint"), cli.str("export-f16"));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return sono::app::run_tool("model_info", [&] { return model_info(argc, argv); });
}
