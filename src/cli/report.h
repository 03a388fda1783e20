// Output helpers for the kvtier CLI: aligned text tables for people, one JSON
// object for machines (`--json`), and a progress bar for long work.
// Thread-safety: none; each object is used by one thread.
#ifndef KVTIER_SRC_CLI_REPORT_H_
#define KVTIER_SRC_CLI_REPORT_H_

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace kvtier::cli {

// A table printed with aligned columns.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print(FILE* out = stdout) const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// A JSON value built in memory and printed once. Objects keep insertion order.
class Json {
 public:
  Json() = default;  // null
  static Json Object();
  static Json Array();
  Json(double v);       // NOLINT(google-explicit-constructor)
  Json(int64_t v);      // NOLINT(google-explicit-constructor)
  Json(uint64_t v);     // NOLINT(google-explicit-constructor)
  Json(int v);          // NOLINT(google-explicit-constructor)
  Json(bool v);         // NOLINT(google-explicit-constructor)
  Json(std::string v);  // NOLINT(google-explicit-constructor)
  Json(const char* v);  // NOLINT(google-explicit-constructor)

  // Object member (replaces an existing one); returns *this.
  Json& Set(const std::string& key, Json value);
  // Array element; returns *this.
  Json& Push(Json value);
  std::string Dump() const;

 private:
  enum class Kind { kNull, kBool, kNumber, kInteger, kString, kArray, kObject };
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  double number_ = 0;
  int64_t integer_ = 0;
  bool unsigned_ = false;
  std::string string_;
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

// "1.50 GiB", "256 KiB", "17 B".
std::string HumanBytes(uint64_t bytes);
// "12.3 GB/s" from bytes and seconds (decimal units, as memcpy figures are).
std::string HumanRate(double bytes_per_second);
// Fixed-point with `digits` decimals.
std::string Fixed(double value, int digits);

// A one-line progress bar on stderr, drawn only when stderr is a terminal.
class Progress {
 public:
  Progress(std::string label, uint64_t total);
  ~Progress();
  void Update(uint64_t done);
  void Finish();

 private:
  std::string label_;
  uint64_t total_;
  bool enabled_;
  bool finished_ = false;
  int last_permille_ = -1;
};

}  // namespace kvtier::cli

#endif  // KVTIER_SRC_CLI_REPORT_H_
