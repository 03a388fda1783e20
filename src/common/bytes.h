// Little-endian encoding helpers for the on-disk and on-wire formats.
#ifndef KVTIER_SRC_COMMON_BYTES_H_
#define KVTIER_SRC_COMMON_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/types/span.h"

namespace kvtier {

// The formats are little-endian; kvtier builds only on little-endian hosts.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "kvtier needs a little-endian host");

template <typename T>
inline void StoreLE(std::byte* dst, T value) {
  std::memcpy(dst, &value, sizeof(T));
}

template <typename T>
inline T LoadLE(const std::byte* src) {
  T value;
  std::memcpy(&value, src, sizeof(T));
  return value;
}

// Appends the little-endian bytes of `value` to `out`.
template <typename T>
inline void AppendLE(std::string& out, T value) {
  char buf[sizeof(T)];
  std::memcpy(buf, &value, sizeof(T));
  out.append(buf, sizeof(T));
}

inline absl::Span<const std::byte> AsBytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Rounds `value` up to a multiple of `align` (a power of two).
constexpr uint64_t AlignUp(uint64_t value, uint64_t align) {
  return (value + align - 1) & ~(align - 1);
}

}  // namespace kvtier

#endif  // KVTIER_SRC_COMMON_BYTES_H_
