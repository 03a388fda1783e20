#include "src/cli/flags.h"

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace kvtier::cli {

Flags::Flags(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      help_ = true;
      continue;
    }
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      positional_.push_back(a);
      continue;
    }
    std::string body = a.substr(2);
    size_t eq = body.find('=');
    if (eq != std::string::npos) {
      values_[body.substr(0, eq)] = body.substr(eq + 1);
    } else if (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) {
      values_[body] = args[++i];
    } else {
      values_[body] = "";
    }
  }
}

std::optional<std::string> Flags::Take(const std::string& name) {
  used_.insert(name);
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

bool Flags::Bool(const std::string& name) {
  auto v = Take(name);
  if (!v.has_value()) return false;
  std::string s = absl::AsciiStrToLower(*v);
  if (s.empty() || s == "true" || s == "1" || s == "yes") return true;
  if (s == "false" || s == "0" || s == "no") return false;
  // "--json pos": the value was a positional argument.
  positional_.push_back(*v);
  return true;
}

std::string Flags::String(const std::string& name, const std::string& def) {
  auto v = Take(name);
  if (!v.has_value()) return def;
  if (v->empty()) errors_.push_back(absl::StrCat("--", name, ": needs a value"));
  return *v;
}

std::string Flags::FileText(const std::string& name) {
  auto v = Take(name);
  if (!v.has_value()) return "";
  std::ifstream in(*v);
  if (!in.is_open()) {
    errors_.push_back(absl::StrCat("--", name, ": cannot read '", *v, "'"));
    return "";
  }
  std::stringstream text;
  text << in.rdbuf();
  if (absl::StripAsciiWhitespace(text.str()).empty()) {
    errors_.push_back(absl::StrCat("--", name, ": '", *v, "' is empty"));
  }
  return text.str();
}

int64_t Flags::Int(const std::string& name, int64_t def) {
  auto v = Take(name);
  if (!v.has_value()) return def;
  int64_t out;
  if (!absl::SimpleAtoi(*v, &out)) {
    errors_.push_back(absl::StrCat("--", name, ": '", *v, "' is not an integer"));
    return def;
  }
  return out;
}

double Flags::Double(const std::string& name, double def) {
  auto v = Take(name);
  if (!v.has_value()) return def;
  double out;
  if (!absl::SimpleAtod(*v, &out)) {
    errors_.push_back(absl::StrCat("--", name, ": '", *v, "' is not a number"));
    return def;
  }
  return out;
}

absl::StatusOr<uint64_t> ParseBytes(const std::string& text) {
  std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  size_t i = 0;
  while (i < t.size() && (absl::ascii_isdigit(t[i]) || t[i] == '.')) ++i;
  double number;
  if (i == 0 || !absl::SimpleAtod(t.substr(0, i), &number)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a byte size"));
  }
  std::string unit = t.substr(i);
  double mult = 1;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kib" || unit == "kb") {
    mult = 1024.0;
  } else if (unit == "m" || unit == "mib" || unit == "mb") {
    mult = 1024.0 * 1024;
  } else if (unit == "g" || unit == "gib" || unit == "gb") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "t" || unit == "tib" || unit == "tb") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "': unknown unit '", unit, "'"));
  }
  return static_cast<uint64_t>(number * mult);
}

uint64_t Flags::Bytes(const std::string& name, uint64_t def) {
  auto v = Take(name);
  if (!v.has_value()) return def;
  absl::StatusOr<uint64_t> b = ParseBytes(*v);
  if (!b.ok()) {
    errors_.push_back(absl::StrCat("--", name, ": ", b.status().message()));
    return def;
  }
  return *b;
}

std::vector<uint64_t> Flags::BytesList(const std::string& name, std::vector<uint64_t> def) {
  auto v = Take(name);
  if (!v.has_value()) return def;
  std::vector<uint64_t> out;
  for (absl::string_view part : absl::StrSplit(*v, ',', absl::SkipEmpty())) {
    absl::StatusOr<uint64_t> b = ParseBytes(std::string(part));
    if (!b.ok()) {
      errors_.push_back(absl::StrCat("--", name, ": ", b.status().message()));
      return def;
    }
    out.push_back(*b);
  }
  return out;
}

std::vector<int64_t> Flags::IntList(const std::string& name, std::vector<int64_t> def) {
  auto v = Take(name);
  if (!v.has_value()) return def;
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(*v, ',', absl::SkipEmpty())) {
    int64_t n;
    if (!absl::SimpleAtoi(part, &n)) {
      errors_.push_back(absl::StrCat("--", name, ": '", part, "' is not an integer"));
      return def;
    }
    out.push_back(n);
  }
  return out;
}

absl::Status Flags::Finish() const {
  std::vector<std::string> problems = errors_;
  for (const auto& [name, value] : values_) {
    if (!used_.contains(name)) problems.push_back(absl::StrCat("unknown flag --", name));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "; "));
}

}  // namespace kvtier::cli
