#pragma once
// A small command-line parser: `--name value`, `--name=value` and boolean `--name`; dashes and
// underscores in names are interchangeable (predict's --seg_model and --seg-model are one flag).
#include <map>
#include <string>
#include <vector>

namespace sono::app {

class Cli {
 public:
  Cli(std::string program, std::string summary);

  // Declares a flag; `fallback` empty with required=true makes it mandatory.
  Cli& option(const std::string& name, const std::string& fallback, const std::string& help,
              bool required = false);
  Cli& flag(const std::string& name, const std::string& help);

  // Returns false when --help was given (usage already printed). Throws sono::Error on an
  // unknown flag, a missing value or a missing required flag.
  bool parse(int argc, char** argv);

  std::string str(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  double real(const std::string& name) const;
  bool is_set(const std::string& name) const;  // a flag was given, or an option has a value
  std::string usage() const;

 private:
  struct Spec {
    std::string name, fallback, help;
    bool required = false, boolean = false;
  };
  static std::string normalise(std::string name);
  const Spec& spec(const std::string& name) const;

  std::string program_, summary_;
  std::vector<Spec> specs_;
  std::map<std::string, std::string> values_;
};

}  // namespace sono::app
