// A small flag parser for the kvtier CLI subcommands.
//
//   Flags f(args);                     // "--json --size 1MiB --threads=2 pos"
//   bool json = f.Bool("json");
//   auto size = f.Bytes("size", 1 << 20);   // accepts 4096, 64KiB, 1MiB, 2GiB
//   if (absl::Status s = f.Finish(); !s.ok()) ...   // unknown flags, bad values
//
// Thread-safety: none.
#ifndef KVTIER_SRC_CLI_FLAGS_H_
#define KVTIER_SRC_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier::cli {

class Flags {
 public:
  explicit Flags(const std::vector<std::string>& args);

  bool Help() const { return help_; }
  bool Bool(const std::string& name);
  std::string String(const std::string& name, const std::string& def);
  int64_t Int(const std::string& name, int64_t def);
  double Double(const std::string& name, double def);
  // Byte sizes: plain integers or with a B/KiB/MiB/GiB/TiB (or K/M/G/T) suffix.
  uint64_t Bytes(const std::string& name, uint64_t def);
  // A comma-separated list ("1,2,4" or "256KiB,1MiB").
  std::vector<uint64_t> BytesList(const std::string& name, std::vector<uint64_t> def);
  std::vector<int64_t> IntList(const std::string& name, std::vector<int64_t> def);
  // The text of the file the flag names ("" without the flag); a file that
  // cannot be read, or holds nothing, is an error.
  std::string FileText(const std::string& name);
  // Positional arguments (not starting with --).
  const std::vector<std::string>& Positional() const { return positional_; }

  // InvalidArgument for flags nobody asked for and values that did not parse.
  absl::Status Finish() const;

 private:
  std::optional<std::string> Take(const std::string& name);

  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
  std::vector<std::string> positional_;
  std::vector<std::string> errors_;
  bool help_ = false;
};

// Parses "1MiB", "64KiB", "4096", "2G". InvalidArgument otherwise.
absl::StatusOr<uint64_t> ParseBytes(const std::string& text);

}  // namespace kvtier::cli

#endif  // KVTIER_SRC_CLI_FLAGS_H_
