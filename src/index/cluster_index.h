// The cluster index: an in-memory map (namespace id, chunk key) -> the nodes
// that hold the chunk and in which tiers, fed by kvtierd's NATS events and
// vLLM's ZMQ events, asked by routers (Index/Lookup) and by kvtierd's read
// path (IndexHolderSource).
//
// Layout. The map is split into lock shards by key hash. Each key keeps its
// holders as a sorted array of 32-bit words: node index (24 bits) and a tier
// bit mask (8 bits: bit t set when the node holds the chunk in Tier t). A
// chunk held by up to four nodes costs no allocation beyond the map slot.
//
// Bound. At most `max_entries` (key, node) holder entries are kept. Past it,
// the oldest keys are dropped first (with every holder) and counted. A key
// that is stored again after half the shard's queue went by moves to the
// back, so keys that keep arriving (popular prefixes) outlive one-off ones.
//
// Nodes. Node ids map to dense indexes that are never reused. A node is
// alive while its heartbeats arrive within `node_timeout` (vLLM endpoints,
// which have no heartbeat, are alive while configured). Dead nodes never
// appear in answers; their entries are dropped after a second timeout
// (Sweep). A new incarnation of a node (a restarted daemon) replaces
// everything known about the old one.
//
// Clearing a node (a restart, a death, vLLM's AllBlocksCleared) walks every
// shard, which takes a while on a large map, and the events of the node's
// new incarnation may arrive meanwhile on other threads. So a clear bumps
// the node's generation first: from then on its entries in a shard the walk
// has not reached are stale, left out of answers and dropped by the first
// Store or Remove of the node in that shard (or by the walk). Entries stored
// after the bump are never dropped by that clear.
//
// Thread-safety: every method is thread-safe. Lookups take shard reader
// locks one key at a time, so a lookup concurrent with events sees each key
// either before or after an event.
#ifndef KVTIER_SRC_INDEX_CLUSTER_INDEX_H_
#define KVTIER_SRC_INDEX_CLUSTER_INDEX_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "kvtier/keys.h"

namespace kvtier::index {

// The longest node id a node table accepts (ValidateNodeId checks the
// characters of the ids that arrive over NATS).
constexpr size_t kMaxNodeIdBytes = 128;
// The longest gRPC or UCX address a heartbeat may carry (host:port; a DNS
// name is at most 253 characters).
constexpr size_t kMaxAddressBytes = 512;

struct ClusterIndexOptions {
  uint64_t max_entries = 256ull << 20;  // (key, node) holder entries kept; oldest keys go first
  uint32_t shards = 256;                // lock shards: a power of two, 1..65536
  uint32_t max_nodes = 1u << 16;        // distinct node ids ever seen (1..1<<24)
  absl::Duration node_timeout = absl::Seconds(10);  // heartbeat silence that makes a node dead

  // InvalidArgument naming the field.
  absl::Status Validate() const;
};

enum class NodeSource : uint8_t {
  kKvtier = 0,  // a kvtierd publishing over NATS (alive while it heartbeats)
  kVllm = 1,    // a vLLM endpoint read over ZMQ (alive while configured)
};

// What a heartbeat says about a node.
struct NodeAnnouncement {
  std::string node_id;
  uint64_t incarnation = 0;
  std::string grpc_address;
  std::string ucx_address;
  absl::Duration interval = absl::ZeroDuration();
  bool leaving = false;  // clean shutdown: dead now
};

// One node's match for a chain.
struct NodeMatchResult {
  uint32_t node = 0;  // dense node index
  std::string node_id;
  std::string grpc_address;
  std::string ucx_address;
  uint32_t matched = 0;                   // leading chunks held
  std::array<uint32_t, 8> tier_counts{};  // matched chunks by best tier (index = Tier)
  std::vector<Tier> tiers;                // per matched chunk, with include_tiers
};

struct LookupOptions {
  size_t max_nodes = 0;  // 0 = every matching node
  bool include_tiers = false;
  std::vector<std::string> exclude_nodes;
};

// A node as Nodes() reports it.
struct NodeStatus {
  std::string node_id;
  NodeSource source = NodeSource::kKvtier;
  std::string grpc_address;
  std::string ucx_address;
  uint64_t incarnation = 0;
  bool alive = false;
  bool heartbeat_seen = false;
  absl::Duration since_heartbeat = absl::InfiniteDuration();
  uint64_t entries = 0;
  uint64_t last_sequence = 0;
  uint64_t sequence_gaps = 0;
};

struct ClusterIndexStats {
  uint64_t keys = 0;
  uint64_t entries = 0;
  uint64_t max_entries = 0;
  uint64_t dropped_entries = 0;  // holder entries dropped by the bound
  uint64_t purged_entries = 0;   // holder entries of dead or restarted nodes dropped
  uint64_t lookups = 0;
  uint64_t nodes = 0;
  uint64_t alive_nodes = 0;
};

// The verdict on a batch's sequence number.
enum class BatchOrder {
  kNext,       // the expected next batch (or the first seen)
  kGap,        // later than expected: some batches were missed (apply it)
  kDuplicate,  // already applied (or of an older incarnation): skip it
};

class ClusterIndex {
 public:
  static absl::StatusOr<std::unique_ptr<ClusterIndex>> Create(const ClusterIndexOptions& options);

  // The dense index of `node_id`, created on first use. InvalidArgument for
  // an id that is empty or longer than kMaxNodeIdBytes; ResourceExhausted
  // past options.max_nodes. A vLLM node is alive from creation.
  absl::StatusOr<uint32_t> NodeIndex(const std::string& node_id, NodeSource source);

  // Records a heartbeat at `now`. A newer incarnation drops the node's
  // entries (its old entries are out of every answer once this returns).
  // Returns the node index; InvalidArgument for a bad node id or an address
  // longer than kMaxAddressBytes (nothing recorded).
  absl::StatusOr<uint32_t> Heartbeat(const NodeAnnouncement& hb, absl::Time now);

  // Checks a batch's (incarnation, sequence) against what the node sent
  // before and records it. A newer incarnation drops the node's entries
  // (entries that other threads Store for the new incarnation meanwhile
  // are kept).
  BatchOrder BeginBatch(uint32_t node, uint64_t incarnation, uint64_t sequence);

  // Adds `tier` to the node's holding of each key / removes it (a holder
  // with no tier left is removed; a key with no holder is removed).
  void Store(uint32_t node, uint64_t namespace_id, absl::Span<const BlockKey> keys, Tier tier);
  void Remove(uint32_t node, uint64_t namespace_id, absl::Span<const BlockKey> keys, Tier tier);
  // Drops every entry `node` has now (vLLM's AllBlocksCleared, a restart):
  // they leave answers at once; entries stored after the call starts are
  // kept. Returns the entries this call's walk dropped (a concurrent Store
  // or Remove of the node may drop some first; those count as purged).
  uint64_t ClearNode(uint32_t node);

  // For each alive node that holds chain[0]: how many leading chunks of
  // `chain` it holds and in which tiers. Longest match first, ties by node
  // id. `now` decides liveness.
  std::vector<NodeMatchResult> Lookup(uint64_t namespace_id, absl::Span<const BlockKey> chain,
                                      const LookupOptions& options, absl::Time now) const;

  // Drops the entries of nodes dead for longer than twice the node timeout
  // (once per death). Returns the entries dropped.
  uint64_t Sweep(absl::Time now);

  std::vector<NodeStatus> Nodes(absl::Time now) const;
  ClusterIndexStats Stats(absl::Time now) const;
  // Estimated bytes held by the map, its holder arrays and its age queues
  // (walks every shard: O(keys)).
  uint64_t MemoryBytes() const;

  const ClusterIndexOptions& options() const { return options_; }

 private:
  struct NsKey {
    uint64_t ns = 0;
    BlockKey key;
    friend bool operator==(const NsKey& a, const NsKey& b) {
      return a.ns == b.ns && a.key == b.key;
    }
    template <typename H>
    friend H AbslHashValue(H h, const NsKey& k) {
      return H::combine(std::move(h), k.ns, k.key.hi, k.key.lo);
    }
  };
  struct Entry {
    absl::InlinedVector<uint32_t, 4> holders;  // (node << 8) | tier mask, sorted by node
    uint32_t queued_at = 0;                    // the shard's queue ordinal of its live record
  };
  struct QueueRecord {
    NsKey key;
    uint32_t ordinal = 0;
  };
  struct Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<NsKey, Entry> map ABSL_GUARDED_BY(mu);
    std::deque<QueueRecord> queue ABSL_GUARDED_BY(mu);  // oldest first; stale records skipped
    uint32_t next_ordinal ABSL_GUARDED_BY(mu) = 0;
    uint64_t entries ABSL_GUARDED_BY(mu) = 0;
    // Node -> the generation (NodeSlot) up to which this shard has dropped
    // the node's entries; kept only while a clear of the node is under way.
    absl::flat_hash_map<uint32_t, uint32_t> cleared ABSL_GUARDED_BY(mu);
  };
  struct NodeSlot {
    // Nanoseconds since the epoch until which the node counts as alive
    // (INT64_MAX: always; 0: dead).
    std::atomic<int64_t> alive_until_ns{0};
    std::atomic<uint64_t> entries{0};
    // Clears asked for (each bumps `generation`) and the newest that every
    // shard has done. While they differ, the node's entries in a shard whose
    // Shard::cleared is below `generation` are stale.
    std::atomic<uint32_t> generation{0};
    std::atomic<uint32_t> cleared{0};
  };
  struct NodeMeta {
    std::string node_id;
    NodeSource source = NodeSource::kKvtier;
    std::string grpc_address;
    std::string ucx_address;
    uint64_t incarnation = 0;
    uint64_t last_sequence = 0;
    uint64_t sequence_gaps = 0;
    bool heartbeat_seen = false;
    bool purged = false;  // entries dropped after death
    absl::Time last_heartbeat = absl::InfinitePast();
  };

  explicit ClusterIndex(const ClusterIndexOptions& options);

  Shard& ShardFor(const NsKey& k) const;
  // Drops the oldest keys of `shard` until it is within its share.
  void Trim(Shard& shard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  void Enqueue(Shard& shard, const NsKey& k, Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  bool Alive(uint32_t node, int64_t now_ns) const;
  // Whether the node's entries in `shard` belong to its current generation.
  bool Current(const Shard& shard, uint32_t node) const ABSL_SHARED_LOCKS_REQUIRED(shard.mu);
  // Drops the node's entries in `shard` unless the shard has done the clear
  // of `generation` already. Returns the entries dropped.
  uint64_t ClearShard(Shard& shard, uint32_t node, uint32_t generation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  // Store and Remove: finishes, in this shard, a clear of `node` under way.
  void CatchUp(Shard& shard, uint32_t node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  // Asks for a clear of `node`: its current entries are stale from now on.
  // Returns the generation to pass to FinishClear.
  uint32_t BeginClear(uint32_t node);
  // Walks every shard for the clear of `generation`. Returns the entries
  // the walk dropped.
  uint64_t FinishClear(uint32_t node, uint32_t generation);

  const ClusterIndexOptions options_;
  const uint64_t shard_cap_;
  std::unique_ptr<Shard[]> shards_;
  std::unique_ptr<NodeSlot[]> slots_;
  mutable absl::Mutex nodes_mu_;
  std::vector<NodeMeta> nodes_ ABSL_GUARDED_BY(nodes_mu_);
  absl::flat_hash_map<std::string, uint32_t> node_ids_ ABSL_GUARDED_BY(nodes_mu_);
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> purged_{0};
  mutable std::atomic<uint64_t> lookups_{0};
};

// The best (fastest) tier in a holder's tier mask; kNone for an empty mask.
Tier BestTier(uint8_t mask);

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_CLUSTER_INDEX_H_
