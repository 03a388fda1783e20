#include "src/server/token_files.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "src/server/config.h"

namespace kvtier::server {

void TokenFiles::Add(std::string setting, std::string path, Secret secret) {
  files_.push_back({std::move(setting), std::move(path), std::move(secret), ""});
}

void TokenFiles::ReloadIfDue(absl::Time now) {
  if (files_.empty() || now < next_) return;
  next_ = now + interval_;
  Reload();
}

void TokenFiles::Reload() {
  for (File& f : files_) {
    absl::StatusOr<std::string> text = ReadTokenFile(f.path, f.setting + "_file");
    absl::Status usable = text.status();
    if (usable.ok() && *text == f.secret.Get()) {
      f.last_error.clear();
      continue;
    }
    if (usable.ok() && check_ != nullptr) usable = check_(f.setting, *text);
    if (!usable.ok()) {
      if (f.last_error != usable.message()) {
        f.last_error = std::string(usable.message());
        log_->Warn("token file not taken: the previous tokens stay",
                   {{"setting", f.setting}, {"error", f.last_error}});
      }
      continue;
    }
    f.last_error.clear();
    f.secret.Set(*text);
    log_->Info(
        "token file read again",
        {{"setting", f.setting}, {"tokens", static_cast<uint64_t>(SplitTokens(*text).size())}});
  }
}

}  // namespace kvtier::server
