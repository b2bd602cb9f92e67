#pragma once
// Running the tools as users do, from tests: a command line's exit status and output, and a
// column of the CSV logs the training tools write.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace sono::test {

struct CommandRun {
  int status = -1;
  std::string output;  // stdout and stderr
  double seconds = 0;
};

inline CommandRun run_command(const std::string& command) {
  auto start = std::chrono::steady_clock::now();
  CommandRun r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe);
  std::array<char, 4096> buffer;
  while (size_t n = fread(buffer.data(), 1, buffer.size(), pipe)) r.output.append(buffer.data(), n);
  int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

// The column of a CSV log, by name.
inline std::vector<double> csv_column(const std::filesystem::path& csv, const std::string& name) {
  std::ifstream in(csv);
  std::string line, cell;
  std::getline(in, line);
  std::istringstream header(line);
  int index = -1;
  for (int i = 0; std::getline(header, cell, ','); ++i)
    if (cell == name) index = i;
  REQUIRE(index >= 0);
  std::vector<double> values;
  while (std::getline(in, line)) {
    std::istringstream cells(line);
    for (int i = 0; std::getline(cells, cell, ','); ++i)
      if (i == index) values.push_back(std::stod(cell));
  }
  return values;
}

}  // namespace sono::test
