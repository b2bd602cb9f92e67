#pragma once
// K-fold cross-validation folds with the split's guarantees: near-duplicate groups (see
// split.h) stay whole inside one fold, and every class is spread evenly over the folds, so
// each validation fold is an honest, class-balanced sample and the K figures can be averaged.
#include <cstdint>
#include <string>
#include <vector>

#include "tools/data/dataset.h"
#include "tools/data/split.h"

namespace sono::data {

struct Folds {
  std::vector<int> fold;   // per sample, 0..count-1
  std::vector<int> group;  // duplicate group per sample
  int count = 0, group_count = 0;

  // Fold k as a split: its images are the validation side, the other folds' the training side.
  Split split(int k) const;
};

// Per class (a group's class is its majority label), the groups are shuffled with `seed`, then
// taken largest first, each into the fold that holds the fewest images of that class so far
// (ties: fewest images in all, then the lower fold). With singleton groups every class's count
// per fold is within one of the others. Throws sono::Error when k < 2 or there are fewer
// groups than folds.
Folds make_folds(const Dataset& dataset, const std::vector<uint64_t>& hashes, int k, uint64_t seed,
                 int max_hash_distance = SplitOptions{}.max_hash_distance);

}  // namespace sono::data
