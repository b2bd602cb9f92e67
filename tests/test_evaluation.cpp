// Cross-validation folds and the figures that judge a classifier beyond accuracy: AUROC,
// calibration error and temperature scaling, each against small cases computed by hand; the
// stacking of a classifier with a further score against scikit-learn.
#include <map>
#include <set>

#include "helpers.h"
#include "tools/data/calibration.h"
#include "tools/data/folds.h"
#include "tools/data/seeding.h"
#include "tools/data/stacking.h"

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

  // Every row right, by a margin of 0.5: the NLL falls as T shrinks to its bound, 0.05, which
  // would report these as certain. No fit: 1. One row wrong gives the optimum back.
  Rows separated(10, {0.5, 0.0});
  for (int i = 7; i < 10; ++i) separated[i] = {0.0, 0.5};
  CHECK(every_row_right(separated, labels));
  CHECK(mean_nll(separated, labels, 0.05) < mean_nll(separated, labels, 1));
  CHECK(fit_temperature(separated, labels) == 1.0);
  separated[9] = {0.5, 0.0};
  CHECK_FALSE(every_row_right(separated, labels));
  CHECK(fit_temperature(separated, labels) < 1.0);
}

TEST_CASE("stacking: a classifier's probabilities with a further score, fitted as scikit-learn fits it") {
  // 24 rows, classes 12 / 7 / 5; the score runs high on class 1. The expected probabilities are
  // LogisticRegression(C=1, class_weight="balanced", tol=1e-12) over [log p, logit(score)].
  struct Row {
    std::vector<double> p;
    double score;
    int label;
  };
  const std::vector<Row> rows{
      {{0.9412, 0.0029, 0.0559}, 0.2558, 0}, {{0.6922, 0.2643, 0.0435}, 0.3248, 0},
      {{0.046, 0.9128, 0.0412}, 0.2989, 0},  {{0.7443, 0.1523, 0.1034}, 0.2909, 0},
      {{0.6131, 0.0898, 0.2971}, 0.3319, 0}, {{0.3465, 0.4779, 0.1757}, 0.2679, 0},
      {{0.2424, 0.1505, 0.6071}, 0.3166, 0}, {{0.4535, 0.4747, 0.0718}, 0.3118, 0},
      {{0.7357, 0.1638, 0.1005}, 0.5424, 0}, {{0.0585, 0.8274, 0.1141}, 0.1026, 0},
      {{0.6224, 0.2865, 0.0911}, 0.1713, 0}, {{0.4041, 0.1125, 0.4835}, 0.5615, 0},
      {{0.1002, 0.8326, 0.0672}, 0.6397, 1}, {{0.2099, 0.6957, 0.0944}, 0.672, 1},
      {{0.3567, 0.0778, 0.5655}, 0.8799, 1}, {{0.0473, 0.8598, 0.0929}, 0.9053, 1},
      {{0.0374, 0.3807, 0.5819}, 0.9344, 1}, {{0.0328, 0.573, 0.3942}, 0.7091, 1},
      {{0.6684, 0.1374, 0.1942}, 0.611, 1},  {{0.5553, 0.1332, 0.3115}, 0.0981, 2},
      {{0.3694, 0.1459, 0.4847}, 0.6543, 2}, {{0.4125, 0.1535, 0.4339}, 0.2141, 2},
      {{0.6563, 0.0387, 0.305}, 0.3055, 2},  {{0.3144, 0.4465, 0.2391}, 0.0971, 2}};
  Rows probabilities, scores;
  std::vector<int> labels;
  for (const Row& r : rows) probabilities.push_back(r.p), scores.push_back({r.score}), labels.push_back(r.label);
  const Stacking s = fit_stacking(probabilities, scores, labels);
  REQUIRE(s.classes() == 3);
  REQUIRE(s.scores() == 1);
  const std::vector<std::pair<std::vector<double>, double>> queries{
      {{0.6, 0.3, 0.1}, 0.8}, {{0.2, 0.1, 0.7}, 0.1}, {{0.1, 0.8, 0.1}, 0.5}};
  const Rows expected{{0.15603214980153346, 0.8292195605357179, 0.014748289662748677},
                      {0.07800695260655635, 0.0014854581240533698, 0.9205075892693904},
                      {0.385629965245654, 0.5764023280023517, 0.03796770675199424}};
  for (size_t q = 0; q < queries.size(); ++q) {
    const std::vector<double> p = s.probabilities(queries[q].first, {queries[q].second});
    for (size_t c = 0; c < 3; ++c) CHECK(p[c] == doctest::Approx(expected[q][c]).epsilon(1e-6));
  }
  // The weights are identified by the penalty (the biases only up to a shared shift).
  CHECK(s.weights[1][3] == doctest::Approx(1.2669899168067438).epsilon(1e-5));
  CHECK(s.weights[0][2] == doctest::Approx(-0.6957027782829963).epsilon(1e-5));

  CHECK_THROWS_WITH(fit_stacking(probabilities, scores, std::vector<int>(24, 0)),
                    doctest::Contains("no rows of class 1"));
  CHECK_THROWS_WITH(s.probabilities({0.5, 0.5}, {0.5}), doctest::Contains("expected 3 class probabilities"));
}
