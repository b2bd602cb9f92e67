#include "tools/app/checkpoint.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <span>
#include <type_traits>
#include <nlohmann/json.hpp>

#include "layers/safetensors.h"
#include "models/deeplabv3plus.h"
#include "tensor/random.h"

namespace sono::app {

using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "sono-checkpoint-1";
// A card that a reader of format 1 would misread: a classifier fed the lesion probability
// (mask_channel), where such a reader, not knowing the key, would feed it the mask. Readers of
// format 1 refuse it by its format instead.
constexpr const char* kFormatLesionProbability = "sono-checkpoint-2";

// The number all of `t` spells (std::stoll / std::stod), or nothing.
template <typename T>
std::optional<T> whole_text_as(const std::string& t) {
  size_t used = 0;
  T v{};
  try {
    if constexpr (std::is_integral_v<T>) v = std::stoll(t, &used);
    else v = std::stod(t, &used);
  } catch (const std::exception&) {
  }
  if (used == 0 || used != t.size()) return std::nullopt;
  return v;
}

// The card's values, read as text from the metadata; every failure names the file and the key.
struct CardReader {
  const std::string& path;
  const std::map<std::string, std::string>& meta;

  const std::string& text(const char* key) const {
    auto it = meta.find(key);
    SONO_CHECK(it != meta.end(), path, ": not a sono checkpoint (metadata has no '", key, "')");
    return it->second;
  }

  template <typename... A>
  [[noreturn]] void bad(const char* key, const A&... why) const {
    const std::string& value = text(key);
    fail(path, ": card key '", key, "' is '", value.size() > 80 ? value.substr(0, 80) + "..." : value, "': ",
         why...);
  }

  int64_t integer(const char* key, int64_t lo, int64_t hi) const {
    const std::optional<int64_t> v = whole_text_as<int64_t>(text(key));
    if (!v || *v < lo || *v > hi) {
      if (lo == hi) bad(key, "expected ", lo);
      bad(key, "expected a whole number from ", lo, " to ", hi);
    }
    return *v;
  }

  // A number the training tools fitted or chose; absent, the tools take their default.
  void optional_real(const char* key, double lo, double hi) const {
    if (!meta.count(key)) return;
    const std::optional<double> v = whole_text_as<double>(text(key));
    if (!v || !(*v >= lo && *v <= hi)) bad(key, "expected a number from ", lo, " to ", hi);
  }

  template <typename T>
  T parsed(const char* key, const char* expected) const {
    try {
      return json::parse(text(key)).get<T>();
    } catch (const json::exception&) {
      bad(key, "expected ", expected);
    }
  }
};

std::vector<std::string> read_classes(const CardReader& r, models::Task task) {
  auto classes = r.parsed<std::vector<std::string>>("classes", "a JSON list of class names");
  if (task == models::Task::segmentation) {
    const std::vector<std::string> lesion{ModelCard::kLesionOutput},
        with_malignancy{ModelCard::kLesionOutput, ModelCard::kMalignancyOutput};
    if (classes != lesion && classes != with_malignancy)
      r.bad("classes", "a segmentation card lists [\"lesion\"] or [\"lesion\", \"malignancy\"]");
    return classes;
  }
  if (classes.size() < 2 || classes.size() > static_cast<size_t>(kMaxClasses))
    r.bad("classes", "a classification card lists 2 to ", kMaxClasses, " classes");
  for (size_t i = 0; i < classes.size(); ++i)
    if (classes[i].empty() || std::find(classes.begin(), classes.begin() + i, classes[i]) != classes.begin() + i)
      r.bad("classes", "class names must be distinct and not empty");
  return classes;
}

// Pixels are 0..1, so a mean outside 0..1 or a tiny std is no normalisation a model was
// trained with (std 1e-3 already maps a pixel to +-1000).
data::Normalisation read_normalisation(const CardReader& r) {
  json norm;
  try {
    norm = json::parse(r.text("normalisation"));
  } catch (const json::exception&) {
    r.bad("normalisation", "not valid JSON");
  }
  data::Normalisation n;
  try {
    n.mean = norm.at("mean").get<std::array<double, 3>>();
    n.std = norm.at("std").get<std::array<double, 3>>();
  } catch (const json::exception&) {
    r.bad("normalisation", "expected {\"mean\": [3 numbers], \"std\": [3 numbers]}");
  }
  for (int c = 0; c < 3; ++c)
    if (!(n.mean[c] >= 0 && n.mean[c] <= 1 && n.std[c] >= 1e-3 && n.std[c] <= 10))
      r.bad("normalisation", "each mean must be in [0, 1] and each std in [0.001, 10]");
  return n;
}

}  // namespace

std::map<std::string, std::string> ModelCard::to_metadata() const {
  std::map<std::string, std::string> m = extra;
  m["format"] = reads_lesion_probability ? kFormatLesionProbability : kFormat;
  m["arch"] = arch;
  m["task"] = models::task_name(task);
  m["classes"] = json(classes).dump();
  m["in_channels"] = std::to_string(in_channels);
  m["num_classes"] = std::to_string(num_classes());
  m["img_size"] = std::to_string(img_size);
  if (reads_lesion_probability) m["mask_channel"] = kLesionProbabilityChannel;
  if (task == models::Task::segmentation) {
    m["encoder_depth"] = std::to_string(encoder_depth);
    if (models::is_unet(arch)) m["decoder_channels"] = decoder_channels_text(decoder_channels);
    else m["atrous_rates"] = atrous_rates_text(atrous_rates);
  }
  m["normalisation"] = json{{"mean", normalisation.mean}, {"std", normalisation.std}}.dump();
  if (stacking) m["stacking"] = stacking_text(*stacking, classes);
  return m;
}

std::optional<data::Stacking> parse_stacking(const std::string& text, const std::vector<std::string>& class_names) {
  const size_t classes = class_names.size();
  data::Stacking s;
  try {
    const json j = json::parse(text);
    if (j.at("classes") != json(class_names) || j.at("scores") != json::array({ModelCard::kMalignancyOutput}))
      return std::nullopt;
    s.weights = j.at("weights").get<data::Rows>();
    s.bias = j.at("bias").get<std::vector<double>>();
  } catch (const json::exception&) {
    return std::nullopt;
  }
  // Far beyond any fit's: the inputs are log-probabilities and logits of at most ~14.
  auto sane = [](double v) { return std::isfinite(v) && std::abs(v) <= 1e4; };
  if (s.bias.size() != classes || s.weights.size() != classes) return std::nullopt;
  for (const std::vector<double>& row : s.weights)
    if (row.size() != classes + 1 || !std::all_of(row.begin(), row.end(), sane)) return std::nullopt;
  if (!std::all_of(s.bias.begin(), s.bias.end(), sane)) return std::nullopt;
  return s;
}

std::string stacking_text(const data::Stacking& stacking, const std::vector<std::string>& classes) {
  return json{{"classes", classes},
              {"scores", json::array({ModelCard::kMalignancyOutput})},
              {"weights", stacking.weights},
              {"bias", stacking.bias}}
      .dump();
}

namespace {

// "a,b,c": exactly `count` whole numbers from lo to hi, or nothing.
std::optional<std::vector<int64_t>> parse_whole_numbers(const std::string& text, int64_t count, int64_t lo, int64_t hi) {
  std::vector<int64_t> numbers;
  for (size_t start = 0; start <= text.size();) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::optional<int64_t> n = whole_text_as<int64_t>(text.substr(start, end - start));
    if (!n || *n < lo || *n > hi) return std::nullopt;
    numbers.push_back(*n);
    start = end + 1;
  }
  if (static_cast<int64_t>(numbers.size()) != count) return std::nullopt;
  return numbers;
}

std::string whole_numbers_text(std::span<const int64_t> numbers) {
  std::string text;
  for (int64_t n : numbers) text += (text.empty() ? "" : ",") + std::to_string(n);
  return text;
}

}  // namespace

std::optional<std::array<int64_t, 3>> parse_atrous_rates(const std::string& text) {
  const auto rates = parse_whole_numbers(text, 3, 1, 64);
  if (!rates) return std::nullopt;
  return std::array<int64_t, 3>{(*rates)[0], (*rates)[1], (*rates)[2]};
}

std::string atrous_rates_text(const std::array<int64_t, 3>& rates) { return whole_numbers_text(rates); }

std::optional<std::vector<int64_t>> parse_decoder_channels(const std::string& text, int64_t encoder_depth) {
  return parse_whole_numbers(text, encoder_depth, 1, 4096);
}

std::string decoder_channels_text(const std::vector<int64_t>& channels) { return whole_numbers_text(channels); }

int64_t ModelCard::num_classes() const { return static_cast<int64_t>(classes.size()); }

data::InputKind ModelCard::input() const {
  if (task == models::Task::segmentation) return data::InputKind::rgb;
  return reads_lesion_probability ? data::InputKind::rgb_lesion_probability : data::InputKind::rgb_mask;
}

bool ModelCard::has_malignancy_channel() const {
  return task == models::Task::segmentation &&
         std::find(classes.begin(), classes.end(), kMalignancyOutput) != classes.end();
}

ModelCard ModelCard::from_metadata(const std::string& path, const std::map<std::string, std::string>& meta) {
  const CardReader r{path, meta};
  const std::string format = r.text("format");
  if (format != kFormat && format != kFormatLesionProbability)
    r.bad("format", "expected ", kFormat, " or ", kFormatLesionProbability);
  ModelCard c;
  c.arch = r.text("arch");
  const std::optional<models::Task> task = models::task_from_name(r.text("task"));
  if (!task) r.bad("task", "expected segmentation or classification");
  c.task = *task;
  try {
    models::find_model(c.arch, c.task);
  } catch (const Error& e) {
    for (const models::ModelEntry& other : models::all_models())
      if (other.name == c.arch) r.bad("task", c.arch, " is a ", models::task_name(other.task), " architecture");
    r.bad("arch", e.what());
  }
  c.classes = read_classes(r, c.task);
  if (meta.count("mask_channel")) {
    if (c.task != models::Task::classification) r.bad("mask_channel", "a segmentation card reads no mask");
    if (r.text("mask_channel") != kLesionProbabilityChannel) r.bad("mask_channel", "expected ", kLesionProbabilityChannel);
    if (meta.count("lesion_view")) r.bad("mask_channel", "a lesion probability channel has no lesion_view window");
    if (format != kFormatLesionProbability) r.bad("mask_channel", "needs format ", kFormatLesionProbability);
    c.reads_lesion_probability = true;
  }
  const int64_t channels = data::input_channels(c.input());
  c.in_channels = r.integer("in_channels", channels, channels);
  r.integer("num_classes", c.num_classes(), c.num_classes());  // must agree with the classes listed
  c.img_size = r.integer("img_size", 32, kMaxImgSize);
  if (c.img_size % 32) r.bad("img_size", "expected a multiple of 32 (the encoders downsample 32x)");
  if (meta.count("encoder_depth")) {
    if (c.task != models::Task::segmentation) r.bad("encoder_depth", "a classification card has no encoder depth");
    c.encoder_depth = r.integer("encoder_depth", 3, 5);
    if (c.encoder_depth != 5 && !models::encoder_can_stop_early(c.arch))
      r.bad("encoder_depth", c.arch, " is built whole (depth 5); only a ResNet encoder stops early");
  }
  if (meta.count("atrous_rates")) {
    if (c.task != models::Task::segmentation) r.bad("atrous_rates", "a classification card has no ASPP");
    const auto rates = parse_atrous_rates(r.text("atrous_rates"));
    if (!rates) r.bad("atrous_rates", kAtrousRatesExpected);
    c.atrous_rates = *rates;
  }
  if (models::is_unet(c.arch)) {
    const auto channels = parse_decoder_channels(r.text("decoder_channels"), c.encoder_depth);
    if (!channels) r.bad("decoder_channels", kDecoderChannelsExpected);
    c.decoder_channels = *channels;
  }
  c.normalisation = read_normalisation(r);
  r.optional_real("temperature", 0.01, 100);  // fitted within 0.05..20
  r.optional_real("empty_below", 0, 0.999);
  r.optional_real("lesion_view", 0, 4);
  if (meta.count("stacking")) {
    if (c.task != models::Task::classification) r.bad("stacking", "a segmentation card stacks nothing");
    c.stacking = parse_stacking(r.text("stacking"), c.classes);
    if (!c.stacking) r.bad("stacking", kStackingExpected, " for its classes ", json(c.classes).dump());
  }
  for (auto& [k, v] : meta)
    if (!c.to_metadata().count(k)) c.extra[k] = v;
  return c;
}

std::shared_ptr<nn::UnaryModule> build_model(const ModelCard& card) {
  models::ModelOptions opt;
  opt.in_channels = card.in_channels;
  opt.num_classes = card.num_classes();
  opt.encoder_depth = card.encoder_depth;
  opt.atrous_rates = card.atrous_rates;
  opt.decoder_channels = card.decoder_channels;
  return models::create_model(card.arch, opt, card.task);
}

void save_checkpoint(const std::string& path, const nn::Module& model, const ModelCard& card,
                     const nn::StateDict& extra_tensors) {
  SONO_CHECK(!model.fused_for_inference(), path, ": not saved: the model's BatchNorms are folded into its convs "
             "for inference (load_for_inference), its weights are not the checkpoint's");
  nn::StateDict all = model.state_dict();
  for (auto& [k, v] : extra_tensors) all[k] = v;
  nn::save_safetensors(path, all, card.to_metadata());
}

LoadedModel load_checkpoint(const std::string& path, std::optional<models::Task> expected_task) {
  nn::SafetensorsFile file = nn::load_safetensors(path);
  ModelCard card = ModelCard::from_metadata(path, file.metadata);
  SONO_CHECK(!expected_task || card.task == *expected_task, path, ": is a ", models::task_name(card.task),
             " checkpoint (", card.arch, "), expected a ", models::task_name(*expected_task), " one");
  auto model = [&] {
    SkipRandomFill skip;  // the strict load below overwrites every parameter and buffer
    return build_model(card);
  }();
  nn::StateDict weights;
  for (auto& [k, v] : file.tensors)
    if (k.rfind("optimizer.", 0) != 0) weights[k] = v;  // resume state is not part of the model
  try {
    model->load_state_dict(weights);
  } catch (const Error& e) {
    fail(path, ": does not match its own architecture ", card.arch, ": ", e.what());
  }
  model->eval();
  return {model, card};
}

LoadedModel load_for_inference(const std::string& path, models::Task task, Device device) {
  LoadedModel loaded = load_checkpoint(path, task);
  loaded.model->fuse_for_inference();  // on the CPU, in float64: not every device computes in it
  loaded.model->to(device);
  loaded.model->freeze_parameters();
  return loaded;
}

}  // namespace sono::app
