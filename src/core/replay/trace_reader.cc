#include "src/core/replay/trace_reader.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace kvtier::replay {
namespace {

constexpr int kMaxNesting = 64;

// A cursor over one line. Errors name the line and, for syntax errors, the
// 1-based column.
class LineParser {
 public:
  LineParser(absl::string_view text, uint64_t line) : text_(text), line_(line) {}

  absl::StatusOr<TraceRequest> Parse(const TraceOptions& options) {
    TraceRequest r;
    r.line = line_;
    bool seen_timestamp = false, seen_input = false, seen_output = false, seen_ids = false;
    SkipSpace();
    if (!Consume('{')) return Syntax("expected '{' to open the request object");
    SkipSpace();
    if (!Consume('}')) {
      for (;;) {
        SkipSpace();
        std::string key;
        if (absl::Status s = ParseString(&key); !s.ok()) return s;
        SkipSpace();
        if (!Consume(':')) return Syntax(absl::StrCat("expected ':' after key '", key, "'"));
        SkipSpace();
        absl::Status s;
        if (key == "timestamp") {
          if (absl::Status d = Once(key, &seen_timestamp); !d.ok()) return d;
          s = ParseInt(key, &r.timestamp_ms);
        } else if (key == "input_length") {
          if (absl::Status d = Once(key, &seen_input); !d.ok()) return d;
          s = ParseUint(key, &r.input_length);
        } else if (key == "output_length") {
          if (absl::Status d = Once(key, &seen_output); !d.ok()) return d;
          s = ParseUint(key, &r.output_length);
        } else if (key == "hash_ids") {
          if (absl::Status d = Once(key, &seen_ids); !d.ok()) return d;
          s = ParseIdArray(key, &r.hash_ids);
        } else {
          s = SkipValue(0);
        }
        if (!s.ok()) return s;
        SkipSpace();
        if (Consume('}')) break;
        if (!Consume(',')) return Syntax("expected ',' or '}' after a value");
      }
    }
    SkipSpace();
    if (pos_ != text_.size()) return Syntax("unexpected text after the request object");
    for (auto [seen, name] :
         {std::pair{seen_timestamp, "timestamp"}, std::pair{seen_input, "input_length"},
          std::pair{seen_output, "output_length"}, std::pair{seen_ids, "hash_ids"}}) {
      if (!seen) return FieldError(name, "missing");
    }
    if (options.block_tokens != 0) {
      const uint64_t want = r.input_length / options.block_tokens +
                            (r.input_length % options.block_tokens != 0 ? 1 : 0);
      if (r.hash_ids.size() != want) {
        return FieldError("hash_ids", absl::StrCat(r.hash_ids.size(), " ids, but input_length ",
                                                   r.input_length, " needs ", want, " blocks of ",
                                                   options.block_tokens, " tokens"));
      }
    }
    return r;
  }

 private:
  absl::Status Syntax(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("trace line ", line_, ", column ", pos_ + 1, ": ", what));
  }
  absl::Status FieldError(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("trace line ", line_, ": field '", field, "': ", what));
  }
  absl::Status Once(absl::string_view field, bool* seen) const {
    if (*seen) return FieldError(field, "appears twice");
    *seen = true;
    return absl::OkStatus();
  }

  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\r' || text_[pos_] == '\n')) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool AtDigit() const { return pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9'; }

  // A JSON string; escapes are decoded (\u escapes to UTF-8, surrogate pairs
  // joined).
  absl::Status ParseString(std::string* out) {
    if (!Consume('"')) return Syntax("expected '\"' to open a key or string");
    for (;;) {
      if (pos_ >= text_.size()) return Syntax("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return absl::OkStatus();
      if (static_cast<unsigned char>(c) < 0x20) return Syntax("control character inside a string");
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= text_.size()) return Syntax("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out->push_back(e);
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t cp = 0;
          if (absl::Status s = Hex4(&cp); !s.ok()) return s;
          if (cp >= 0xD800 && cp < 0xDC00) {
            uint32_t lo = 0;
            if (!Consume('\\') || !Consume('u')) return Syntax("lone high surrogate in \\u escape");
            if (absl::Status s = Hex4(&lo); !s.ok()) return s;
            if (lo < 0xDC00 || lo >= 0xE000) return Syntax("bad low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            return Syntax("lone low surrogate in \\u escape");
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          --pos_;
          return Syntax(absl::StrCat("unknown escape '\\", std::string(1, e), "'"));
      }
    }
  }
  absl::Status Hex4(uint32_t* out) {
    if (text_.size() - pos_ < 4) return Syntax("\\u escape needs four hex digits");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[pos_];
      v <<= 4;
      if (h >= '0' && h <= '9') {
        v |= static_cast<uint32_t>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        v |= static_cast<uint32_t>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        v |= static_cast<uint32_t>(h - 'A' + 10);
      } else {
        return Syntax("\\u escape needs four hex digits");
      }
      ++pos_;
    }
    *out = v;
    return absl::OkStatus();
  }
  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  // Digits of a non-negative integer no larger than `limit` into *out.
  // Returns nullptr, or why the text is not such a number. A fraction or an
  // exponent is refused: every number this format defines is an integer.
  const char* Digits(uint64_t limit, uint64_t* out) {
    if (!AtDigit()) return "expected a non-negative integer";
    if (text_[pos_] == '0' && pos_ + 1 < text_.size() && text_[pos_ + 1] >= '0' &&
        text_[pos_ + 1] <= '9') {
      return "leading zero in a number";
    }
    uint64_t v = 0;
    while (AtDigit()) {
      const uint64_t d = static_cast<uint64_t>(text_[pos_] - '0');
      if (v > (limit - d) / 10) return "number out of range";
      v = v * 10 + d;
      ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
      return "expected an integer, found a fraction or exponent";
    }
    *out = v;
    return nullptr;
  }
  absl::Status ParseUint(absl::string_view field, uint64_t* out) {
    if (pos_ < text_.size() && text_[pos_] == '-') return FieldError(field, "must not be negative");
    if (const char* e = Digits(std::numeric_limits<uint64_t>::max(), out)) {
      return FieldError(field, e);
    }
    return absl::OkStatus();
  }
  absl::Status ParseInt(absl::string_view field, int64_t* out) {
    const bool negative = Consume('-');
    uint64_t v = 0;
    const uint64_t limit =
        static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + (negative ? 1 : 0);
    if (const char* e = Digits(limit, &v)) return FieldError(field, e);
    *out = negative ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
    return absl::OkStatus();
  }
  absl::Status ParseIdArray(absl::string_view field, std::vector<uint64_t>* out) {
    if (!Consume('[')) return FieldError(field, "expected an array of non-negative integers");
    SkipSpace();
    if (Consume(']')) return absl::OkStatus();
    for (;;) {
      SkipSpace();
      uint64_t id = 0;
      const char* e = pos_ < text_.size() && text_[pos_] == '-'
                          ? "must not be negative"
                          : Digits(std::numeric_limits<uint64_t>::max(), &id);
      if (e != nullptr) return FieldError(field, absl::StrCat("element ", out->size(), ": ", e));
      out->push_back(id);
      SkipSpace();
      if (Consume(']')) return absl::OkStatus();
      if (!Consume(',')) {
        return FieldError(field, absl::StrCat("expected ',' or ']' after element ", out->size() - 1,
                                              " (column ", pos_ + 1, ")"));
      }
    }
  }

  // Skips any JSON value under an unknown key.
  absl::Status SkipValue(int depth) {
    if (depth > kMaxNesting) return Syntax("values nested too deeply");
    if (pos_ >= text_.size()) return Syntax("expected a value");
    const char c = text_[pos_];
    if (c == '"') {
      std::string ignored;
      return ParseString(&ignored);
    }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++pos_;
      SkipSpace();
      if (Consume(close)) return absl::OkStatus();
      for (;;) {
        SkipSpace();
        if (c == '{') {
          std::string ignored;
          if (absl::Status s = ParseString(&ignored); !s.ok()) return s;
          SkipSpace();
          if (!Consume(':')) return Syntax("expected ':' in an object");
          SkipSpace();
        }
        if (absl::Status s = SkipValue(depth + 1); !s.ok()) return s;
        SkipSpace();
        if (Consume(close)) return absl::OkStatus();
        if (!Consume(','))
          return Syntax(absl::StrCat("expected ',' or '", std::string(1, close), "'"));
      }
    }
    for (absl::string_view literal : {"true", "false", "null"}) {
      if (text_.substr(pos_, literal.size()) == literal) {
        pos_ += literal.size();
        return absl::OkStatus();
      }
    }
    // A number: -?digits(.digits)?([eE][+-]?digits)?
    const size_t start = pos_;
    Consume('-');
    if (!AtDigit()) {
      pos_ = start;
      return Syntax("expected a value");
    }
    if (Consume('0') && AtDigit()) return Syntax("leading zero in a number");
    while (AtDigit()) ++pos_;
    if (Consume('.')) {
      if (!AtDigit()) return Syntax("expected digits after '.'");
      while (AtDigit()) ++pos_;
    }
    if (Consume('e') || Consume('E')) {
      if (!Consume('+')) Consume('-');
      if (!AtDigit()) return Syntax("expected digits in an exponent");
      while (AtDigit()) ++pos_;
    }
    return absl::OkStatus();
  }

  absl::string_view text_;
  uint64_t line_;
  size_t pos_ = 0;
};

}  // namespace

absl::Status TraceOptions::Validate() const { return absl::OkStatus(); }

absl::StatusOr<TraceRequest> ParseTraceLine(absl::string_view line, uint64_t line_number,
                                            const TraceOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return LineParser(line, line_number).Parse(options);
}

absl::StatusOr<std::vector<TraceRequest>> ParseTrace(absl::string_view text,
                                                     const TraceOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::vector<TraceRequest> out;
  uint64_t line_number = 0;
  while (!text.empty()) {
    ++line_number;
    const size_t nl = text.find('\n');
    absl::string_view line = text.substr(0, nl);
    text = nl == absl::string_view::npos ? absl::string_view() : text.substr(nl + 1);
    if (line.find_first_not_of(" \t\r") == absl::string_view::npos) continue;
    absl::StatusOr<TraceRequest> r = LineParser(line, line_number).Parse(options);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  if (options.check_chains) {
    if (absl::Status s = CheckPrefixChains(out); !s.ok()) return s;
  }
  return out;
}

absl::StatusOr<std::vector<TraceRequest>> ReadTraceFile(const std::string& path,
                                                        const TraceOptions& options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string what = absl::StrCat("trace file ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(what);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(what);
    return absl::InternalError(what);
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("trace file ", path, ": read failed"));
  absl::StatusOr<std::vector<TraceRequest>> r = ParseTrace(buf.str(), options);
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat(path, ": ", r.status().message()));
  }
  return r;
}

absl::Status CheckPrefixChains(absl::Span<const TraceRequest> requests) {
  struct Seen {
    std::optional<uint64_t> predecessor;  // nullopt: first in its request
    uint64_t line;
  };
  absl::flat_hash_map<uint64_t, Seen> seen;
  for (size_t r = 0; r < requests.size(); ++r) {
    const TraceRequest& req = requests[r];
    const uint64_t where = req.line != 0 ? req.line : r + 1;
    for (size_t i = 0; i < req.hash_ids.size(); ++i) {
      std::optional<uint64_t> pred;
      if (i > 0) pred = req.hash_ids[i - 1];
      auto [it, inserted] = seen.try_emplace(req.hash_ids[i], Seen{pred, where});
      if (inserted || it->second.predecessor == pred) continue;
      auto describe = [](const std::optional<uint64_t>& p) {
        return p.has_value() ? absl::StrCat("follows ", *p) : std::string("is first");
      };
      return absl::InvalidArgumentError(
          absl::StrCat("trace line ", where, ": field 'hash_ids': id ", req.hash_ids[i],
                       " at position ", i, " ", describe(pred), ", but on line ", it->second.line,
                       " it ", describe(it->second.predecessor), ": ids are not prefix-chained"));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier::replay
