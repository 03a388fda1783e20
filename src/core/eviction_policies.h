// Eviction policies beyond LRU, chosen by trace replay (src/core/replay/).
//
// Both policies remember chunks across evictions by
// EntryTraits::key_fingerprint: in prefix-cache workloads most re-references
// come long after a cache of realistic size has evicted the chunk (on the
// Mooncake trace the median gap before a block's first reuse is ~570
// requests, ~17k blocks), so a policy that only knows resident entries cannot
// tell a chunk seen five times from one seen for the first time. The memory is
// a bounded table of fingerprints with a sighting count each, trimmed least
// recently seen first. An entry inserted with fingerprint 0 has no history:
// it counts as seen for the first time.
//
// "2q" (NewTwoQueuePolicy): two LRU queues. An entry whose chunk is seen for
// the first time (no history) joins the probation queue; one inserted again
// after an eviction, or read while cached, is in the protected queue. Victims
// come from probation first (least recently used), then from protected. On
// the Mooncake trace 58% of the distinct blocks are used exactly once (a
// prompt's unique question, a document asked about once); this keeps them
// from pushing out chunks that have already proven reuse. It is 2Q (Johnson and
// Shasha, VLDB'94) with a long ghost history and no FIFO share for
// first-timers: replay showed any reserved share for them lowers the hit rate.
//
// "cost" (NewCostPolicy): GreedyDual-Size-Frequency. Priority = L + count x
// (depth + 1) / bytes, where count is the chunk's sighting count, depth + 1
// the chunks of prefix its recomputation attends over (a deeper chunk costs
// more prefill to rebuild), and L the priority of the last victim, so entries
// not touched for a while age below new ones. Lowest priority goes first.
//
// Both rank only the candidates the tier marks evictable (chain tails), honour
// the accept filter, and never hold an id after OnErase.
//
// Thread-safety: none; the owning tier calls a policy under its own lock.
#ifndef KVTIER_SRC_CORE_EVICTION_POLICIES_H_
#define KVTIER_SRC_CORE_EVICTION_POLICIES_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/core/eviction.h"

namespace kvtier {

// The fingerprint history both policies keep.
struct HistoryOptions {
  uint32_t keys_per_entry = 8;  // fingerprints remembered per resident entry
  uint64_t min_keys = 4096;     // fingerprints remembered at least

  // InvalidArgument naming the field when keys_per_entry or min_keys is 0.
  absl::Status Validate() const;
};

struct TwoQueueOptions {
  HistoryOptions history;
  absl::Status Validate() const;
};

struct CostOptions {
  HistoryOptions history;
  absl::Status Validate() const;
};

// "2q". InvalidArgument when the options do not validate.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewTwoQueuePolicy(const TwoQueueOptions& options);

// "cost". InvalidArgument when the options do not validate.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewCostPolicy(const CostOptions& options);

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_EVICTION_POLICIES_H_
