// Eviction policies beyond LRU, chosen by trace replay (src/core/replay/).
//
// All three policies remember chunks across evictions by
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
// "2q-chain" (NewChainTwoQueuePolicy): 2q with three queues that use what a
// chain tier knows about an entry. Victims come from the first non-empty
// queue, least recently used first:
//   1. run ends: first-timers (at any depth) that were neither read nor
//      extended by a child within `settle_inserts` inserts after their own
//      insert. These are the last chunks of a saved prompt (a question, a
//      partial last block); on the Mooncake trace 5% of last blocks are ever
//      used again, against 43% of the other blocks of a new chain. The delay
//      keeps a chain being saved, even between other saves, from losing its
//      tail.
//   2. probation: the other first-timers.
//   3. protected: entries seen before (history) or read while cached, and
//      first-timers at depth >= `deep_depth`: a chunk that deep belongs to a
//      long shared document, which on the Mooncake trace is asked about again
//      nearly as often as a chunk already seen twice (3 in 4 first requests
//      of 64-127 blocks are followed by a second one).
// A run end or probation entry that is read moves to protected.
//
// All of them rank only the candidates the tier marks evictable (chain
// tails), honour the accept filter, and never hold an id after OnErase.
// Every call is O(log n) in the resident entries (amortised O(1) for the
// history), except PickVictim, which walks candidates until `accept` takes
// one.
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

// The fingerprint history the policies keep.
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

struct ChainTwoQueueOptions {
  HistoryOptions history;
  uint32_t deep_depth = 64;  // chunks of prefix from which a first-timer is protected
  uint32_t settle_inserts =
      64;  // inserts after which an unread, childless first-timer is a run end

  // InvalidArgument naming the field when deep_depth or settle_inserts is 0,
  // or the history does not validate.
  absl::Status Validate() const;
};

// "2q". InvalidArgument when the options do not validate.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewTwoQueuePolicy(const TwoQueueOptions& options);

// "2q-chain". InvalidArgument when the options do not validate.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewChainTwoQueuePolicy(
    const ChainTwoQueueOptions& options);

// "cost". InvalidArgument when the options do not validate.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewCostPolicy(const CostOptions& options);

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_EVICTION_POLICIES_H_
