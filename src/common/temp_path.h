// Unique temporary folders and files, for benchmarks and tests.
// Thread-safety: safe from any thread (mkdtemp and mkstemp are).
#ifndef KVTIER_SRC_COMMON_TEMP_PATH_H_
#define KVTIER_SRC_COMMON_TEMP_PATH_H_

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace kvtier {

// The six characters mkdtemp and mkstemp replace.
inline std::string TempSuffix() { return std::string(6, 'X'); }

// Creates a new folder `parent/prefix??????` and returns its path.
// Internal error naming the path and errno text when it cannot.
inline absl::StatusOr<std::string> MakeTempDir(const std::string& parent,
                                               const std::string& prefix) {
  std::string path = parent + "/" + prefix + TempSuffix();
  if (::mkdtemp(path.data()) == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot create a folder like ", path, ": ", std::strerror(errno)));
  }
  return path;
}

// Creates and opens a new file `parent/prefix??????`; returns its path and
// file descriptor (owned by the caller).
inline absl::StatusOr<std::pair<std::string, int>> MakeTempFile(const std::string& parent,
                                                                const std::string& prefix) {
  std::string path = parent + "/" + prefix + TempSuffix();
  int fd = ::mkstemp(path.data());
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot create a file like ", path, ": ", std::strerror(errno)));
  }
  return std::make_pair(path, fd);
}

// Removes `path` and everything under it when it goes out of scope (errors
// ignored), so a command that returns early leaves nothing behind.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(std::string path) : path_(std::move(path)) {}
  ~RemoveOnExit() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  RemoveOnExit(const RemoveOnExit&) = delete;
  RemoveOnExit& operator=(const RemoveOnExit&) = delete;

 private:
  std::string path_;
};

}  // namespace kvtier

#endif  // KVTIER_SRC_COMMON_TEMP_PATH_H_
