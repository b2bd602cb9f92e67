#pragma once
// CSV as RFC 4180 writes it (a field with a comma, a quote or a line end is quoted, quotes
// doubled), for tables a later run reads back: predict --skip-existing resumes from its CSV.
#include <string>
#include <string_view>
#include <vector>

namespace sono::app {

std::string csv_field(const std::string& text);
// A number as the tools' CSVs write it: 6 significant digits (probabilities, Dice, areas).
std::string csv_number(double value);
// The fields joined by commas, with the line end.
std::string csv_row(const std::vector<std::string>& fields);

// The records of `text`, each ended by a line end; a last record without one (a run killed
// while writing it) is left out.
std::vector<std::vector<std::string>> csv_records(std::string_view text);

}  // namespace sono::app
