#include "tools/app/cli.h"

#include <algorithm>
#include <iostream>
#include <sstream>

#include "tensor/error.h"

namespace sono::app {

Cli::Cli(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

std::string Cli::normalise(std::string name) {
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}

Cli& Cli::option(const std::string& name, const std::string& fallback, const std::string& help,
                 bool required) {
  specs_.push_back({normalise(name), fallback, help, required, false});
  return *this;
}

Cli& Cli::flag(const std::string& name, const std::string& help) {
  specs_.push_back({normalise(name), "", help, false, true});
  return *this;
}

const Cli::Spec& Cli::spec(const std::string& name) const {
  const std::string n = normalise(name);
  for (const Spec& s : specs_)
    if (s.name == n) return s;
  fail(program_, ": unknown option --", name, " (see --help)");
}

bool Cli::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << usage();
      return false;
    }
    SONO_CHECK(arg.rfind("--", 0) == 0, program_, ": unexpected argument '", arg, "' (see --help)");
    arg = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    const Spec& s = spec(arg);
    if (s.boolean) {
      values_[s.name] = has_value ? value : "1";
      continue;
    }
    if (!has_value) {
      SONO_CHECK(i + 1 < argc, program_, ": --", s.name, " needs a value");
      value = argv[++i];
    }
    values_[s.name] = value;
  }
  for (const Spec& s : specs_)
    SONO_CHECK(!s.required || values_.count(s.name), program_, ": --", s.name,
               " is required (see --help)");
  return true;
}

std::string Cli::str(const std::string& name) const {
  const Spec& s = spec(name);
  auto it = values_.find(s.name);
  return it == values_.end() ? s.fallback : it->second;
}

int64_t Cli::integer(const std::string& name) const {
  const std::string v = str(name);
  try {
    size_t used = 0;
    int64_t n = std::stoll(v, &used);
    if (used == v.size()) return n;
  } catch (const std::exception&) {
  }
  fail(program_, ": --", normalise(name), " expects an integer, got '", v, "'");
}

double Cli::real(const std::string& name) const {
  const std::string v = str(name);
  try {
    size_t used = 0;
    double x = std::stod(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  fail(program_, ": --", normalise(name), " expects a number, got '", v, "'");
}

bool Cli::is_set(const std::string& name) const {
  const Spec& s = spec(name);
  auto it = values_.find(s.name);
  return it != values_.end() ? it->second != "0" && it->second != "false" : false;
}

std::string Cli::usage() const {
  std::ostringstream os;
  os << "usage: " << program_ << " [options]\n\n" << summary_ << "\n\noptions:\n";
  for (const Spec& s : specs_) {
    std::string left = "  --" + s.name + (s.boolean ? "" : " " + std::string(s.required ? "VALUE" : "V"));
    os << left << std::string(left.size() < 28 ? 28 - left.size() : 1, ' ') << s.help;
    if (!s.boolean && !s.fallback.empty()) os << " (default: " << s.fallback << ")";
    if (s.required) os << " (required)";
    os << "\n";
  }
  os << "  --help                    show this help\n";
  return os.str();
}

}  // namespace sono::app
