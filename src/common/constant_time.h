// Comparison of secrets (bearer tokens) in time that depends only on their
// lengths, so a caller cannot learn a token byte by byte from timing.
#ifndef KVTIER_SRC_COMMON_CONSTANT_TIME_H_
#define KVTIER_SRC_COMMON_CONSTANT_TIME_H_

#include <algorithm>
#include <cstddef>

#include "absl/strings/string_view.h"

namespace kvtier {

inline bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

}  // namespace kvtier

#endif  // KVTIER_SRC_COMMON_CONSTANT_TIME_H_
