#include "src/core/hash.h"

#include <array>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvtier {
namespace {

constexpr std::array<uint32_t, 256> MakeCrc32cTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kCrc32cTable = MakeCrc32cTable();

}  // namespace

uint64_t Xxh3_64(absl::Span<const std::byte> data) { return XXH3_64bits(data.data(), data.size()); }

BlockKey Xxh3_128(absl::Span<const std::byte> data) {
  XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  return BlockKey{h.high64, h.low64};
}

uint32_t Crc32c(absl::Span<const std::byte> data, uint32_t crc) {
  crc = ~crc;
#if defined(__SSE4_2__)
  size_t i = 0;
  for (; i + 8 <= data.size(); i += 8) {
    uint64_t v;
    __builtin_memcpy(&v, data.data() + i, 8);
    crc = static_cast<uint32_t>(__builtin_ia32_crc32di(crc, v));
  }
  for (; i < data.size(); ++i) {
    crc = __builtin_ia32_crc32qi(crc, static_cast<uint8_t>(data[i]));
  }
#else
  for (std::byte b : data) {
    crc = kCrc32cTable[(crc ^ static_cast<uint8_t>(b)) & 0xFF] ^ (crc >> 8);
  }
#endif
  return ~crc;
}

}  // namespace kvtier
