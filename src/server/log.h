// Structured logs: one JSON object per line, written to stderr.
//
//   {"ts":"2026-11-25T10:00:00.123Z","level":"info","msg":"listening","socket":"/run/kvtier.sock"}
//
// Every line has ts (UTC, milliseconds), level and msg; the fields follow as
// top-level members. Lines below the configured level are dropped.
//
// Thread-safety: Log may be called from any thread; each line is written
// whole, under a lock.
#ifndef KVTIER_SRC_SERVER_LOG_H_
#define KVTIER_SRC_SERVER_LOG_H_

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvtier::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// "debug", "info", "warn", "error"; InvalidArgument otherwise.
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);

// One field of a log line; the value is kept as JSON text.
class LogField {
 public:
  LogField(absl::string_view key, absl::string_view value);
  LogField(absl::string_view key, const std::string& value)
      : LogField(key, absl::string_view(value)) {}
  LogField(absl::string_view key, const char* value) : LogField(key, absl::string_view(value)) {}
  LogField(absl::string_view key, int64_t value);
  LogField(absl::string_view key, uint64_t value);
  LogField(absl::string_view key, int value) : LogField(key, static_cast<int64_t>(value)) {}
  LogField(absl::string_view key, unsigned value) : LogField(key, static_cast<uint64_t>(value)) {}
  LogField(absl::string_view key, double value);
  LogField(absl::string_view key, bool value);

  const std::string& json() const { return json_; }  // "\"key\":value"

 private:
  std::string json_;
};

// Lets a repeated warning through at most once per `interval`; the next
// one says how many were held back meanwhile.
//
// Thread-safety: thread-safe.
class LogThrottle {
 public:
  explicit LogThrottle(absl::Duration interval) : interval_(interval) {}
  // Whether to log now; `held_back` gets the count not logged since the last.
  bool Allow(absl::Time now, uint64_t* held_back) {
    absl::MutexLock lock(&mu_);
    if (now < next_) {
      ++held_back_;
      return false;
    }
    next_ = now + interval_;
    *held_back = held_back_;
    held_back_ = 0;
    return true;
  }

 private:
  const absl::Duration interval_;
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t held_back_ ABSL_GUARDED_BY(mu_) = 0;
};

class Logger {
 public:
  explicit Logger(LogLevel min_level, FILE* out = stderr) : min_level_(min_level), out_(out) {}

  bool Enabled(LogLevel level) const { return level >= min_level_; }
  void Log(LogLevel level, absl::string_view msg, std::initializer_list<LogField> fields = {});
  void Debug(absl::string_view msg, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kDebug, msg, fields);
  }
  void Info(absl::string_view msg, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kInfo, msg, fields);
  }
  void Warn(absl::string_view msg, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kWarn, msg, fields);
  }
  void Error(absl::string_view msg, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kError, msg, fields);
  }

 private:
  const LogLevel min_level_;
  absl::Mutex mu_;
  FILE* const out_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_LOG_H_
