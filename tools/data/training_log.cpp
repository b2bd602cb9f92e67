#include "tools/data/training_log.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "tensor/error.h"
#include "tensor/atomic_file.h"
#include "tools/data/svg_chart.h"

namespace sono::data {

TrainingLog::TrainingLog(std::vector<std::string> columns) : columns_(std::move(columns)) {
  SONO_CHECK(!columns_.empty(), "TrainingLog: no columns");
}

void TrainingLog::add(const std::vector<double>& row) {
  SONO_CHECK(row.size() == columns_.size(), "TrainingLog: a row of ", row.size(), " values for ", columns_.size(),
             " columns");
  rows_.push_back(row);
}

size_t TrainingLog::index_of(const std::string& name) const {
  auto it = std::find(columns_.begin(), columns_.end(), name);
  SONO_CHECK(it != columns_.end(), "TrainingLog: no column '", name, "'");
  return static_cast<size_t>(it - columns_.begin());
}

std::vector<double> TrainingLog::column(const std::string& name) const {
  size_t c = index_of(name);
  std::vector<double> values;
  for (const auto& row : rows_) values.push_back(row[c]);
  return values;
}

namespace {

std::string format_value(double v) {
  if (std::isnan(v)) return "nan";
  char buffer[32];
  if (v == std::floor(v) && std::abs(v) < 1e15) std::snprintf(buffer, sizeof buffer, "%.0f", v);
  else std::snprintf(buffer, sizeof buffer, "%.8g", v);
  return buffer;
}

}  // namespace

std::string TrainingLog::csv() const {
  std::string out;
  auto line = [&out](size_t n, auto cell) {
    for (size_t c = 0; c < n; ++c) out.append(c ? "," : "").append(cell(c));
    out += '\n';
  };
  line(columns_.size(), [&](size_t c) { return columns_[c]; });
  for (const auto& row : rows_) line(row.size(), [&](size_t c) { return format_value(row[c]); });
  return out;
}

void TrainingLog::write_csv(const std::filesystem::path& file) const { write_file_atomic(file, csv()); }

void TrainingLog::write_svg(const std::filesystem::path& file, const std::string& title,
                            const std::vector<std::string>& loss_columns,
                            const std::vector<std::string>& metric_columns) const {
  std::vector<double> x = column(columns_[0]);
  // A panel is titled by its columns where they fit on its title line; past that the legend
  // alone names them.
  auto panel = [&](const std::vector<std::string>& cols, const std::string& too_many) {
    std::string name;
    for (const auto& c : cols) name.append(name.empty() ? "" : ", ").append(c);
    Panel p{name.size() <= 60 ? name : too_many, columns_[0], "", {}};
    for (const auto& c : cols) p.series.push_back({c, x, column(c)});
    return p;
  };
  write_file_atomic(file, line_chart_svg(title, {panel(loss_columns, "losses"), panel(metric_columns, "metrics")}));
}

}  // namespace sono::data
