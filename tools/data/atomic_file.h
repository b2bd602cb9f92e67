#pragma once
// Whole-file writes that never leave a half-written file behind.
#include <filesystem>
#include <string_view>

namespace sono::data {

// Writes `bytes` to a temp file in `path`'s folder, flushes it to disk, then renames it over
// `path`. On any failure the temp file is removed, `path` keeps its old content, and a
// sono::Error names the file.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

}  // namespace sono::data
