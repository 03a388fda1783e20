// Token settings that hold several tokens, one a line.
//
// Every secret kvtier accepts (kvtierd's admin, tenant, peer and status
// tokens; kvtier-index's API and status tokens) may list several tokens. A
// process accepts each of them and sends the first where it sends the
// setting itself (the peer token, the index token). A shared secret is then
// replaced in three steps, each rolled out everywhere before the next:
// "old, new" (everyone accepts both and still sends the old), "new, old"
// (everyone sends the new), "new". No step has one side refusing the other.
//
// Lines are trimmed of surrounding white space; blank lines are skipped.
#ifndef KVTIER_SRC_COMMON_TOKEN_LIST_H_
#define KVTIER_SRC_COMMON_TOKEN_LIST_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "src/common/constant_time.h"

namespace kvtier {

// The tokens of a setting, in order.
inline std::vector<absl::string_view> SplitTokens(absl::string_view setting) {
  std::vector<absl::string_view> out;
  for (absl::string_view line : absl::StrSplit(setting, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

// The token a process sends: the first ("" when the setting holds none).
inline std::string SentToken(absl::string_view setting) {
  const std::vector<absl::string_view> tokens = SplitTokens(setting);
  return tokens.empty() ? std::string() : std::string(tokens.front());
}

// Whether `presented` is one of the setting's tokens. Every token is
// compared, each in time that depends only on the lengths, so the time taken
// tells neither a token's bytes nor which one matched.
inline bool AcceptsToken(absl::string_view setting, absl::string_view presented) {
  if (presented.empty()) return false;
  bool match = false;
  for (absl::string_view token : SplitTokens(setting)) {
    match = ConstantTimeEquals(token, presented) || match;
  }
  return match;
}

// Checks each token: at least `min_length` characters and none listed twice.
// A setting of white space only is refused too: it is not empty, yet holds
// no token, so a check meant to be on would be off. The message names a
// token by its line, never by its text.
inline absl::Status CheckTokenList(absl::string_view setting, size_t min_length) {
  const std::vector<absl::string_view> tokens = SplitTokens(setting);
  if (tokens.empty() && !setting.empty()) {
    return absl::InvalidArgumentError("holds no token (only white space)");
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string which = tokens.size() == 1 ? "" : absl::StrCat(" (token ", i + 1, ")");
    if (tokens[i].size() < min_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("must be at least ", min_length, " characters", which));
    }
    for (size_t j = 0; j < i; ++j) {
      if (tokens[j] == tokens[i]) {
        return absl::InvalidArgumentError(absl::StrCat("lists the same token twice", which));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier

#endif  // KVTIER_SRC_COMMON_TOKEN_LIST_H_
