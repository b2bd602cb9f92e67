#pragma once
// predict's report of a folder run (--report): one self-contained HTML page, every picture
// embedded as a base64 PNG data URI, so the file can be mailed or archived on its own.
#include <string>
#include <string_view>
#include <vector>

#include "tools/data/image.h"

namespace sono::app {

// One scan as the report shows it.
struct ReportEntry {
  std::string image;                  // its file name
  size_t predicted = 0;               // index into the classes
  std::vector<double> probabilities;  // calibrated, one per class
  bool low_confidence = false;
  std::string outline_png;  // PNG bytes: the scan with the lesion outline
  std::string explain_png;  // PNG bytes of the Grad-CAM overlay; empty when not asked for
};

// The page: the entries sorted by the probability of "malignant" (of the last class when the
// classifier has none by that name), highest first; `note` is a line under the title.
std::string html_report(std::vector<ReportEntry> entries, const std::vector<std::string>& classes,
                        const std::string& note);

// What the report shows of a picture: at most `longest_side` pixels on its longer side.
std::string report_png(const data::Image& picture, int longest_side = 384);

std::string base64(std::string_view bytes);

}  // namespace sono::app
