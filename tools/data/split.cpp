#include "tools/data/split.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <iterator>
#include <map>
#include <numeric>
#include <sstream>

#include "tensor/error.h"
#include "tools/data/seeding.h"

namespace sono::data {

namespace {

constexpr int kHashInput = 32, kHashBlock = 8;

// Rows k = 0..7 of the orthonormal DCT-II matrix of size 32.
std::vector<double> dct_rows() {
  std::vector<double> m(kHashBlock * kHashInput);
  for (int k = 0; k < kHashBlock; ++k)
    for (int x = 0; x < kHashInput; ++x) {
      double scale = std::sqrt((k == 0 ? 1.0 : 2.0) / kHashInput);
      m[k * kHashInput + x] = scale * std::cos(M_PI * (2 * x + 1) * k / (2.0 * kHashInput));
    }
  return m;
}

}  // namespace

uint64_t perceptual_hash(const Image& image) {
  static const std::vector<double> dct = dct_rows();
  Image small = resize_bilinear(to_grey(image), kHashInput, kHashInput);
  // coefficients = D * small * D^T, restricted to the 8x8 low-frequency block
  std::vector<double> rows(kHashBlock * kHashInput, 0.0);  // D * small
  for (int k = 0; k < kHashBlock; ++k)
    for (int y = 0; y < kHashInput; ++y)
      for (int x = 0; x < kHashInput; ++x) rows[k * kHashInput + x] += dct[k * kHashInput + y] * small.at(y, x, 0);
  std::vector<double> coeff(kHashBlock * kHashBlock, 0.0);
  for (int k = 0; k < kHashBlock; ++k)
    for (int l = 0; l < kHashBlock; ++l)
      for (int x = 0; x < kHashInput; ++x) coeff[k * kHashBlock + l] += rows[k * kHashInput + x] * dct[l * kHashInput + x];
  std::vector<double> ac(coeff.begin() + 1, coeff.end());
  std::nth_element(ac.begin(), ac.begin() + ac.size() / 2, ac.end());
  double median = ac[ac.size() / 2];  // 63 values: the middle one
  uint64_t hash = 0;
  for (int i = 0; i < kHashBlock * kHashBlock; ++i)
    if (coeff[i] > median) hash |= uint64_t{1} << i;
  return hash;
}

int hamming_distance(uint64_t a, uint64_t b) { return std::popcount(a ^ b); }

std::vector<int> group_near_duplicates(const std::vector<uint64_t>& hashes, int max_distance) {
  std::vector<size_t> parent(hashes.size());
  std::iota(parent.begin(), parent.end(), 0);
  auto root = [&](size_t i) {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
  };
  for (size_t i = 0; i < hashes.size(); ++i)
    for (size_t j = i + 1; j < hashes.size(); ++j)
      if (hamming_distance(hashes[i], hashes[j]) <= max_distance) parent[root(i)] = root(j);
  std::map<size_t, int> id_of_root;
  std::vector<int> group(hashes.size());
  for (size_t i = 0; i < hashes.size(); ++i) {
    auto [it, added] = id_of_root.try_emplace(root(i), static_cast<int>(id_of_root.size()));
    group[i] = it->second;
  }
  return group;
}

namespace {

int class_count(const Dataset& d) { return std::max<int>(static_cast<int>(d.classes.size()), 1); }

}  // namespace

std::vector<int> group_classes(const Dataset& d, const std::vector<int>& group, int groups) {
  std::vector<std::vector<int>> votes(groups, std::vector<int>(class_count(d), 0));
  for (size_t i = 0; i < group.size(); ++i) ++votes[group[i]][d.samples[i].label];
  std::vector<int> cls(groups);
  for (int g = 0; g < groups; ++g)
    cls[g] = static_cast<int>(std::max_element(votes[g].begin(), votes[g].end()) - votes[g].begin());
  return cls;
}

namespace {

std::string class_name(const Dataset& d, int label) { return d.classes.empty() ? "all" : d.classes[label]; }

void describe_side(std::ostream& os, const Dataset& d, const std::vector<size_t>& side) {
  os << side.size();
  if (d.classes.empty()) return;
  std::vector<size_t> counts(d.classes.size(), 0);
  for (size_t i : side) ++counts[d.samples[i].label];
  os << " (" << class_counts_text(d.classes, counts) << ")";
}

void require_every_class_on_both_sides(const Dataset& d, const Split& s) {
  for (int c = 0; c < class_count(d); ++c)
    for (const auto* side : {&s.train, &s.val}) {
      if (side->empty()) continue;  // no validation side at all (--val-split 0)
      bool present = std::any_of(side->begin(), side->end(), [&](size_t i) { return d.samples[i].label == c; });
      if (!present)
        fail("class '", class_name(d, c), "' has no image in the ", side == &s.train ? "training" : "validation",
             " split (", d.class_counts()[c], " images; duplicates are kept together): change --val-split",
             " or add images");
    }
}

}  // namespace

std::string Split::summary(const Dataset& d) const {
  std::map<size_t, int> groups_by_size;
  std::vector<size_t> sizes(group_count, 0);
  for (int g : group) ++sizes[g];
  for (size_t n : sizes) ++groups_by_size[n];
  std::ostringstream os;
  os << group.size() << " images in " << group_count << " duplicate groups (";
  bool first = true;
  for (auto it = groups_by_size.rbegin(); it != groups_by_size.rend(); ++it, first = false)
    os << (first ? "" : ", ") << it->second << " of " << it->first;
  os << "); train ";
  describe_side(os, d, train);
  os << ", val ";
  describe_side(os, d, val);
  if (!held_out.empty()) {
    os << ", held out ";
    describe_side(os, d, held_out);
  }
  return os.str();
}

void hold_out(Split& split, const std::vector<size_t>& samples) {
  std::vector<bool> group_out(static_cast<size_t>(split.group_count), false);
  for (size_t i : samples) group_out.at(static_cast<size_t>(split.group.at(i))) = true;
  auto out = [&](size_t i) { return group_out[static_cast<size_t>(split.group[i])]; };
  for (auto* side : {&split.train, &split.val}) {
    std::copy_if(side->begin(), side->end(), std::back_inserter(split.held_out), out);
    side->erase(std::remove_if(side->begin(), side->end(), out), side->end());
  }
  std::sort(split.held_out.begin(), split.held_out.end());
}

Split split_dataset(const Dataset& d, const std::vector<uint64_t>& hashes, const SplitOptions& o) {
  SONO_CHECK(hashes.size() == d.samples.size(), "split_dataset: ", hashes.size(), " hashes for ",
             d.samples.size(), " images");
  SONO_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "validation fraction must be at least 0 and under 1, got ",
             o.val_fraction);
  Split s;
  s.group = group_near_duplicates(hashes, o.max_hash_distance);
  s.group_count = s.group.empty() ? 0 : *std::max_element(s.group.begin(), s.group.end()) + 1;
  std::vector<std::vector<size_t>> members(s.group_count);
  for (size_t i = 0; i < s.group.size(); ++i) members[s.group[i]].push_back(i);
  std::vector<int> cls = group_classes(d, s.group, s.group_count);

  Generator gen(o.seed);
  std::vector<bool> in_val(s.group_count, false);
  for (int c = 0; c < class_count(d); ++c) {
    std::vector<int> groups;
    size_t images = 0;
    for (int g = 0; g < s.group_count; ++g)
      if (cls[g] == c) groups.push_back(g), images += members[g].size();
    seeded_shuffle(groups, gen);
    double target = o.val_fraction * images;
    double taken = 0;
    for (int g : groups) {
      double with = taken + members[g].size();
      if (std::abs(with - target) < std::abs(taken - target)) in_val[g] = true, taken = with;
    }
  }
  for (size_t i = 0; i < s.group.size(); ++i) (in_val[s.group[i]] ? s.val : s.train).push_back(i);
  require_every_class_on_both_sides(d, s);
  return s;
}

}  // namespace sono::data
