// Token files read again while a process runs.
//
// A Kubernetes Secret mounted as files is updated in place (the kubelet swaps
// the files by rename), so kvtierd and kvtier-index re-read their token files
// every `tls.reload_seconds` and set the Secrets their services check. With
// token lists (src/common/token_list.h) a token is then replaced without a
// restart and without a refused call.
//
// A file that cannot be read, is empty, or whose tokens the owner's check
// refuses leaves the tokens as they were; the warning names the setting and
// the reason (never a token) once, not at every round.
//
// Thread-safety: Add before the first Reload; Reload and ReloadIfDue from one
// thread at a time.
#ifndef KVTIER_SRC_SERVER_TOKEN_FILES_H_
#define KVTIER_SRC_SERVER_TOKEN_FILES_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "src/common/secret.h"
#include "src/server/log.h"

namespace kvtier::server {

class TokenFiles {
 public:
  // OK when `text` may replace `setting`'s tokens, else why not.
  using Check = std::function<absl::Status(const std::string& setting, const std::string& text)>;

  // `log` must outlive this object.
  TokenFiles(Logger* log, absl::Duration interval, Check check)
      : log_(log), interval_(interval), check_(std::move(check)) {}

  // `secret` is set from the file at `path` (the setting `setting`).
  void Add(std::string setting, std::string path, Secret secret);
  bool empty() const { return files_.empty(); }

  // Reads every file again and sets the Secrets whose tokens changed.
  void Reload();
  // Reload, when `interval` has passed since the last one (or construction).
  void ReloadIfDue(absl::Time now);

 private:
  struct File {
    std::string setting;
    std::string path;
    Secret secret;
    std::string last_error;  // of the last round; "" after a good one
  };

  Logger* const log_;
  const absl::Duration interval_;
  const Check check_;
  std::vector<File> files_;
  absl::Time next_ = absl::Now() + interval_;
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_TOKEN_FILES_H_
