// What the cache tells the outside world about chunks arriving in and leaving
// its tiers: the feed of the cluster index (kvtierd publishes it to NATS).
#ifndef KVTIER_SRC_CORE_CACHE_EVENTS_H_
#define KVTIER_SRC_CORE_CACHE_EVENTS_H_

#include <cstdint>

#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "kvtier/keys.h"

namespace kvtier {

struct ChunkEvent {
  enum class Kind : uint8_t {
    kStored = 1,   // the chunk became readable in `tier`
    kRemoved = 2,  // the chunk left `tier` (evicted, removed or found corrupt)
  };
  Kind kind = Kind::kStored;
  uint64_t namespace_id = 0;  // Namespace::id()
  BlockKey key;
  Tier tier = Tier::kNone;
  uint32_t num_tokens = 0;  // tokens in the chunk (0 when unknown, as on removal)
};

// Receives chunk events. Called on cache threads, possibly several at once,
// and possibly while a tier holds its own lock (NVMe evictions); an
// implementation must be quick (queue and return), must not block, and must
// not call back into the cache.
class CacheEventSink {
 public:
  virtual ~CacheEventSink() = default;
  virtual void OnChunkEvents(absl::Span<const ChunkEvent> events) = 0;
};

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_CACHE_EVENTS_H_
