#include "src/index/cluster_index.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"

namespace kvtier::index {
namespace {

constexpr uint32_t kNodeShift = 8;
constexpr uint32_t kMaskBits = 0xff;
constexpr int64_t kAlways = std::numeric_limits<int64_t>::max();

uint32_t HolderNode(uint32_t h) { return h >> kNodeShift; }
uint8_t HolderMask(uint32_t h) { return static_cast<uint8_t>(h & kMaskBits); }
uint8_t TierBit(Tier t) { return static_cast<uint8_t>(1u << static_cast<uint8_t>(t)); }

int64_t ToNs(absl::Time t) { return absl::ToUnixNanos(t); }

struct HolderLess {
  bool operator()(uint32_t h, uint32_t node) const { return HolderNode(h) < node; }
};

// One candidate during a lookup walk.
struct Candidate {
  uint32_t node = 0;
  uint32_t matched = 0;
  std::array<uint32_t, 8> counts{};
  std::vector<Tier> tiers;
};

}  // namespace

Tier BestTier(uint8_t mask) {
  for (uint8_t t = 1; t < 8; ++t) {
    if (mask & (1u << t)) return static_cast<Tier>(t);
  }
  return Tier::kNone;
}

absl::Status ClusterIndexOptions::Validate() const {
  if (max_entries == 0) return absl::InvalidArgumentError("max_entries: must be at least 1");
  if (shards == 0 || shards > 65536 || (shards & (shards - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shards: ", shards, " is not a power of two in 1..65536"));
  }
  if (max_nodes == 0 || max_nodes > (1u << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("max_nodes: ", max_nodes, " not in 1..2^24"));
  }
  if (node_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("node_timeout: must be positive");
  }
  return absl::OkStatus();
}

ClusterIndex::ClusterIndex(const ClusterIndexOptions& options)
    : options_(options),
      shard_cap_(std::max<uint64_t>(1, options.max_entries / options.shards)),
      shards_(new Shard[options.shards]),
      slots_(new NodeSlot[options.max_nodes]) {}

absl::StatusOr<std::unique_ptr<ClusterIndex>> ClusterIndex::Create(
    const ClusterIndexOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::unique_ptr<ClusterIndex>(new ClusterIndex(options));
}

ClusterIndex::Shard& ClusterIndex::ShardFor(const NsKey& k) const {
  // splitmix64's finalizer over the key and namespace: keys from engines
  // are hashes already, but keys of synthetic or structured chains need not
  // spread by themselves.
  uint64_t h = k.key.lo ^ ((k.key.hi << 31) | (k.key.hi >> 33)) ^ (k.ns * 0x9e3779b97f4a7c15ull);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return shards_[h & (options_.shards - 1)];
}

bool ClusterIndex::Alive(uint32_t node, int64_t now_ns) const {
  return slots_[node].alive_until_ns.load(std::memory_order_relaxed) > now_ns;
}

bool ClusterIndex::Current(const Shard& shard, uint32_t node) const {
  // Read under the shard lock: a finished clear raises `cleared` before it
  // forgets the shard's record.
  const NodeSlot& slot = slots_[node];
  const uint32_t generation = slot.generation.load();
  if (slot.cleared.load() >= generation) return true;
  auto it = shard.cleared.find(node);
  return it != shard.cleared.end() && it->second >= generation;
}

uint64_t ClusterIndex::ClearShard(Shard& shard, uint32_t node, uint32_t generation) {
  if (slots_[node].cleared.load() >= generation) return 0;  // the walk is done
  uint32_t& done = shard.cleared[node];
  if (done >= generation) return 0;
  done = generation;
  uint64_t dropped = 0;
  for (auto it = shard.map.begin(); it != shard.map.end();) {
    auto& hs = it->second.holders;
    auto pos = std::lower_bound(hs.begin(), hs.end(), node, HolderLess());
    if (pos != hs.end() && HolderNode(*pos) == node) {
      hs.erase(pos);
      ++dropped;
    }
    if (hs.empty()) {
      shard.map.erase(it++);
    } else {
      ++it;
    }
  }
  shard.entries -= dropped;
  slots_[node].entries.fetch_sub(dropped, std::memory_order_relaxed);
  return dropped;
}

void ClusterIndex::CatchUp(Shard& shard, uint32_t node) {
  const uint32_t generation = slots_[node].generation.load();
  if (slots_[node].cleared.load() >= generation) return;
  purged_.fetch_add(ClearShard(shard, node, generation), std::memory_order_relaxed);
}

uint32_t ClusterIndex::BeginClear(uint32_t node) {
  return slots_[node].generation.fetch_add(1) + 1;
}

uint64_t ClusterIndex::FinishClear(uint32_t node, uint32_t generation) {
  uint64_t dropped = 0;
  for (uint32_t s = 0; s < options_.shards; ++s) {
    absl::MutexLock lock(&shards_[s].mu);
    dropped += ClearShard(shards_[s], node, generation);
  }
  std::atomic<uint32_t>& cleared = slots_[node].cleared;
  uint32_t c = cleared.load();
  while (c < generation && !cleared.compare_exchange_weak(c, generation)) {
  }
  // The shards' records of this clear are of no more use.
  for (uint32_t s = 0; s < options_.shards; ++s) {
    absl::MutexLock lock(&shards_[s].mu);
    auto it = shards_[s].cleared.find(node);
    if (it != shards_[s].cleared.end() && it->second <= cleared.load()) {
      shards_[s].cleared.erase(it);
    }
  }
  return dropped;
}

absl::StatusOr<uint32_t> ClusterIndex::NodeIndex(const std::string& node_id, NodeSource source) {
  if (node_id.empty() || node_id.size() > kMaxNodeIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("node_id: must be 1..", kMaxNodeIdBytes, " characters"));
  }
  {
    absl::ReaderMutexLock lock(&nodes_mu_);
    auto it = node_ids_.find(node_id);
    if (it != node_ids_.end()) return it->second;
  }
  absl::MutexLock lock(&nodes_mu_);
  auto it = node_ids_.find(node_id);
  if (it != node_ids_.end()) return it->second;
  if (nodes_.size() >= options_.max_nodes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("node_id: more than max_nodes (", options_.max_nodes, ") nodes"));
  }
  const uint32_t idx = static_cast<uint32_t>(nodes_.size());
  NodeMeta m;
  m.node_id = node_id;
  m.source = source;
  nodes_.push_back(std::move(m));
  node_ids_.emplace(node_id, idx);
  if (source == NodeSource::kVllm) slots_[idx].alive_until_ns.store(kAlways);
  return idx;
}

absl::StatusOr<uint32_t> ClusterIndex::Heartbeat(const NodeAnnouncement& hb, absl::Time now) {
  if (hb.grpc_address.size() > kMaxAddressBytes || hb.ucx_address.size() > kMaxAddressBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("address: longer than ", kMaxAddressBytes, " characters"));
  }
  absl::StatusOr<uint32_t> idx = NodeIndex(hb.node_id, NodeSource::kKvtier);
  if (!idx.ok()) return idx;
  uint32_t clear = 0;  // the generation of the clear to run, 0: none
  {
    absl::MutexLock lock(&nodes_mu_);
    NodeMeta& m = nodes_[*idx];
    if (hb.incarnation < m.incarnation) return *idx;  // a late heartbeat of an old run
    if (hb.incarnation > m.incarnation) {
      // Under the lock: a batch of the new incarnation, which BeginBatch
      // admits only after this, finds the old entries stale.
      if (m.incarnation != 0) clear = BeginClear(*idx);
      m.incarnation = hb.incarnation;
      m.last_sequence = 0;
    }
    m.grpc_address = hb.grpc_address;
    m.ucx_address = hb.ucx_address;
    m.heartbeat_seen = true;
    m.last_heartbeat = now;
    m.purged = false;
    slots_[*idx].alive_until_ns.store(hb.leaving ? 0 : ToNs(now + options_.node_timeout));
  }
  if (clear != 0) purged_.fetch_add(FinishClear(*idx, clear), std::memory_order_relaxed);
  return *idx;
}

BatchOrder ClusterIndex::BeginBatch(uint32_t node, uint64_t incarnation, uint64_t sequence) {
  uint32_t clear = 0;
  BatchOrder order = BatchOrder::kNext;
  {
    absl::MutexLock lock(&nodes_mu_);
    if (node >= nodes_.size()) return BatchOrder::kDuplicate;
    NodeMeta& m = nodes_[node];
    if (incarnation < m.incarnation) return BatchOrder::kDuplicate;
    if (incarnation > m.incarnation) {
      if (m.incarnation != 0) clear = BeginClear(node);
      m.incarnation = incarnation;
      m.last_sequence = 0;
    }
    if (sequence != 0 && sequence <= m.last_sequence) return BatchOrder::kDuplicate;
    if (m.last_sequence != 0 && sequence > m.last_sequence + 1) {
      m.sequence_gaps += sequence - m.last_sequence - 1;
      order = BatchOrder::kGap;
    }
    if (sequence != 0) m.last_sequence = sequence;
  }
  if (clear != 0) purged_.fetch_add(FinishClear(node, clear), std::memory_order_relaxed);
  return order;
}

void ClusterIndex::Enqueue(Shard& shard, const NsKey& k, Entry& e) {
  e.queued_at = shard.next_ordinal++;
  shard.queue.push_back(QueueRecord{k, e.queued_at});
  // Compact when stale records outnumber live keys.
  if (shard.queue.size() > 2 * shard.map.size() + 64) {
    std::deque<QueueRecord> live;
    for (const QueueRecord& r : shard.queue) {
      auto it = shard.map.find(r.key);
      if (it != shard.map.end() && it->second.queued_at == r.ordinal) live.push_back(r);
    }
    shard.queue.swap(live);
  }
}

void ClusterIndex::Trim(Shard& shard) {
  while (shard.entries > shard_cap_ && !shard.queue.empty()) {
    QueueRecord r = shard.queue.front();
    shard.queue.pop_front();
    auto it = shard.map.find(r.key);
    if (it == shard.map.end() || it->second.queued_at != r.ordinal) continue;
    for (uint32_t h : it->second.holders) {
      slots_[HolderNode(h)].entries.fetch_sub(1, std::memory_order_relaxed);
    }
    const uint64_t n = it->second.holders.size();
    shard.entries -= n;
    dropped_.fetch_add(n, std::memory_order_relaxed);
    shard.map.erase(it);
  }
}

void ClusterIndex::Store(uint32_t node, uint64_t namespace_id, absl::Span<const BlockKey> keys,
                         Tier tier) {
  const uint8_t bit = TierBit(tier);
  for (const BlockKey& key : keys) {
    const NsKey k{namespace_id, key};
    Shard& shard = ShardFor(k);
    absl::MutexLock lock(&shard.mu);
    CatchUp(shard, node);
    auto [it, inserted] = shard.map.try_emplace(k);
    Entry& e = it->second;
    auto pos = std::lower_bound(e.holders.begin(), e.holders.end(), node, HolderLess());
    if (pos != e.holders.end() && HolderNode(*pos) == node) {
      *pos |= bit;
    } else {
      e.holders.insert(pos, (node << kNodeShift) | bit);
      ++shard.entries;
      slots_[node].entries.fetch_add(1, std::memory_order_relaxed);
    }
    // New keys join the back of the queue; a key stored again moves back
    // once it has aged past half the queue.
    if (inserted || shard.next_ordinal - e.queued_at > shard.queue.size() / 2) {
      Enqueue(shard, k, e);
    }
    if (shard.entries > shard_cap_) Trim(shard);
  }
}

void ClusterIndex::Remove(uint32_t node, uint64_t namespace_id, absl::Span<const BlockKey> keys,
                          Tier tier) {
  const uint8_t bit = TierBit(tier);
  for (const BlockKey& key : keys) {
    const NsKey k{namespace_id, key};
    Shard& shard = ShardFor(k);
    absl::MutexLock lock(&shard.mu);
    CatchUp(shard, node);
    auto it = shard.map.find(k);
    if (it == shard.map.end()) continue;
    Entry& e = it->second;
    auto pos = std::lower_bound(e.holders.begin(), e.holders.end(), node, HolderLess());
    if (pos == e.holders.end() || HolderNode(*pos) != node) continue;
    *pos &= ~static_cast<uint32_t>(bit);
    if (HolderMask(*pos) == 0) {
      e.holders.erase(pos);
      --shard.entries;
      slots_[node].entries.fetch_sub(1, std::memory_order_relaxed);
      if (e.holders.empty()) shard.map.erase(it);
    }
  }
}

uint64_t ClusterIndex::ClearNode(uint32_t node) { return FinishClear(node, BeginClear(node)); }

std::vector<NodeMatchResult> ClusterIndex::Lookup(uint64_t namespace_id,
                                                  absl::Span<const BlockKey> chain,
                                                  const LookupOptions& options,
                                                  absl::Time now) const {
  lookups_.fetch_add(1, std::memory_order_relaxed);
  std::vector<NodeMatchResult> out;
  if (chain.empty()) return out;
  const int64_t now_ns = ToNs(now);
  std::vector<uint32_t> excluded;
  if (!options.exclude_nodes.empty()) {
    absl::ReaderMutexLock lock(&nodes_mu_);
    for (const std::string& id : options.exclude_nodes) {
      auto it = node_ids_.find(id);
      if (it != node_ids_.end()) excluded.push_back(it->second);
    }
  }
  thread_local std::vector<uint32_t> holders;
  auto load = [&](const BlockKey& key) {
    holders.clear();
    const NsKey k{namespace_id, key};
    Shard& shard = ShardFor(k);
    absl::ReaderMutexLock lock(&shard.mu);
    auto it = shard.map.find(k);
    if (it == shard.map.end()) return;
    for (uint32_t h : it->second.holders) {
      if (Current(shard, HolderNode(h))) holders.push_back(h);
    }
  };
  auto note = [&](Candidate& c, uint32_t h) {
    const Tier t = BestTier(HolderMask(h));
    ++c.counts[static_cast<uint8_t>(t)];
    if (options.include_tiers) c.tiers.push_back(t);
    ++c.matched;
  };

  std::vector<Candidate> alive;
  std::vector<Candidate> done;
  load(chain[0]);
  for (uint32_t h : holders) {
    const uint32_t n = HolderNode(h);
    if (!Alive(n, now_ns)) continue;
    if (std::find(excluded.begin(), excluded.end(), n) != excluded.end()) continue;
    Candidate c;
    c.node = n;
    note(c, h);
    alive.push_back(std::move(c));
  }
  std::vector<Candidate> next;
  for (size_t i = 1; i < chain.size() && !alive.empty(); ++i) {
    load(chain[i]);
    next.clear();
    // Both lists are sorted by node: one merge pass.
    size_t j = 0;
    for (Candidate& c : alive) {
      while (j < holders.size() && HolderNode(holders[j]) < c.node) ++j;
      if (j < holders.size() && HolderNode(holders[j]) == c.node) {
        note(c, holders[j]);
        next.push_back(std::move(c));
      } else {
        done.push_back(std::move(c));
      }
    }
    alive.swap(next);
  }
  for (Candidate& c : alive) done.push_back(std::move(c));

  std::sort(done.begin(), done.end(), [](const Candidate& a, const Candidate& b) {
    return a.matched != b.matched ? a.matched > b.matched : a.node < b.node;
  });
  if (options.max_nodes != 0 && done.size() > options.max_nodes) done.resize(options.max_nodes);
  out.reserve(done.size());
  absl::ReaderMutexLock lock(&nodes_mu_);
  for (Candidate& c : done) {
    NodeMatchResult r;
    r.node = c.node;
    const NodeMeta& m = nodes_[c.node];
    r.node_id = m.node_id;
    r.grpc_address = m.grpc_address;
    r.ucx_address = m.ucx_address;
    r.matched = c.matched;
    r.tier_counts = c.counts;
    r.tiers = std::move(c.tiers);
    out.push_back(std::move(r));
  }
  // Ties by node id (indexes follow first sight, not names).
  std::stable_sort(out.begin(), out.end(), [](const NodeMatchResult& a, const NodeMatchResult& b) {
    return a.matched != b.matched ? a.matched > b.matched : a.node_id < b.node_id;
  });
  return out;
}

uint64_t ClusterIndex::Sweep(absl::Time now) {
  std::vector<std::pair<uint32_t, uint32_t>> to_clear;  // node, generation
  {
    absl::MutexLock lock(&nodes_mu_);
    for (uint32_t i = 0; i < nodes_.size(); ++i) {
      NodeMeta& m = nodes_[i];
      if (m.source != NodeSource::kKvtier || !m.heartbeat_seen || m.purged) continue;
      if (now - m.last_heartbeat > 2 * options_.node_timeout) {
        m.purged = true;
        to_clear.emplace_back(i, BeginClear(i));
      }
    }
  }
  uint64_t dropped = 0;
  for (const auto& [node, generation] : to_clear) dropped += FinishClear(node, generation);
  purged_.fetch_add(dropped, std::memory_order_relaxed);
  return dropped;
}

std::vector<NodeStatus> ClusterIndex::Nodes(absl::Time now) const {
  std::vector<NodeStatus> out;
  const int64_t now_ns = ToNs(now);
  absl::ReaderMutexLock lock(&nodes_mu_);
  for (uint32_t i = 0; i < nodes_.size(); ++i) {
    const NodeMeta& m = nodes_[i];
    NodeStatus s;
    s.node_id = m.node_id;
    s.source = m.source;
    s.grpc_address = m.grpc_address;
    s.ucx_address = m.ucx_address;
    s.incarnation = m.incarnation;
    s.alive = Alive(i, now_ns);
    s.heartbeat_seen = m.heartbeat_seen;
    if (m.heartbeat_seen) s.since_heartbeat = now - m.last_heartbeat;
    s.entries = slots_[i].entries.load(std::memory_order_relaxed);
    s.last_sequence = m.last_sequence;
    s.sequence_gaps = m.sequence_gaps;
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(),
            [](const NodeStatus& a, const NodeStatus& b) { return a.node_id < b.node_id; });
  return out;
}

ClusterIndexStats ClusterIndex::Stats(absl::Time now) const {
  ClusterIndexStats s;
  for (uint32_t i = 0; i < options_.shards; ++i) {
    absl::ReaderMutexLock lock(&shards_[i].mu);
    s.keys += shards_[i].map.size();
    s.entries += shards_[i].entries;
  }
  s.max_entries = options_.max_entries;
  s.dropped_entries = dropped_.load(std::memory_order_relaxed);
  s.purged_entries = purged_.load(std::memory_order_relaxed);
  s.lookups = lookups_.load(std::memory_order_relaxed);
  const int64_t now_ns = ToNs(now);
  absl::ReaderMutexLock lock(&nodes_mu_);
  s.nodes = nodes_.size();
  for (uint32_t i = 0; i < nodes_.size(); ++i) s.alive_nodes += Alive(i, now_ns) ? 1 : 0;
  return s;
}

uint64_t ClusterIndex::MemoryBytes() const {
  // Slot: key + entry; one control byte per slot; a malloc header per
  // spilled holder array.
  constexpr uint64_t kSlot = sizeof(std::pair<const NsKey, Entry>) + 1;
  constexpr uint64_t kMallocOverhead = 16;
  uint64_t bytes =
      sizeof(*this) + options_.shards * sizeof(Shard) + options_.max_nodes * sizeof(NodeSlot);
  for (uint32_t i = 0; i < options_.shards; ++i) {
    const Shard& shard = shards_[i];
    absl::ReaderMutexLock lock(&shard.mu);
    bytes += shard.map.capacity() * kSlot;
    bytes += shard.queue.size() * sizeof(QueueRecord);
    bytes += shard.cleared.capacity() * (sizeof(std::pair<const uint32_t, uint32_t>) + 1);
    for (const auto& [k, e] : shard.map) {
      if (e.holders.capacity() > 4) {
        bytes += e.holders.capacity() * sizeof(uint32_t) + kMallocOverhead;
      }
    }
  }
  absl::ReaderMutexLock lock(&nodes_mu_);
  for (const NodeMeta& m : nodes_) {
    bytes += sizeof(NodeMeta) + m.node_id.capacity() + m.grpc_address.capacity() +
             m.ucx_address.capacity() + 64;
  }
  return bytes;
}

}  // namespace kvtier::index
