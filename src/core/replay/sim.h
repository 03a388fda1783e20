// Block-granularity cache simulators for request traces (trace_reader.h).
//
// They answer "what prefix hit rate would a cache of N blocks get on this
// trace", as the reference the real cache's replay is compared with, and as
// the test bench for eviction policies.
//
// Semantics, shared by every simulator here (with them ReplayUnbounded and
// ReplayLru reproduce the hit rates published with the Mooncake FAST'25 trace
// to within 0.001; replay_sim_test checks 0.005):
//   - Requests replay in trace order; timestamps are not used.
//   - Lookup: a request hits the longest run of its leading ids that are
//     cached. Those blocks count as hits; every other block of the request is
//     a miss, even one that happens to be cached after a missing one.
//   - Every id counts, including a final partial block:
//     hit rate = hit blocks / all blocks of all requests.
//   - Hits touch recency, first block first.
//   - Save: then every missed id of the request is saved, in order (an id
//     that is already cached is touched instead). A cache holds
//     capacity_blocks blocks, whatever their token count.
//
// ReplayLru is the published reference: plain LRU over blocks, any block may
// be evicted (a chain parent may go before its children). ReplayTailFirst
// models kvtier's DRAM tier instead: only chain tails are eviction candidates
// (a cached block with a cached successor stays), an EvictionPolicy ranks
// the candidates through the same calls the tier makes, ids are reused like
// the tier's entry ids, and a block saved while its predecessor is missing is
// stored without a parent link (depth 0), as the tier stores it.
//
// Thread-safety: free functions; a policy passed in must not be shared with
// another thread during the call.
#ifndef KVTIER_SRC_CORE_REPLAY_SIM_H_
#define KVTIER_SRC_CORE_REPLAY_SIM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "src/core/eviction.h"
#include "src/core/replay/trace_reader.h"

namespace kvtier::replay {

struct ReplayResult {
  std::string
      policy;  // "unbounded", "lru-reference", "belady-tail-first" or an EvictionPolicy name
  uint64_t capacity_blocks = 0;  // 0 for the unbounded cache
  uint64_t requests = 0;
  uint64_t total_blocks = 0;  // ids of all requests
  uint64_t hit_blocks = 0;    // leading ids found cached
  uint64_t saved_blocks = 0;  // missed ids stored
  uint64_t evicted_blocks = 0;
  uint64_t skipped_blocks = 0;  // missed ids not stored: the policy had no victim

  // hit_blocks / total_blocks; 0 for an empty trace.
  double HitRate() const;
};

// An unbounded cache: every id, once saved, stays.
absl::StatusOr<ReplayResult> ReplayUnbounded(absl::Span<const TraceRequest> trace);

// Plain LRU over blocks (the published reference). InvalidArgument naming
// `capacity_blocks` when it is 0.
absl::StatusOr<ReplayResult> ReplayLru(absl::Span<const TraceRequest> trace,
                                       uint64_t capacity_blocks);

// kvtier's tail-first DRAM tier with `policy` ranking the candidates.
// REQUIRES: `policy` holds no entries (a fresh policy). Each block is
// inserted with EntryTraits{depth, block_tokens, fingerprint of its id}.
// InvalidArgument naming `capacity_blocks` when it is 0; Internal when the
// policy names a victim that is not an evictable resident entry.
absl::StatusOr<ReplayResult> ReplayTailFirst(absl::Span<const TraceRequest> trace,
                                             uint64_t capacity_blocks, EvictionPolicy& policy,
                                             uint32_t block_tokens = 512);

// The policy name of ReplayTailFirstBelady in results and ReplayCurve.
inline constexpr absl::string_view kBeladyTailFirst = "belady-tail-first";

// ReplayTailFirst with future knowledge instead of a policy: the candidate
// (chain tail) whose id is next requested farthest ahead goes first, ids never
// requested again before all others; ties go deeper first. Not a proven
// optimum for prefix hits (a victim's value also depends on the chain behind
// it), but a reference no online policy is expected to reach: the gap between
// it and an online policy is what knowing the future is worth. InvalidArgument
// as ReplayTailFirst.
absl::StatusOr<ReplayResult> ReplayTailFirstBelady(absl::Span<const TraceRequest> trace,
                                                   uint64_t capacity_blocks,
                                                   uint32_t block_tokens = 512);

// floor(capacity_tokens / block_tokens): the blocks a cache of that many
// tokens holds. REQUIRES: block_tokens > 0.
uint64_t CapacityBlocks(uint64_t capacity_tokens, uint32_t block_tokens);

// The policy name that selects ReplayLru in ReplayCurve.
inline constexpr absl::string_view kLruReference = "lru-reference";

struct CurvePoint {
  uint64_t capacity_tokens = 0;
  ReplayResult result;
};

// Every (policy, capacity) pair, policies outer: `policies` holds
// kLruReference (ReplayLru), kBeladyTailFirst (ReplayTailFirstBelady) or
// names for NewEvictionPolicy
// (ReplayTailFirst, a fresh policy each run). Capacities are in tokens and
// become CapacityBlocks(c, block_tokens). InvalidArgument for an unknown
// policy name, a capacity below one block, or block_tokens 0.
absl::StatusOr<std::vector<CurvePoint>> ReplayCurve(absl::Span<const TraceRequest> trace,
                                                    absl::Span<const std::string> policies,
                                                    absl::Span<const uint64_t> capacities_tokens,
                                                    uint32_t block_tokens = 512);

}  // namespace kvtier::replay

#endif  // KVTIER_SRC_CORE_REPLAY_SIM_H_
