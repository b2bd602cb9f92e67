#include "tools/data/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace sono::data {

std::string markup_escaped(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

constexpr double kPanelWidth = 480, kPanelHeight = 320, kTitleHeight = 30;
constexpr double kLeft = 64, kRight = 16, kTop = 28, kBottom = 48;  // plot margins in a panel
const char* const kColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"};

std::string num(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f", v);
  return buffer;
}

// An axis over the finite values, widened to whole 1-2-5 steps.
struct Axis {
  double lo = 0, hi = 1, step = 0.2;

  static Axis fit(double lo, double hi) {
    if (!(lo <= hi)) lo = 0, hi = 1;  // no finite value
    if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
    double raw = (hi - lo) / 5, magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    double step = magnitude * (raw / magnitude <= 1 ? 1 : raw / magnitude <= 2 ? 2 : raw / magnitude <= 5 ? 5 : 10);
    return {std::floor(lo / step + 1e-9) * step, std::ceil(hi / step - 1e-9) * step, step};
  }
  std::vector<double> ticks() const {
    std::vector<double> t;
    for (double v = lo; v <= hi + step * 1e-6; v += step) t.push_back(std::abs(v) < step * 1e-6 ? 0 : v);
    return t;
  }
  std::string label(double v) const {
    int digits = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.*f", digits, v);
    return buffer;
  }
};

Axis fit_values(const std::vector<Series>& series, bool x) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
        double v = x ? s.x[i] : s.y[i];
        lo = std::min(lo, v), hi = std::max(hi, v);
      }
  return Axis::fit(lo, hi);
}

void draw_panel(std::ostream& os, const Panel& p, double ox, double oy) {
  const double w = kPanelWidth - kLeft - kRight, h = kPanelHeight - kTop - kBottom;
  Axis ax = fit_values(p.series, true), ay = fit_values(p.series, false);
  auto px = [&](double v) { return ox + kLeft + (v - ax.lo) / (ax.hi - ax.lo) * w; };
  auto py = [&](double v) { return oy + kTop + h - (v - ay.lo) / (ay.hi - ay.lo) * h; };

  os << "<text x=\"" << num(ox + kPanelWidth / 2) << "\" y=\"" << num(oy + 18)
     << "\" text-anchor=\"middle\" font-weight=\"bold\">" << markup_escaped(p.title) << "</text>\n";
  for (double v : ay.ticks())
    os << "<line x1=\"" << num(px(ax.lo)) << "\" y1=\"" << num(py(v)) << "\" x2=\"" << num(px(ax.hi)) << "\" y2=\""
       << num(py(v)) << "\" stroke=\"#e0e0e0\"/>\n<text x=\"" << num(px(ax.lo) - 6) << "\" y=\"" << num(py(v) + 4)
       << "\" text-anchor=\"end\">" << ay.label(v) << "</text>\n";
  for (double v : ax.ticks())
    os << "<text x=\"" << num(px(v)) << "\" y=\"" << num(py(ay.lo) + 16) << "\" text-anchor=\"middle\">"
       << ax.label(v) << "</text>\n";
  os << "<rect x=\"" << num(px(ax.lo)) << "\" y=\"" << num(py(ay.hi)) << "\" width=\"" << num(w) << "\" height=\""
     << num(h) << "\" fill=\"none\" stroke=\"#333\"/>\n";
  os << "<text x=\"" << num(ox + kLeft + w / 2) << "\" y=\"" << num(oy + kPanelHeight - 10)
     << "\" text-anchor=\"middle\">" << markup_escaped(p.x_label) << "</text>\n";
  if (!p.y_label.empty())
    os << "<text transform=\"translate(" << num(ox + 14) << "," << num(oy + kTop + h / 2)
       << ") rotate(-90)\" text-anchor=\"middle\">" << markup_escaped(p.y_label) << "</text>\n";
  // The legend goes in the right-hand corner, top or bottom, that the curves cross less.
  int top = 0, bottom = 0;
  for (const auto& s : p.series)
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i]) || px(s.x[i]) < px(ax.hi) - 140) continue;
      double y = py(s.y[i]) - (oy + kTop);
      if (y < h / 3) ++top;
      else if (y > 2 * h / 3) ++bottom;
    }
  const double legend_top = top <= bottom ? oy + kTop + 14 : oy + kTop + h - 16.0 * p.series.size() + 4;

  for (size_t k = 0; k < p.series.size(); ++k) {
    const Series& s = p.series[k];
    const char* colour = kColours[k % std::size(kColours)];
    std::string points;  // the current run of finite points; NaN ends a run
    auto flush = [&] {
      if (!points.empty())
        os << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\" points=\"" << points << "\"/>\n";
      points.clear();
    };
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
        flush();
        continue;
      }
      points.append(points.empty() ? "" : " ").append(num(px(s.x[i]))).append(",").append(num(py(s.y[i])));
      os << "<circle cx=\"" << num(px(s.x[i])) << "\" cy=\"" << num(py(s.y[i])) << "\" r=\"2.5\" fill=\"" << colour
         << "\"/>\n";
    }
    flush();
    double ly = legend_top + 16 * k, lx = px(ax.hi) - 130;
    os << "<line x1=\"" << num(lx) << "\" y1=\"" << num(ly - 4) << "\" x2=\"" << num(lx + 18) << "\" y2=\""
       << num(ly - 4) << "\" stroke=\"" << colour << "\" stroke-width=\"2\"/>\n<text x=\"" << num(lx + 24)
       << "\" y=\"" << num(ly) << "\">" << markup_escaped(s.name) << "</text>\n";
  }
}

}  // namespace

std::string line_chart_svg(const std::string& title, const std::vector<Panel>& panels) {
  double width = kPanelWidth * std::max<size_t>(panels.size(), 1), height = kPanelHeight + kTitleHeight;
  std::ostringstream os;
  os << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width
     << "\" height=\"" << height << "\" viewBox=\"0 0 " << width << " " << height
     << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << num(width / 2) << "\" y=\"20\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">"
     << markup_escaped(title) << "</text>\n";
  for (size_t i = 0; i < panels.size(); ++i) draw_panel(os, panels[i], kPanelWidth * i, kTitleHeight);
  os << "</svg>\n";
  return os.str();
}

}  // namespace sono::data
