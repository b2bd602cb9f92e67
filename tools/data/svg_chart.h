#pragma once
// A small SVG line-chart writer for training curves: panels side by side, each with axes,
// ticks at 1-2-5 steps, a legend and one polyline per series (NaN values leave gaps).
#include <string>
#include <vector>

namespace sono::data {

struct Series {
  std::string name;
  std::vector<double> x, y;
};

struct Panel {
  std::string title, x_label, y_label;
  std::vector<Series> series;
};

// Text as SVG or HTML content or an attribute value: & < > " as entities.
std::string markup_escaped(const std::string& text);

std::string line_chart_svg(const std::string& title, const std::vector<Panel>& panels);

}  // namespace sono::data
