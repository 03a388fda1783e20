#include "src/cli/report.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "src/common/json_escape.h"

namespace kvtier::cli {

void Table::Print(FILE* out) const {
  std::vector<size_t> width(header_.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  };
  measure(header_);
  for (const auto& r : rows_) measure(r);
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < width.size(); ++i) {
      std::string cell = i < row.size() ? row[i] : "";
      // First column left-aligned (labels), the others right-aligned (numbers).
      if (i == 0) {
        line += cell + std::string(width[i] - cell.size(), ' ');
      } else {
        line += "  " + std::string(width[i] - cell.size(), ' ') + cell;
      }
    }
    std::fprintf(out, "%s\n", line.c_str());
  };
  print_row(header_);
  size_t total = 0;
  for (size_t w : width) total += w + 2;
  std::fprintf(out, "%s\n", std::string(total > 2 ? total - 2 : 0, '-').c_str());
  for (const auto& r : rows_) print_row(r);
}

Json Json::Object() {
  Json j;
  j.kind_ = Kind::kObject;
  return j;
}
Json Json::Array() {
  Json j;
  j.kind_ = Kind::kArray;
  return j;
}
Json::Json(double v) : kind_(Kind::kNumber), number_(v) {}
Json::Json(int64_t v) : kind_(Kind::kInteger), integer_(v) {}
Json::Json(uint64_t v)
    : kind_(Kind::kInteger), integer_(static_cast<int64_t>(v)), unsigned_(true) {}
Json::Json(int v) : kind_(Kind::kInteger), integer_(v) {}
Json::Json(bool v) : kind_(Kind::kBool), bool_(v) {}
Json::Json(std::string v) : kind_(Kind::kString), string_(std::move(v)) {}
Json::Json(const char* v) : kind_(Kind::kString), string_(v) {}

Json& Json::Set(const std::string& key, Json value) {
  kind_ = Kind::kObject;
  for (auto& [k, v] : members_) {
    if (k == key) {
      v = std::move(value);
      return *this;
    }
  }
  members_.emplace_back(key, std::move(value));
  return *this;
}

Json& Json::Push(Json value) {
  kind_ = Kind::kArray;
  items_.push_back(std::move(value));
  return *this;
}

namespace {

std::string Quote(const std::string& s) {
  // Appended piece by piece: GCC 12 at -O3 misreports `"\"" + ...` (-Wrestrict).
  std::string out = "\"";
  out += JsonEscape(s);
  out += '"';
  return out;
}

}  // namespace

std::string Json::Dump() const {
  switch (kind_) {
    case Kind::kNull:
      return "null";
    case Kind::kBool:
      return bool_ ? "true" : "false";
    case Kind::kInteger:
      return unsigned_ ? absl::StrCat(static_cast<uint64_t>(integer_)) : absl::StrCat(integer_);
    case Kind::kNumber:
      if (!std::isfinite(number_)) return "null";
      return absl::StrFormat("%.6g", number_);
    case Kind::kString:
      return Quote(string_);
    case Kind::kArray: {
      std::string out = "[";
      for (size_t i = 0; i < items_.size(); ++i) {
        if (i) out += ",";
        out += items_[i].Dump();
      }
      return out + "]";
    }
    case Kind::kObject: {
      std::string out = "{";
      for (size_t i = 0; i < members_.size(); ++i) {
        if (i) out += ",";
        out += Quote(members_[i].first) + ":" + members_[i].second.Dump();
      }
      return out + "}";
    }
  }
  return "null";
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return absl::StrCat(bytes, " B");
  if (v == std::floor(v)) return absl::StrFormat("%.0f %s", v, units[u]);
  return absl::StrFormat("%.2f %s", v, units[u]);
}

std::string HumanRate(double bytes_per_second) {
  if (bytes_per_second >= 1e9) return absl::StrFormat("%.2f GB/s", bytes_per_second / 1e9);
  if (bytes_per_second >= 1e6) return absl::StrFormat("%.1f MB/s", bytes_per_second / 1e6);
  return absl::StrFormat("%.1f kB/s", bytes_per_second / 1e3);
}

std::string Fixed(double value, int digits) { return absl::StrFormat("%.*f", digits, value); }

Progress::Progress(std::string label, uint64_t total)
    : label_(std::move(label)), total_(total), enabled_(isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() { Finish(); }

void Progress::Update(uint64_t done) {
  if (!enabled_ || finished_ || total_ == 0) return;
  int permille = static_cast<int>(std::min<uint64_t>(done, total_) * 1000 / total_);
  if (permille == last_permille_) return;
  last_permille_ = permille;
  constexpr int kWidth = 30;
  int filled = permille * kWidth / 1000;
  std::fprintf(stderr, "\r%s [%s%s] %5.1f%% (%llu/%llu)", label_.c_str(),
               std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(),
               permille / 10.0, static_cast<unsigned long long>(done),
               static_cast<unsigned long long>(total_));
  std::fflush(stderr);
}

void Progress::Finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  std::fprintf(stderr, "\r%s\r", std::string(label_.size() + 60, ' ').c_str());
  std::fflush(stderr);
}

}  // namespace kvtier::cli
