// Hash and checksum primitives used by keys, namespaces and the chunk format.
// Thread-safety: pure functions.
#ifndef KVTIER_SRC_CORE_HASH_H_
#define KVTIER_SRC_CORE_HASH_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "kvtier/keys.h"

namespace kvtier {

// XXH3-64, seed 0.
uint64_t Xxh3_64(absl::Span<const std::byte> data);
// XXH3-128, seed 0, as a BlockKey (hi = high64, lo = low64).
BlockKey Xxh3_128(absl::Span<const std::byte> data);
// CRC-32C (Castagnoli), initial value 0 (i.e. the standard ~0 pre/post
// conditioning; crc32c("123456789") == 0xE3069283).
uint32_t Crc32c(absl::Span<const std::byte> data, uint32_t crc = 0);

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_HASH_H_
