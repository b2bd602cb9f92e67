#include "tools/data/dataset.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <sstream>

#include "tensor/error.h"
#include "tools/data/image.h"

namespace sono::data {

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::flat: return "flat";
    case Layout::class_folders: return "class-folders";
    default: return "busi";
  }
}

std::vector<size_t> Dataset::class_counts() const {
  std::vector<size_t> counts(std::max<size_t>(classes.size(), 1), 0);
  for (const Sample& s : samples) ++counts[s.label];
  return counts;
}

std::string Dataset::summary() const {
  std::ostringstream os;
  os << layout_name(layout) << " layout, " << samples.size() << " images";
  if (!classes.empty()) os << ": " << class_counts_text(classes, class_counts());
  return os.str();
}

std::string class_counts_text(const std::vector<std::string>& classes, const std::vector<size_t>& counts) {
  constexpr size_t kListed = 12;
  std::ostringstream os;
  if (classes.size() <= kListed) {
    for (size_t c = 0; c < classes.size(); ++c) os << (c ? ", " : "") << classes[c] << " " << counts[c];
    return os.str();
  }
  const auto [fewest, most] = std::minmax_element(counts.begin(), counts.end());
  os << classes.size() << " classes of " << *fewest;
  if (*most != *fewest) os << "-" << *most;
  os << " images";
  return os.str();
}

bool is_image_file(const fs::path& file) {
  std::string ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".dcm";
}

namespace {

bool is_hidden(const fs::path& p) { return p.filename().string().starts_with("."); }

void require_folder(const fs::path& dir, const char* what) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail(what, " folder '", dir.string(), "' does not exist");
  if (!fs::is_directory(dir, ec)) fail(what, " folder '", dir.string(), "' is not a folder");
}

std::vector<fs::path> sorted_entries(const fs::path& dir, bool folders) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (is_hidden(e.path())) continue;
    if (folders ? e.is_directory() : (e.is_regular_file() && is_image_file(e.path()))) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// "X_mask" and "X_mask_3" belong to image "X"; anything else is not a mask name.
std::optional<std::string> mask_owner(const std::string& stem) {
  size_t at = stem.rfind("_mask");
  if (at == std::string::npos || at == 0) return std::nullopt;
  std::string tail = stem.substr(at + 5);
  bool numbered = tail.size() > 1 && tail[0] == '_' &&
                  std::all_of(tail.begin() + 1, tail.end(), [](unsigned char c) { return std::isdigit(c); });
  if (!tail.empty() && !numbered) return std::nullopt;
  return stem.substr(0, at);
}

// Mask files of one folder by the stem of the image they belong to. In a separate masks
// folder a file named like its image (X.png) is that image's mask too.
std::map<std::string, std::vector<fs::path>> index_masks(const fs::path& dir, bool beside_images) {
  std::map<std::string, std::vector<fs::path>> by_owner;
  for (const fs::path& file : sorted_entries(dir, false)) {
    std::string stem = file.stem().string();
    if (auto owner = mask_owner(stem)) by_owner[*owner].push_back(file);
    else if (!beside_images) by_owner[stem].push_back(file);
  }
  return by_owner;
}

void check_mask_sizes(const Sample& s) {
  ImageSize image = read_image_size(s.image);
  for (const fs::path& m : s.masks) check_mask_size(m, read_image_size(m), s.image, image);
}

// The samples of one image folder whose masks are in `mask_dir` (the same folder for busi).
std::vector<Sample> scan_folder(const fs::path& image_dir, const fs::path& mask_dir, int label,
                                const std::string& prefix, const ScanOptions& options) {
  bool beside = fs::equivalent(image_dir, mask_dir);
  auto masks = index_masks(mask_dir, beside);
  std::vector<Sample> samples;
  for (const fs::path& file : sorted_entries(image_dir, false)) {
    std::string stem = file.stem().string();
    if (beside && mask_owner(stem)) continue;  // a mask, not an image
    Sample s{file, {}, label, prefix + stem};
    if (auto it = masks.find(stem); it != masks.end()) s.masks = it->second;
    if (s.masks.empty() && options.masks_required)
      fail("image '", file.string(), "' has no mask: expected '", (mask_dir / (stem + "_mask.png")).string(), "'");
    if (options.check_sizes) check_mask_sizes(s);
    samples.push_back(std::move(s));
  }
  return samples;
}

}  // namespace

Dataset scan_dataset(const fs::path& images_dir, const fs::path& masks_dir, const ScanOptions& options) {
  require_folder(images_dir, "images");
  if (!masks_dir.empty()) require_folder(masks_dir, "masks");
  const fs::path& mask_root = masks_dir.empty() ? images_dir : masks_dir;
  Dataset d;
  if (!sorted_entries(images_dir, false).empty()) {
    d.layout = Layout::flat;
    d.samples = scan_folder(images_dir, mask_root, 0, "", options);
  } else {
    d.layout = masks_dir.empty() ? Layout::busi : Layout::class_folders;
    for (const fs::path& class_dir : sorted_entries(images_dir, true)) {
      std::string name = class_dir.filename().string();
      fs::path mask_dir = mask_root / name;
      require_folder(mask_dir, "masks");
      auto samples = scan_folder(class_dir, mask_dir, static_cast<int>(d.classes.size()), name + "/", options);
      if (samples.empty()) fail("class folder '", class_dir.string(), "' holds no images");
      d.classes.push_back(name);
      d.samples.insert(d.samples.end(), samples.begin(), samples.end());
    }
  }
  if (d.samples.empty()) fail("no images found in '", images_dir.string(), "'");
  return d;
}

}  // namespace sono::data
