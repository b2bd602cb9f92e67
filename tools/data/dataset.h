#pragma once
// Finding the images, their lesion masks and their classes on disk. Three layouts, told
// apart from the folders themselves:
//   flat           IMAGES/X.png with MASKS/X_mask.png (or MASKS/X.png); no classes
//   class_folders  IMAGES/CLASS/X.png with MASKS/CLASS/X_mask.png
//   busi           ROOT/CLASS/X.png with X_mask.png beside it (no masks folder given)
// In every layout an image's masks are X_mask.EXT and X_mask_N.EXT; they are unioned on load.
#include <filesystem>
#include <string>
#include <vector>

namespace sono::data {

namespace fs = std::filesystem;

enum class Layout { flat, class_folders, busi };
const char* layout_name(Layout layout);

struct Sample {
  fs::path image;
  std::vector<fs::path> masks;  // empty only when masks are optional and none was found
  int label = 0;                // index into Dataset::classes; 0 in the flat layout
  std::string name;             // "CLASS/X" or "X": unique, for logs and output files
};

struct Dataset {
  Layout layout = Layout::flat;
  std::vector<std::string> classes;  // folder names, sorted; empty in the flat layout
  std::vector<Sample> samples;       // by class, then by file name
  std::vector<size_t> class_counts() const;
  std::string summary() const;       // e.g. "busi layout, 624 images: benign 350, ..."
};

struct ScanOptions {
  bool masks_required = true;  // an image without a mask is an error
  bool check_sizes = true;     // read headers: a mask must have its image's size
};

// `masks_dir` empty: masks sit beside the images. Throws sono::Error for a missing folder,
// an image without a mask (named), a mask whose size differs from its image's (both named),
// a class folder without images, or no images at all.
Dataset scan_dataset(const fs::path& images_dir, const fs::path& masks_dir = {},
                     const ScanOptions& options = {});

bool is_image_file(const fs::path& file);  // .png .jpg .jpeg .bmp .dcm, any case

// "benign 350, malignant 168, normal 106"; past 12 classes "200 classes of 60 images" (or "of
// 12-80 images"): a folder of many classes would otherwise fill logs and checkpoint cards.
std::string class_counts_text(const std::vector<std::string>& classes, const std::vector<size_t>& counts);

}  // namespace sono::data
