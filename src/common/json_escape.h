// JSON string escaping shared by the CLI's --json output and kvtierd's logs.
// Thread-safety: pure function.
#ifndef KVTIER_SRC_COMMON_JSON_ESCAPE_H_
#define KVTIER_SRC_COMMON_JSON_ESCAPE_H_

#include <string>

#include "absl/strings/string_view.h"

namespace kvtier {

// Escapes `s` for use inside a JSON string literal (quotes not added):
// quote, backslash and control characters; other bytes pass through.
std::string JsonEscape(absl::string_view s);

}  // namespace kvtier

#endif  // KVTIER_SRC_COMMON_JSON_ESCAPE_H_
