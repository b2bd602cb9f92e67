// Cross-validation folds and the figures that judge a classifier beyond accuracy: AUROC,
// calibration error and temperature scaling, each against small cases computed by hand.
#include <map>
#include <set>

#include "helpers.h"
#include "tools/data/calibration.h"
#include "tools/data/folds.h"
#include "tools/data/seeding.h"

using namespace sono;
using namespace sono::data;

namespace {

// `sizes[c]` lists the sizes of class c's duplicate groups; members of one group share a hash,
// distinct groups get hashes far apart.
struct GroupedSet {
  Dataset dataset;
  std::vector<uint64_t> hashes;
  std::vector<int> true_group;

  explicit GroupedSet(const std::vector<std::vector<int>>& sizes) {
    dataset.classes = {"benign", "malignant", "normal"};
    int group = 0;
    for (int c = 0; c < static_cast<int>(sizes.size()); ++c)
      for (int size : sizes[c]) {
        uint64_t hash = far_hash(group);
        for (int m = 0; m < size; ++m) {
          dataset.samples.push_back({"", {}, c, std::to_string(dataset.samples.size())});
          hashes.push_back(hash);
          true_group.push_back(group);
        }
        ++group;
      }
  }
  // 64-bit hashes from a seeded mix are ~32 bits apart, far beyond the 12 that join a group.
  static uint64_t far_hash(int group) { return mix_seed({0xfeedull, static_cast<uint64_t>(group)}); }
};

std::vector<std::vector<int>> per_fold_class_counts(const GroupedSet& set, const Folds& f) {
  std::vector<std::vector<int>> counts(f.count, std::vector<int>(3, 0));
  for (size_t i = 0; i < f.fold.size(); ++i) ++counts[f.fold[i]][set.dataset.samples[i].label];
  return counts;
}

}  // namespace

TEST_CASE("folds: every image in exactly one validation fold, classes within one of each other") {
  GroupedSet set({std::vector<int>(23, 1), std::vector<int>(11, 1), std::vector<int>(7, 1)});
  Folds f = make_folds(set.dataset, set.hashes, 5, 3);
  REQUIRE(f.count == 5);
  std::multiset<size_t> validated;
  for (int k = 0; k < 5; ++k) {
    Split s = f.split(k);
    CHECK(s.train.size() + s.val.size() == set.dataset.samples.size());
    validated.insert(s.val.begin(), s.val.end());
    for (size_t i : s.val) CHECK(f.fold[i] == k);
  }
  for (size_t i = 0; i < set.dataset.samples.size(); ++i) CHECK(validated.count(i) == 1);
  auto counts = per_fold_class_counts(set, f);
  for (int c = 0; c < 3; ++c) {
    int lo = 1 << 30, hi = 0;
    for (int k = 0; k < 5; ++k) lo = std::min(lo, counts[k][c]), hi = std::max(hi, counts[k][c]);
    INFO("class " << c);
    CHECK(hi - lo <= 1);
  }
  CHECK(make_folds(set.dataset, set.hashes, 5, 3).fold == f.fold);  // deterministic
  CHECK(make_folds(set.dataset, set.hashes, 5, 4).fold != f.fold);  // and seeded
}

TEST_CASE("folds: a duplicate group is never split, and the classes stay balanced around the groups") {
  GroupedSet set({{4, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 2, 2, 1, 1, 1, 1, 1}, {2, 1, 1, 1, 1, 1}});
  Folds f = make_folds(set.dataset, set.hashes, 3, 0);
  std::map<int, int> fold_of_group;
  for (size_t i = 0; i < f.fold.size(); ++i) {
    auto [it, first] = fold_of_group.try_emplace(set.true_group[i], f.fold[i]);
    CHECK(it->second == f.fold[i]);
  }
  CHECK(f.group_count == static_cast<int>(fold_of_group.size()));
  auto counts = per_fold_class_counts(set, f);  // benign 24 -> 8 each, malignant 12, normal 7
  for (int k = 0; k < 3; ++k) {
    CHECK(std::abs(counts[k][0] - 8) <= 1);
    CHECK(std::abs(counts[k][1] - 4) <= 1);
    CHECK(std::abs(counts[k][2] * 3 - 7) <= 3);
  }
  CHECK_THROWS_WITH(make_folds(set.dataset, set.hashes, 1, 0),
                    doctest::Contains("--folds 1: cross-validation needs at least 2"));
  GroupedSet tiny({{1, 1}, {1}});
  CHECK_THROWS_WITH(make_folds(tiny.dataset, tiny.hashes, 5, 0), doctest::Contains("only 3 groups"));
}

TEST_CASE("AUROC: Mann-Whitney with ties counted half, NaN for one class only") {
  // positives 0.9, 0.4; negatives 0.8, 0.3, 0.1: pairs won 0.9>all (3) + 0.4>0.3,0.1 (2) = 5 of 6
  CHECK(auroc({0.9, 0.8, 0.4, 0.3, 0.1}, {true, false, true, false, false}) == doctest::Approx(5.0 / 6));
  // a tie between a positive and a negative counts half: (1 + 0.5) / 2
  CHECK(auroc({0.7, 0.7, 0.2}, {true, false, false}) == doctest::Approx(0.75));
  CHECK(auroc({0.1, 0.9}, {true, false}) == doctest::Approx(0.0));
  CHECK(std::isnan(auroc({0.1, 0.9}, {true, true})));
}

TEST_CASE("ECE: ten bins of the top probability, weighted |accuracy - confidence|") {
  Rows p = {{0.95, 0.05}, {0.9, 0.1}, {0.15, 0.85}, {0.38, 0.62}, {0.45, 0.55}};
  std::vector<int> y = {0, 1, 1, 1, 0};
  auto bins = reliability_bins(p, y, 10);
  REQUIRE(bins.size() == 10);
  // bin 9: 0.95 right, 0.9 wrong; bin 8: 0.85 right; bin 6: 0.62 right; bin 5: 0.55 wrong
  CHECK(bins[9].count == 2);
  CHECK(bins[9].confidence == doctest::Approx(0.925));
  CHECK(bins[9].accuracy == doctest::Approx(0.5));
  CHECK(bins[8].count == 1);
  CHECK(bins[6].count == 1);
  CHECK(bins[5].count == 1);
  CHECK(bins[5].accuracy == 0);
  CHECK(bins[0].count == 0);
  double expected = (2 * 0.425 + 0.15 + 0.38 + 0.55) / 5;
  CHECK(expected_calibration_error(bins) == doctest::Approx(expected));
  CHECK(reliability_bins({{0.0, 1.0}}, {1}, 10)[9].count == 1);  // confidence 1 in the last bin
  std::string svg = reliability_svg(bins, "calibration");
  CHECK(svg.find("<svg") != std::string::npos);
  CHECK(svg.find("perfect calibration") != std::string::npos);
}

TEST_CASE("temperature: fitted T > 1 lowers the NLL of an over-confident model, T ~ 1 for a calibrated one") {
  // Over-confident: logits +-6 (p 0.9975) but right only 7 times out of 10.
  Rows logits;
  std::vector<int> labels;
  for (int i = 0; i < 10; ++i) {
    logits.push_back({6.0, -6.0});
    labels.push_back(i < 7 ? 0 : 1);
  }
  double t = fit_temperature(logits, labels);
  // The NLL optimum puts p(class 0) at 0.7: 12 / T = log(0.7 / 0.3).
  CHECK(t == doctest::Approx(12 / std::log(0.7 / 0.3)).epsilon(1e-4));
  CHECK(mean_nll(logits, labels, t) < 0.5 * mean_nll(logits, labels, 1));
  CHECK(softmax_row(logits[0], t)[0] == doctest::Approx(0.7).epsilon(1e-4));

  Rows calibrated(10, {std::log(0.7 / 0.3), 0.0});
  CHECK(fit_temperature(calibrated, labels) == doctest::Approx(1.0).epsilon(1e-4));
}
