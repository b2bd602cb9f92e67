#pragma once
// The per-epoch record of a training run: a CSV rewritten atomically after every epoch (a
// crash never leaves it half written) and an SVG of the loss and metric curves.
#include <filesystem>
#include <string>
#include <vector>

namespace sono::data {

class TrainingLog {
 public:
  // The first column is the x axis of the plot, e.g. {"epoch", "train_loss", "val_loss", "val_dice"}.
  explicit TrainingLog(std::vector<std::string> columns);

  void add(const std::vector<double>& row);  // one value per column
  const std::vector<std::string>& columns() const { return columns_; }
  size_t size() const { return rows_.size(); }
  std::vector<double> column(const std::string& name) const;

  std::string csv() const;  // header line, then one line per row; NaN as "nan"
  void write_csv(const std::filesystem::path& file) const;
  // Two panels against the first column, titled by their columns: `loss_columns` and
  // `metric_columns`.
  void write_svg(const std::filesystem::path& file, const std::string& title,
                 const std::vector<std::string>& loss_columns, const std::vector<std::string>& metric_columns) const;

 private:
  size_t index_of(const std::string& name) const;
  std::vector<std::string> columns_;
  std::vector<std::vector<double>> rows_;
};

}  // namespace sono::data
