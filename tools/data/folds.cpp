#include "tools/data/folds.h"

#include <algorithm>

#include "tensor/error.h"
#include "tools/data/seeding.h"

namespace sono::data {

Split Folds::split(int k) const {
  SONO_CHECK(k >= 0 && k < count, "fold ", k, " outside 0..", count - 1);
  Split s;
  s.group = group;
  s.group_count = group_count;
  for (size_t i = 0; i < fold.size(); ++i) (fold[i] == k ? s.val : s.train).push_back(i);
  return s;
}

Folds make_folds(const Dataset& d, const std::vector<uint64_t>& hashes, int k, uint64_t seed, int max_hash_distance) {
  SONO_CHECK(hashes.size() == d.samples.size(), "make_folds: ", hashes.size(), " hashes for ", d.samples.size(),
             " images");
  SONO_CHECK(k >= 2, "--folds ", k, ": cross-validation needs at least 2 folds");
  Folds f;
  f.count = k;
  f.group = group_near_duplicates(hashes, max_hash_distance);
  f.group_count = f.group.empty() ? 0 : *std::max_element(f.group.begin(), f.group.end()) + 1;
  SONO_CHECK(f.group_count >= k, "--folds ", k, ": only ", f.group_count,
             " groups of distinct images (duplicates stay together), fewer than the folds");
  std::vector<size_t> group_size(f.group_count, 0);
  for (int g : f.group) ++group_size[g];
  std::vector<int> cls = group_classes(d, f.group, f.group_count);
  int classes = std::max<int>(static_cast<int>(d.classes.size()), 1);

  Generator gen(seed);
  std::vector<int> fold_of_group(f.group_count, 0);
  std::vector<size_t> fold_total(k, 0);
  for (int c = 0; c < classes; ++c) {
    std::vector<int> groups;
    for (int g = 0; g < f.group_count; ++g)
      if (cls[g] == c) groups.push_back(g);
    seeded_shuffle(groups, gen);
    // Largest first, so the singletons that come last even out what the big groups leave.
    std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return group_size[a] > group_size[b]; });
    std::vector<size_t> fold_class(k, 0);
    for (int g : groups) {
      int best = 0;
      for (int j = 1; j < k; ++j)
        if (std::make_pair(fold_class[j], fold_total[j]) < std::make_pair(fold_class[best], fold_total[best]))
          best = j;
      fold_of_group[g] = best;
      fold_class[best] += group_size[g];
      fold_total[best] += group_size[g];
    }
  }
  f.fold.resize(f.group.size());
  for (size_t i = 0; i < f.group.size(); ++i) f.fold[i] = fold_of_group[f.group[i]];
  return f;
}

}  // namespace sono::data
