// Block keys: 128-bit names for prefixes of a token sequence.
//
// A key is a hash chain: key[i] = H(namespace id, key[i-1], tokens of block i,
// extra keys of block i), with H = XXH3-128 over a fixed little-endian byte
// encoding (see HashBlock). Because every key folds in its parent, a key names
// its whole prefix, and two sequences share a key only where they share the
// entire prefix up to it. Keys are identical across processes, machines and
// runs; tests/unit/core/keys_test.cc pins test vectors.
//
// Engines that already hash their blocks (vLLM's block hashes) can map those
// opaque bytes to keys with KeyFromEngineHash instead.
//
// Thread-safety: all types here are values; all functions are pure.
#ifndef KVTIER_INCLUDE_KVTIER_KEYS_H_
#define KVTIER_INCLUDE_KVTIER_KEYS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvtier {

// A 128-bit block or chunk key. The all-zero key means "no key" (the parent
// of the first block of a sequence).
struct BlockKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  bool IsZero() const { return hi == 0 && lo == 0; }
  // 32 lowercase hex digits, hi first.
  std::string ToHex() const;
  // Parses the ToHex form. InvalidArgument on anything else.
  static absl::StatusOr<BlockKey> FromHex(std::string_view hex);

  friend bool operator==(const BlockKey& a, const BlockKey& b) {
    return a.hi == b.hi && a.lo == b.lo;
  }
  friend bool operator!=(const BlockKey& a, const BlockKey& b) { return !(a == b); }
  friend bool operator<(const BlockKey& a, const BlockKey& b) {
    return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo;
  }
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine(std::move(h), k.hi, k.lo);
  }
};

// Token ids as engines use them (vLLM: int32; stored as their 32-bit pattern).
using TokenId = uint32_t;

// Hashes one block. `extra` carries per-block extra keys (LoRA adapter ids,
// multimodal content hashes); it is empty for plain text.
//
// Byte encoding hashed with XXH3-128 (seed 0), all integers little-endian:
//   "kvtier.block.v1" (15 bytes) | ns_id u64 | parent.hi u64 | parent.lo u64 |
//   token count u32 | tokens u32... | extra count u32 | extra u64...
BlockKey HashBlock(uint64_t namespace_id, const BlockKey& parent, absl::Span<const TokenId> tokens,
                   absl::Span<const uint64_t> extra = {});

// Maps an engine's own block hash (opaque bytes, e.g. vLLM's sha256 block
// hash) to a key of this namespace: XXH3-128 over
//   "kvtier.engine.v1" (16 bytes) | ns_id u64 | hash length u32 | hash bytes.
// The engine's hash must already chain over the prefix; kvtier only adds the
// namespace so tenants never share keys.
BlockKey KeyFromEngineHash(uint64_t namespace_id, absl::Span<const std::byte> engine_hash);

}  // namespace kvtier

#endif  // KVTIER_INCLUDE_KVTIER_KEYS_H_
