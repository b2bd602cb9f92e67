// The public C++ API (sono/pipeline.h, through libsono.so) against the tools' own code that
// predict runs: same results for a file's pixels in any layout, from several threads at once.
#include <stb_image.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "sono/pipeline.h"
#include "tools/app/inference.h"

using namespace sono;

namespace {

const std::string kSeg = SONO_SHIPPED_SEG, kCls = SONO_SHIPPED_CLS, kRefine = SONO_SHIPPED_REFINE;
const std::string kSamples = std::string(SONO_SOURCE_DIR) + "/tools/samples/";

// A sample scan's 8-bit grey samples (the samples are grey PNGs).
struct Grey {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;
};

Grey load_grey(const std::string& file) {
  int w, h, channels;
  std::unique_ptr<uint8_t, void (*)(void*)> data(stbi_load(file.c_str(), &w, &h, &channels, 1), stbi_image_free);
  REQUIRE(data);
  return {w, h, std::vector<uint8_t>(data.get(), data.get() + size_t(w) * h)};
}

// The top-left corner: a smaller scan keeps the many runs below quick.
Grey crop(const Grey& g, int width, int height) {
  Grey c{width, height, {}};
  for (int y = 0; y < height; ++y)
    c.pixels.insert(c.pixels.end(), g.pixels.begin() + size_t(y) * g.width, g.pixels.begin() + size_t(y) * g.width + width);
  return c;
}

// The API promises std::runtime_error with the reason.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

sono::Pipeline& shared_pipeline() {
  static sono::Pipeline pipeline(kSeg, kCls);
  return pipeline;
}

sono::Result run(const Grey& g) {
  return shared_pipeline().run({g.pixels.data(), g.width, g.height, 1, sono::PixelType::u8, size_t(g.width)});
}

void check_same(const sono::Result& a, const sono::Result& b) {
  CHECK(a.width == b.width);
  CHECK(a.height == b.height);
  CHECK(a.mask == b.mask);
  CHECK(a.lesion_probability == b.lesion_probability);
  CHECK(a.class_probabilities == b.class_probabilities);
}

// Each grey sample repeated into `channels` (alpha: opaque), `bytes` per sample (16 bits:
// v * 257, the same fraction of full scale), rows padded to `stride`.
std::vector<uint8_t> layout(const Grey& g, int channels, int bytes, size_t stride) {
  std::vector<uint8_t> out(stride * g.height, 0xAB);  // padding that would show if read
  for (int y = 0; y < g.height; ++y)
    for (int x = 0; x < g.width; ++x)
      for (int c = 0; c < channels; ++c) {
        const uint8_t v = c == 3 ? 255 : g.pixels[size_t(y) * g.width + x];
        uint8_t* at = out.data() + y * stride + (size_t(x) * channels + c) * bytes;
        if (bytes == 1) *at = v;
        else {
          const uint16_t wide = uint16_t(v * 257);
          std::memcpy(at, &wide, 2);
        }
      }
  return out;
}

}  // namespace

TEST_CASE("pipeline: a scan's pixels give what predict's code gives on its file") {
  const std::string file = kSamples + "benign_10.png";
  sono::Result r = run(load_grey(file));

  app::LoadedModel seg = app::load_for_inference(kSeg, models::Task::segmentation, Device::cpu),
                   cls = app::load_for_inference(kCls, models::Task::classification, Device::cpu);
  data::Image image = data::load_image(file);
  const app::ScanSegmentation segmentation =
      app::segment_scan(seg, image, image.height, image.width, Device::cpu);
  CHECK(r.width == image.width);
  CHECK(r.height == image.height);
  CHECK(r.mask == data::mask_from_logit_map(app::outline_map(segmentation, cls.card.classes, r.predicted)).values);
  CHECK(r.class_probabilities == app::classify(cls, image, app::classifier_mask(cls.card.input(), segmentation),
                                               Device::cpu, false, segmentation.malignancy));
  CHECK(r.class_names == cls.card.classes);
  CHECK(r.confidence == *std::max_element(r.class_probabilities.begin(), r.class_probabilities.end()));
  CHECK(r.confidence == r.class_probabilities[r.predicted]);

  // The probability map is the mask's source: lesion exactly where it is over one half (but
  // for float rounding right at 0.5), and the scan has a lesion.
  REQUIRE(r.lesion_probability.size() == r.mask.size());
  size_t lesion = 0, disagree = 0, outside = 0;
  for (size_t p = 0; p < r.mask.size(); ++p) {
    const float prob = r.lesion_probability[p];
    outside += !(prob >= 0 && prob <= 1);
    lesion += r.mask[p];
    disagree += std::abs(prob - 0.5f) > 1e-6f && (prob > 0.5f) != bool(r.mask[p]);
  }
  CHECK(outside == 0);
  CHECK(disagree == 0);
  CHECK(lesion > 0);
}

TEST_CASE("pipeline: with a refiner, the outline is the refiner's and the classes are unchanged") {
  const std::string file = kSamples + "benign_10.png";
  const Grey g = load_grey(file);
  const sono::Result plain = run(g);
  sono::Options options;
  options.refine_checkpoint = kRefine;
  const sono::Pipeline refined(kSeg, kCls, options);
  const sono::Result r = refined.run({g.pixels.data(), g.width, g.height, 1, sono::PixelType::u8, size_t(g.width)});

  app::LoadedModel seg = app::load_for_inference(kSeg, models::Task::segmentation, Device::cpu),
                   refiner = app::load_for_inference(kRefine, models::Task::segmentation, Device::cpu);
  data::Image image = data::load_image(file);
  const app::ScanSegmentation segmentation =
      app::segment_scan(seg, image, image.height, image.width, Device::cpu);
  const data::Image redrawn = app::refine_lesions(refiner, {&image}, {segmentation.lesion_logits}, Device::cpu)[0];
  CHECK(r.mask == data::mask_from_logit_map(redrawn).values);
  CHECK(r.lesion_probability == data::probability_map(redrawn).pixels);
  CHECK(r.mask != plain.mask);
  CHECK(r.class_probabilities == plain.class_probabilities);  // the classifier reads the first segmenter's map
}

TEST_CASE("pipeline: every pixel layout of one image gives one result") {
  const Grey g = crop(load_grey(kSamples + "malignant_10.png"), 200, 150);
  const sono::Result reference = run(g);
  struct Layout {
    int channels, bytes;
    size_t padding;
  };
  for (Layout l : {Layout{1, 1, 7}, Layout{3, 1, 0}, Layout{4, 1, 5}, Layout{2, 1, 0}, Layout{1, 2, 6}, Layout{3, 2, 2}}) {
    CAPTURE(l.channels);
    CAPTURE(l.bytes);
    const size_t stride = size_t(g.width) * l.channels * l.bytes + l.padding;
    std::vector<uint8_t> pixels = layout(g, l.channels, l.bytes, stride);
    check_same(shared_pipeline().run({pixels.data(), g.width, g.height, l.channels,
                                      l.bytes == 2 ? sono::PixelType::u16 : sono::PixelType::u8, stride}),
               reference);
  }
}

TEST_CASE("pipeline: several threads running one pipeline get what one thread gets") {
  const Grey full = load_grey(kSamples + "malignant_10.png");
  const std::vector<Grey> scans = {crop(full, 160, 120), crop(full, 120, 160), crop(full, 200, 100)};
  std::vector<sono::Result> alone;
  for (const Grey& g : scans) alone.push_back(run(g));

  constexpr int kThreads = 4;
  std::vector<std::vector<sono::Result>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < scans.size(); ++i) got[t].push_back(run(scans[(i + t) % scans.size()]));
    });
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t)
    for (size_t i = 0; i < scans.size(); ++i) check_same(got[t][i], alone[(i + t) % scans.size()]);
}

TEST_CASE("pipeline: errors say what is wrong") {
  CHECK(contains(error_of([] { sono::Pipeline("no_such.safetensors", kCls); }), "no_such.safetensors"));
  CHECK(contains(error_of([] { sono::Pipeline(kCls, kCls); }), "segmentation"));
  CHECK(contains(error_of([] { sono::Pipeline(kSeg, kCls, {"tpu"}); }), "tpu"));
  CHECK(contains(error_of([] { sono::Pipeline(kSeg, kCls, {"cpu", false, kSeg}); }), "not a refining segmenter"));

  const Grey g = crop(load_grey(kSamples + "benign_10.png"), 64, 48);
  auto run_view = [&](int width, int height, int channels, size_t stride, const void* pixels) {
    return error_of([&] {
      shared_pipeline().run({pixels, width, height, channels, sono::PixelType::u8, stride});
    });
  };
  CHECK(contains(run_view(64, 48, 5, 0, g.pixels.data()), "5 channels"));
  CHECK(contains(run_view(64, 48, 1, 63, g.pixels.data()), "rows 63 bytes apart"));
  CHECK(contains(run_view(0, 48, 1, 0, g.pixels.data()), "0x48"));
  CHECK(contains(run_view(64, 48, 1, 0, nullptr), "no pixel data"));
}
