#pragma once
// Duplicate-aware, class-stratified, seeded train/validation split. BUSI holds many
// near-duplicates (the same scan with other calipers or crop, sometimes under two classes);
// a plain random split leaks them across the two sides and inflates every validation figure.
// So images are grouped by perceptual hash and each group goes to one side as a whole.
#include <cstdint>
#include <string>
#include <vector>

#include "tools/data/dataset.h"
#include "tools/data/image.h"

namespace sono::data {

// pHash: greyscale, resized to 32x32 (antialiased), 2-D DCT-II (orthonormal); bit k of the
// 8x8 lowest frequencies is set when the coefficient exceeds their median (DC left out of the
// median). Unrelated ultrasound scans differ in about 14-20 of the 64 bits, re-saved or
// re-annotated copies of one scan in 0-12.
uint64_t perceptual_hash(const Image& image);
int hamming_distance(uint64_t a, uint64_t b);

// Union-find over every pair within `max_distance` bits. Returns a group id per image,
// numbered 0.. in order of each group's first image.
std::vector<int> group_near_duplicates(const std::vector<uint64_t>& hashes, int max_distance);

// The class of each of `groups` duplicate groups: the majority label of its members, ties to
// the lower label.
std::vector<int> group_classes(const Dataset& dataset, const std::vector<int>& group, int groups);

struct SplitOptions {
  double val_fraction = 0.2;
  uint64_t seed = 0;
  int max_hash_distance = 12;  // BUSI's groups are stable from 8 to 12; 14+ merges unrelated scans
};

struct Split {
  std::vector<size_t> train, val;  // sample indices, ascending
  std::vector<size_t> held_out;    // on neither side (hold_out)
  std::vector<int> group;          // duplicate group per sample
  int group_count = 0;
  // "624 images in 469 duplicate groups (95 of 2, ...); train 499 (benign 280, ...), val 125 (...)"
  // and ", held out 5 (...)" where some are.
  std::string summary(const Dataset& dataset) const;
};

// Takes `samples` and every other member of their duplicate groups off both sides of the split:
// images a model must not see, as the demo's scans, together with their near-duplicates.
void hold_out(Split& split, const std::vector<size_t>& samples);

// Per class (a group's class is its majority label, ties to the lower label), the groups are
// shuffled with `seed` and taken into validation while that brings the class's validation
// count closer to val_fraction of it. val_fraction 0 puts every image in training (a final
// model trained on all images). Throws sono::Error when a class ends up with no image on a
// side that has images.
Split split_dataset(const Dataset& dataset, const std::vector<uint64_t>& hashes, const SplitOptions& options);

}  // namespace sono::data
