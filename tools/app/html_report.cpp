#include "tools/app/html_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "tools/data/svg_chart.h"

namespace sono::app {

namespace {

std::string percent(double p) {
  char text[16];
  std::snprintf(text, sizeof text, "%.1f%%", 100 * p);
  return text;
}

std::string picture(const std::string& png, const std::string& alt) {
  return "<img src=\"data:image/png;base64," + base64(png) + "\" alt=\"" + data::markup_escaped(alt) + "\">";
}

size_t sort_class(const std::vector<std::string>& classes) {
  auto malignant = std::find(classes.begin(), classes.end(), "malignant");
  return malignant != classes.end() ? static_cast<size_t>(malignant - classes.begin()) : classes.size() - 1;
}

std::string entry_html(const ReportEntry& e, const std::vector<std::string>& classes, size_t key) {
  std::string html = "<section class=\"scan\" data-p-sort=\"" + std::to_string(e.probabilities.at(key)) + "\">\n";
  html += "<h2>" + data::markup_escaped(e.image) + "</h2>\n<p class=\"class\">" + data::markup_escaped(classes.at(e.predicted)) +
          " <b>" + percent(e.probabilities[e.predicted]) + "</b> confidence" +
          (e.low_confidence ? " <span class=\"low\">low confidence</span>" : "") + "</p>\n<p>";
  for (size_t c = 0; c < classes.size(); ++c) html += (c ? ", " : "") + data::markup_escaped(classes[c]) + " " + percent(e.probabilities[c]);
  html += "</p>\n<div class=\"pictures\">" + picture(e.outline_png, e.image + ": lesion outline");
  if (!e.explain_png.empty()) html += picture(e.explain_png, e.image + ": Grad-CAM");
  return html + "</div>\n</section>\n";
}

}  // namespace

std::string base64(std::string_view bytes) {
  static constexpr char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const size_t n = std::min<size_t>(3, bytes.size() - i);
    uint32_t v = 0;
    for (size_t k = 0; k < 3; ++k) v = v << 8 | (k < n ? static_cast<uint8_t>(bytes[i + k]) : 0);
    for (size_t k = 0; k < 4; ++k) out += k <= n ? digits[v >> (18 - 6 * k) & 63] : '=';
  }
  return out;
}

std::string report_png(const data::Image& picture, int longest_side) {
  const double scale = std::min(1.0, double(longest_side) / std::max(picture.height, picture.width));
  if (scale == 1.0) return data::encode_png(picture);
  const int height = std::max(1, static_cast<int>(std::lround(picture.height * scale)));
  const int width = std::max(1, static_cast<int>(std::lround(picture.width * scale)));
  return data::encode_png(data::resize_bilinear(picture, height, width));
}

std::string html_report(std::vector<ReportEntry> entries, const std::vector<std::string>& classes,
                        const std::string& note) {
  const size_t key = sort_class(classes);
  std::stable_sort(entries.begin(), entries.end(), [key](const ReportEntry& a, const ReportEntry& b) {
    return a.probabilities.at(key) > b.probabilities.at(key);
  });
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>sono predict report</title>\n"
      "<style>\n"
      "body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }\n"
      ".scan { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin: 0 0 1em; }\n"
      ".scan h2 { font-size: 1.05em; margin: 0 0 0.3em; }\n"
      ".scan p { margin: 0.2em 0; }\n"
      ".low { background: #c62828; color: #fff; padding: 0 0.4em; border-radius: 3px; }\n"
      ".pictures img { max-width: 48%; margin: 0.4em 0.4em 0 0; vertical-align: top; }\n"
      "</style>\n</head>\n<body>\n<h1>sono predict: " +
      std::to_string(entries.size()) + " scans, by " + data::markup_escaped(classes.at(key)) +
      " probability</h1>\n<p>" + data::markup_escaped(note) + "</p>\n";
  for (const ReportEntry& e : entries) html += entry_html(e, classes, key);
  return html + "</body>\n</html>\n";
}

}  // namespace sono::app
