// Masked-image pretraining (tools/app/masked_image_model.h, tools/pretrain.cpp): the masking and
// its loss, that the reconstruction is learnt, and that the weights it writes feed
// cls_train / seg_train --pretrained.
#include <random>
#include <set>

#include "autograd/node.h"
#include "helpers.h"
#include "synthetic_blobs.h"
#include "tool_runs.h"
#include "layers/optim.h"
#include "layers/safetensors.h"
#include "models/convnext.h"
#include "models/mit.h"
#include "models/resnet.h"
#include "models/registry.h"
#include "tools/app/masked_image_model.h"
#include "tools/app/training.h"

namespace fs = std::filesystem;
using namespace sono;
using namespace sono::test;

namespace {

test::CommandRun run_pretrain(const std::string& args) {
  return test::run_command(std::string(SONO_BINARY_DIR) + "/bin/pretrain " + args + " --threads 1");
}

// `count` blob scans of side `size` as normalised model input [count, size, size, channels]:
// grey replicated to RGB, and for 4 channels an all-zero mask channel, as the loader makes them.
Tensor blob_images(int count, int size, int64_t channels, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<double> values;
  for (int i = 0; i < count; ++i) {
    data::Image image;
    data::Mask mask;
    test::render_blob(test::draw_blob(i % 3, size, rng), size, rng, image, mask);
    for (float v : image.pixels)
      for (int64_t c = 0; c < channels; ++c)
        values.push_back(c < 3 ? (v - data::kImagenet.mean[c]) / data::kImagenet.std[c] : 0.0);
  }
  return Tensor::from_vector(values, {count, size, size, channels});
}

// One AdamW step on `loss` of `model`: the loss is finite and the weights move.
void check_one_step(nn::Module& model, const std::function<Tensor()>& loss) {
  nn::AdamW optimizer(nn::param_groups_weight_decay(model, 0), nn::AdamOptions{.lr = 1e-3});
  const Tensor before = model.parameters().front().detach().clone();
  Tensor value = loss();
  value.backward();
  optimizer.step();
  CHECK(std::isfinite(value.item()));
  CHECK(max_abs_diff(model.parameters().front(), before) > 0);
}

}  // namespace

TEST_CASE("patchify and cells_to_pixels lay cells out as a 1x1 conv + pixel shuffle would") {
  // 1 image 4x4, 2 channels, cells of 2: cell (0, 1) holds rows 0-1, columns 2-3.
  std::vector<double> values(4 * 4 * 2);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i);
  Tensor patches = app::patchify(Tensor::from_vector(values, {1, 4, 4, 2}), 2);
  REQUIRE(patches.shape() == Shape{1, 2, 2, 8});
  // pixel (y, x, c) is value (y * 4 + x) * 2 + c; cell (0, 1): (0,2) (0,3) (1,2) (1,3).
  check_values(patches.slice(1, 0, 1).slice(2, 1, 2).reshape({8}), {4, 5, 6, 7, 12, 13, 14, 15}, 0);

  Tensor pixels = app::cells_to_pixels(Tensor::from_vector({0, 1, 1, 0}, {1, 2, 2, 1}), 2);
  REQUIRE(pixels.shape() == Shape{1, 4, 4, 1});
  check_values(pixels.reshape({16}), {0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0}, 0);
}

TEST_CASE("draw_masked_cells masks round(ratio * cells) cells of every image, at least one, not all") {
  Generator gen(3);
  Tensor cells = app::draw_masked_cells(5, 4, 0.6, gen);
  REQUIRE(cells.shape() == Shape{5, 4, 4, 1});
  Tensor per_image = sum(cells, {1, 2, 3});
  check_values(per_image, {10, 10, 10, 10, 10}, 0);  // round(0.6 * 16)
  CHECK(max_abs_diff(cells.slice(0, 0, 1), cells.slice(0, 1, 2)) == 1.0);  // images differ
  check_values(sum(app::draw_masked_cells(2, 2, 0.01, gen), {1, 2, 3}), {1, 1}, 0);
  check_values(sum(app::draw_masked_cells(2, 2, 0.99, gen), {1, 2, 3}), {3, 3}, 0);  // one cell stays visible
  CHECK_THROWS_WITH_AS(app::draw_masked_cells(1, 2, 1.0, gen), doctest::Contains("between 0 and 1"), Error);
  CHECK_THROWS_WITH_AS(app::draw_masked_cells(1, 1, 0.5, gen), doctest::Contains("at least 2 cells"), Error);
}

TEST_CASE("masked_l1 counts the masked cells only") {
  Tensor target = rand64({2, 2, 2, 6}, 1);
  Tensor cells = Tensor::from_vector({1, 0, 0, 1, 0, 0, 1, 0}, {2, 2, 2, 1}, DType::f64);
  Tensor unmasked = Tensor::from_vector({0, 1, 1, 0, 1, 1, 0, 1}, {2, 2, 2, 1}, DType::f64);
  // Right on the masked cells, anything elsewhere: no loss.
  Tensor right_where_masked = add(target, mul(rand64({2, 2, 2, 6}, 2, 10.0), unmasked));
  CHECK(app::masked_l1(right_where_masked, target, cells).item() == 0.0);
  // Off by 0.25 on the masked cells and by 10 elsewhere: the loss is 0.25.
  Tensor off = add(target, add(mul(cells, 0.25), mul(unmasked, 10.0)));
  CHECK(app::masked_l1(off, target, cells).item() == doctest::Approx(0.25).epsilon(1e-12));
}

TEST_CASE("gradcheck: masked_l1 of patchify'd targets (float64)") {
  Tensor cells = Tensor::from_vector({1, 0, 1, 1}, {1, 2, 2, 1}, DType::f64);
  Tensor images = rand64({1, 4, 4, 3}, 5);
  expect_gradcheck(
      [&](const std::vector<Tensor>& in) { return app::masked_l1(in[0], app::patchify(in[1], 2), cells); },
      {rand64({1, 2, 2, 12}, 4), images});
  expect_gradcheck([&](const std::vector<Tensor>& in) { return sum(mul(app::patchify(in[0], 2), in[0].reshape({1, 2, 2, 12}))); },
                   {images});
}

TEST_CASE("the masked input hides the masked cells: their pixels do not reach the prediction's loss") {
  app::MaskedImageModel model("convnext_atto", 0);
  model.eval();
  Tensor images = blob_images(1, 64, 4, 1);
  Tensor cells = Tensor::from_vector({1, 0, 0, 0}, {1, 2, 2, 1});
  // Changing a masked cell's pixels changes the target, not the input: the prediction of
  // every cell stays.
  Tensor changed = add(images, mul(app::cells_to_pixels(cells, 32), 0.5));
  Tensor kept = add(neg(app::cells_to_pixels(cells, 32)), 1.0);
  CHECK(max_abs_diff(model.predict(mul(images, kept)), model.predict(mul(changed, kept))) == 0.0);
  CHECK(model.loss(images, cells).item() != model.loss(changed, cells).item());
}

TEST_CASE("masked-image pretraining learns the reconstruction: the loss falls on a tiny set") {
  manual_seed(0);
  app::MaskedImageModel model("convnext_atto", 0);
  Tensor images = blob_images(2, 64, 4, 7);
  // Scored on fixed masks (each diagonal of the 2x2 cells in turn): the training steps draw
  // other cells each time, whose pixels are harder or easier to guess.
  const Tensor diagonal = Tensor::from_vector({1, 0, 0, 1, 1, 0, 0, 1}, {2, 2, 2, 1});
  auto held_out_loss = [&] {
    autograd::NoGradGuard no_grad;
    return (model.loss(images, diagonal).item() + model.loss(images, add(neg(diagonal), 1.0)).item()) / 2;
  };
  const double before = held_out_loss();
  nn::AdamW optimizer(nn::param_groups_weight_decay(model, 0.05), nn::AdamOptions{.lr = 1e-3, .weight_decay = 0.05});
  Generator masks(11);
  for (int step = 0; step < 25; ++step) {
    optimizer.zero_grad();
    model.loss(images, app::draw_masked_cells(2, 2, 0.5, masks)).backward();
    optimizer.step();
  }
  const double after = held_out_loss();
  MESSAGE("masked L1 on fixed masks: " << before << " before, " << after << " after 25 steps");
  CHECK(after < 0.7 * before);  // measured 0.548 -> 0.319; the speckle alone leaves ~0.2
}

// pretrain on `images`, then the file into the tool's model through load_backbone, then the
// tool itself with --pretrained.
struct Chain {
  std::string arch, tool;
  models::ModelOptions options;  // the tool's model
  std::string encoder_prefix;    // where the encoder's keys sit in the tool's model
  models::PretrainedLayout layout;
};

void check_chain(const Chain& c, const TempDir& dir) {
  INFO(c.arch << " -> " << c.tool);
  const std::string images = (dir / "images").string(), masks = (dir / "masks").string();
  const std::string enc = (dir / (c.arch + ".safetensors")).string();
  // The smallest sizes: pretraining needs two cells a side (one stays visible), training one.
  test::CommandRun pre = run_pretrain("--images-dir " + images + " --arch " + c.arch + " --save-path " + enc +
                                      " --img-size 64 --epochs 1 --batch-size 4 --workers 1");
  INFO(pre.output);
  REQUIRE(pre.status == 0);
  const nn::StateDict saved = nn::load_safetensors(enc).tensors;

  // The file holds exactly the encoder: every key of the tool's model under the prefix but the
  // classifier, at the model's shape (the classifier's stem takes RGB + mask).
  const models::Task task = c.tool == "seg_train" ? models::Task::segmentation : models::Task::classification;
  auto model = models::create_model(c.arch, c.options, task);
  std::set<std::string> encoder_keys, file_keys;
  for (auto& [name, t] : model->state_dict()) {
    const std::string key = name.substr(std::min(name.size(), c.encoder_prefix.size()));
    const auto& head = c.layout.classifier;
    if (name.rfind(c.encoder_prefix, 0) == 0 && std::find(head.begin(), head.end(), key) == head.end())
      encoder_keys.insert(key);
  }
  for (auto& [name, t] : saved) file_keys.insert(name);
  CHECK(file_keys == encoder_keys);
  CHECK(saved.at(c.layout.input_conv).size(1) == c.options.in_channels);
  models::load_backbone(*model, models::find_model(c.arch, task), enc);
  const nn::StateDict loaded = model->state_dict();
  for (auto& [name, t] : saved) {
    INFO(name);
    CHECK(max_abs_diff(loaded.at(c.encoder_prefix + name), t) == 0.0);
  }
  Tensor inputs = blob_images(2, 32, c.options.in_channels, 3);
  check_one_step(*model, [&] { return mean(abs((*model)(inputs))); });

  test::CommandRun run = test::run_command(std::string(SONO_BINARY_DIR) + "/bin/" + c.tool + " --images-dir " + images +
                                           " --masks-dir " + masks + " --arch " + c.arch + " --pretrained " + enc +
                                           " --save-path " + (dir / (c.tool + ".safetensors")).string() +
                                           " --img-size 32 --epochs 1 --batch-size 4 --workers 1 --threads 1");
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(run.output.find("backbone weights: " + enc) != std::string::npos);
}

TEST_CASE("pretrain's weights load through --pretrained of cls_train (convnext) and seg_train (mit, resnet)") {
  TempDir dir;
  test::write_blob_dataset(dir.path, 3, 32, 5);
  check_chain({"convnext_atto", "cls_train", models::ModelOptions{.in_channels = 4, .num_classes = 3}, "",
               models::convnext_pretrained_layout()},
              dir);
  check_chain({"mit_b0", "seg_train", models::ModelOptions{.in_channels = 3, .num_classes = 1}, "encoder.",
               models::mit_pretrained_layout()},
              dir);
  check_chain({"resnet18", "seg_train", models::ModelOptions{.in_channels = 3, .num_classes = 1}, "encoder.",
               models::resnet_pretrained_layout()},
              dir);
}

TEST_CASE("pretrain refuses bad input with one line and writes nothing") {
  TempDir dir;
  test::write_blob_dataset(dir.path, 1, 32, 5);
  const std::string images = " --images-dir " + (dir / "images").string();
  const std::string save = " --save-path " + (dir / "enc.safetensors").string();
  const std::pair<std::string, std::string> cases[] = {
      {" --images-dir " + (dir / "missing").string() + save, "missing' does not exist"},
      {images + save + " --arch resnet20", "unknown architecture 'resnet20'"},
      {images + save + " --mask-ratio 0", "--mask-ratio 0: must be between 0 and 1"},
      {images + save + " --mask-ratio 1.5", "--mask-ratio 1.5: must be between 0 and 1"},
      {images + " --save-path " + (dir / "no" / "enc.safetensors").string(), "cannot be written"},
      {images + save + " --img-size 48", "--img-size 48: must be a multiple of 32 from 64"},
      {images + save + " --img-size 32", "--img-size 32: must be a multiple of 32 from 64"},
  };
  for (auto& [args, message] : cases) {
    test::CommandRun r = run_pretrain(args + " --epochs 1");
    INFO(args << "\n" << r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("pretrain: error: ") == 0);
    CHECK(r.output.find(message) != std::string::npos);
    CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
    CHECK(!fs::exists(dir / "enc.safetensors"));
  }
}
