// StorageTier: the interface every storage tier implements (DRAM, NVMe, Blob).
// (kvtier::Tier in kvtier/cache.h is the enum naming a tier.)
//
// A tier stores encoded chunks (src/core/chunk_format.h: header + payload)
// under (namespace id, key). Cross-cutting checks (header validation,
// checksums) happen in the tier on Get, so a damaged chunk is reported as
// DataLoss, dropped and counted, and never returned.
//
// Codes: NotFound (not in this tier), ResourceExhausted (full, nothing
// evictable), InvalidArgument (bad input, the message names the field),
// DataLoss (stored bytes failed a check), Unavailable (transient: queue full,
// device or endpoint down).
//
// Thread-safety: implementations are safe to call from any thread.
#ifndef KVTIER_SRC_TIERS_TIER_H_
#define KVTIER_SRC_TIERS_TIER_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "kvtier/keys.h"

namespace kvtier {

// Identity of a stored chunk and its place in its chain.
struct ChunkMeta {
  uint64_t namespace_id = 0;
  BlockKey key;
  BlockKey parent;  // zero for the first chunk of a chain
  uint64_t layout_signature = 0;
  uint32_t num_tokens = 0;
};

struct TierCapabilities {
  bool persistent = false;       // survives a process restart
  bool shared = false;           // visible to other nodes
  bool zero_copy = false;        // chunks can be pinned and read in place
  uint64_t max_chunk_bytes = 0;  // largest encoded chunk it accepts
};

class StorageTier {
 public:
  virtual ~StorageTier() = default;

  virtual std::string_view Name() const = 0;
  virtual TierCapabilities Capabilities() const = 0;

  // Stores `encoded` (header + payload, whose header matches `meta`). A chunk
  // already present is left as is and OK is returned.
  virtual absl::Status Put(const ChunkMeta& meta, absl::Span<const std::byte> encoded) = 0;

  // Copies the encoded chunk into `out` after checking its header against
  // (namespace_id, key) and its payload checksum; returns the encoded size.
  // InvalidArgument when `out` is too small (nothing written).
  virtual absl::StatusOr<size_t> Get(uint64_t namespace_id, const BlockKey& key,
                                     absl::Span<std::byte> out) = 0;

  // False only when the chunk is certainly absent.
  virtual bool CouldExist(uint64_t namespace_id, const BlockKey& key) const = 0;

  // Removes the chunk. NotFound when absent.
  virtual absl::Status Remove(uint64_t namespace_id, const BlockKey& key) = 0;

  // Makes every completed Put durable (a no-op for volatile tiers).
  virtual absl::Status Flush() = 0;

  virtual TierStats Stats() const = 0;
};

}  // namespace kvtier

#endif  // KVTIER_SRC_TIERS_TIER_H_
