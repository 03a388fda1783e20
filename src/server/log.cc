#include "src/server/log.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "src/common/json_escape.h"

namespace kvtier::server {
namespace {

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("log.level: '", name, "' is not debug, info, warn or error"));
}

LogField::LogField(absl::string_view key, absl::string_view value)
    : json_(absl::StrCat("\"", JsonEscape(key), "\":\"", JsonEscape(value), "\"")) {}
LogField::LogField(absl::string_view key, int64_t value)
    : json_(absl::StrCat("\"", JsonEscape(key), "\":", value)) {}
LogField::LogField(absl::string_view key, uint64_t value)
    : json_(absl::StrCat("\"", JsonEscape(key), "\":", value)) {}
LogField::LogField(absl::string_view key, double value)
    : json_(absl::StrCat("\"", JsonEscape(key),
                         "\":", std::isfinite(value) ? absl::StrFormat("%.6g", value) : "null")) {}
LogField::LogField(absl::string_view key, bool value)
    : json_(absl::StrCat("\"", JsonEscape(key), "\":", value ? "true" : "false")) {}

void Logger::Log(LogLevel level, absl::string_view msg, std::initializer_list<LogField> fields) {
  if (!Enabled(level)) return;
  std::string line = absl::StrCat(
      "{\"ts\":\"", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
      "\",\"level\":\"", LevelName(level), "\",\"msg\":\"", JsonEscape(msg), "\"");
  for (const LogField& f : fields) absl::StrAppend(&line, ",", f.json());
  line += "}\n";
  absl::MutexLock lock(&mu_);
  std::fwrite(line.data(), 1, line.size(), out_);
  std::fflush(out_);
}

}  // namespace kvtier::server
