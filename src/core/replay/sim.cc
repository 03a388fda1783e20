#include "src/core/replay/sim.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier::replay {
namespace {

constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();

// The trace's ids renumbered densely (first appearance order), so the
// simulators index vectors instead of hashing on every step.
struct DenseTrace {
  std::vector<std::vector<uint32_t>> requests;
  std::vector<uint64_t> ids;  // dense index -> original id
  uint64_t total_blocks = 0;
};

absl::StatusOr<DenseTrace> Densify(absl::Span<const TraceRequest> trace) {
  DenseTrace out;
  absl::flat_hash_map<uint64_t, uint32_t> index;
  out.requests.reserve(trace.size());
  for (const TraceRequest& r : trace) {
    std::vector<uint32_t> dense;
    dense.reserve(r.hash_ids.size());
    for (uint64_t id : r.hash_ids) {
      auto [it, inserted] = index.try_emplace(id, static_cast<uint32_t>(out.ids.size()));
      if (inserted) {
        if (out.ids.size() >= kNone - 1) {
          return absl::InvalidArgumentError("trace: more distinct hash ids than 2^32 - 2");
        }
        out.ids.push_back(id);
      }
      dense.push_back(it->second);
    }
    out.total_blocks += dense.size();
    out.requests.push_back(std::move(dense));
  }
  return out;
}

// Leading run of cached ids.
template <typename IsCached>
size_t LeadingHits(const std::vector<uint32_t>& ids, IsCached&& cached) {
  size_t k = 0;
  while (k < ids.size() && cached(ids[k])) ++k;
  return k;
}

// SplitMix64's finalizer: spreads trace ids (often 0, 1, 2, ...) over 64
// bits; never 0, which EntryTraits reserves for "unknown".
uint64_t Fingerprint(uint64_t id) {
  uint64_t z = id + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z == 0 ? 1 : z;
}

absl::Status CheckCapacity(uint64_t capacity_blocks) {
  if (capacity_blocks == 0) return absl::InvalidArgumentError("capacity_blocks: must be positive");
  return absl::OkStatus();
}

}  // namespace

double ReplayResult::HitRate() const {
  return total_blocks == 0 ? 0.0
                           : static_cast<double>(hit_blocks) / static_cast<double>(total_blocks);
}

uint64_t CapacityBlocks(uint64_t capacity_tokens, uint32_t block_tokens) {
  return capacity_tokens / block_tokens;
}

absl::StatusOr<ReplayResult> ReplayUnbounded(absl::Span<const TraceRequest> trace) {
  ReplayResult out;
  out.policy = "unbounded";
  absl::flat_hash_set<uint64_t> cached;
  for (const TraceRequest& r : trace) {
    size_t k = 0;
    while (k < r.hash_ids.size() && cached.contains(r.hash_ids[k])) ++k;
    out.hit_blocks += k;
    out.total_blocks += r.hash_ids.size();
    for (size_t j = k; j < r.hash_ids.size(); ++j) {
      if (cached.insert(r.hash_ids[j]).second) ++out.saved_blocks;
    }
    ++out.requests;
  }
  return out;
}

absl::StatusOr<ReplayResult> ReplayLru(absl::Span<const TraceRequest> trace,
                                       uint64_t capacity_blocks) {
  if (absl::Status s = CheckCapacity(capacity_blocks); !s.ok()) return s;
  absl::StatusOr<DenseTrace> dense = Densify(trace);
  if (!dense.ok()) return dense.status();
  ReplayResult out;
  out.policy = std::string(kLruReference);
  out.capacity_blocks = capacity_blocks;
  out.total_blocks = dense->total_blocks;

  // An intrusive doubly linked list over dense ids: head_ is the least
  // recently used block, tail_ the most recent.
  const size_t n = dense->ids.size();
  std::vector<uint32_t> prev(n, kNone), next(n, kNone);
  std::vector<bool> cached(n, false);
  uint32_t head = kNone, tail = kNone;
  uint64_t size = 0;
  auto unlink = [&](uint32_t b) {
    (prev[b] == kNone ? head : next[prev[b]]) = next[b];
    (next[b] == kNone ? tail : prev[next[b]]) = prev[b];
    prev[b] = next[b] = kNone;
  };
  auto push_back = [&](uint32_t b) {
    prev[b] = tail;
    next[b] = kNone;
    (tail == kNone ? head : next[tail]) = b;
    tail = b;
  };

  for (const std::vector<uint32_t>& ids : dense->requests) {
    const size_t k = LeadingHits(ids, [&](uint32_t b) { return cached[b]; });
    out.hit_blocks += k;
    for (size_t j = 0; j < ids.size(); ++j) {
      const uint32_t b = ids[j];
      if (cached[b]) {
        unlink(b);
        push_back(b);
        continue;
      }
      cached[b] = true;
      push_back(b);
      ++size;
      ++out.saved_blocks;
      while (size > capacity_blocks) {
        const uint32_t victim = head;
        unlink(victim);
        cached[victim] = false;
        --size;
        ++out.evicted_blocks;
      }
    }
    ++out.requests;
  }
  return out;
}

namespace {

// ReplayTailFirst, calling `on_request(i)` before request i is looked up.
absl::StatusOr<ReplayResult> TailFirst(absl::Span<const TraceRequest> trace,
                                       uint64_t capacity_blocks, EvictionPolicy& policy,
                                       uint32_t block_tokens,
                                       absl::FunctionRef<void(size_t)> on_request) {
  if (absl::Status s = CheckCapacity(capacity_blocks); !s.ok()) return s;
  absl::StatusOr<DenseTrace> dense = Densify(trace);
  if (!dense.ok()) return dense.status();
  ReplayResult out;
  out.policy = std::string(policy.Name());
  out.capacity_blocks = capacity_blocks;
  out.total_blocks = dense->total_blocks;

  struct Block {
    bool cached = false;
    EntryId entry = 0;
    uint32_t parent = kNone;  // dense id of the cached predecessor linked at save
    uint32_t children = 0;    // cached successors linked to this block
    uint32_t depth = 0;
  };
  std::vector<Block> blocks(dense->ids.size());
  std::vector<uint32_t> by_entry;  // entry id -> dense id, kNone when free
  std::vector<EntryId> free_entries;
  uint64_t resident = 0;

  auto evict = [&](EntryId victim) -> absl::Status {
    const uint32_t b = victim < by_entry.size() ? by_entry[victim] : kNone;
    if (b == kNone || blocks[b].children != 0) {
      return absl::InternalError(absl::StrCat("replay: policy '", std::string(policy.Name()),
                                              "' picked entry ", victim,
                                              ", which is not an evictable entry"));
    }
    Block& blk = blocks[b];
    policy.OnErase(victim);
    blk.cached = false;
    by_entry[victim] = kNone;
    free_entries.push_back(victim);
    --resident;
    ++out.evicted_blocks;
    if (blk.parent != kNone) {
      Block& p = blocks[blk.parent];
      if (--p.children == 0) policy.SetEvictable(p.entry, true);
      blk.parent = kNone;
    }
    return absl::OkStatus();
  };

  for (size_t r = 0; r < dense->requests.size(); ++r) {
    on_request(r);
    const std::vector<uint32_t>& ids = dense->requests[r];
    const size_t k = LeadingHits(ids, [&](uint32_t b) { return blocks[b].cached; });
    out.hit_blocks += k;
    for (size_t j = 0; j < k; ++j) policy.OnAccess(blocks[ids[j]].entry);
    for (size_t j = k; j < ids.size(); ++j) {
      Block& blk = blocks[ids[j]];
      if (blk.cached) {  // cached past a gap: a re-save touches it
        policy.OnAccess(blk.entry);
        continue;
      }
      if (resident >= capacity_blocks) {
        std::optional<EntryId> victim = policy.PickVictim([](EntryId) { return true; });
        if (!victim.has_value()) {
          ++out.skipped_blocks;
          continue;
        }
        if (absl::Status s = evict(*victim); !s.ok()) return s;
      }
      EntryId entry;
      if (!free_entries.empty()) {
        entry = free_entries.back();
        free_entries.pop_back();
      } else {
        entry = static_cast<EntryId>(by_entry.size());
        by_entry.push_back(kNone);
      }
      blk.cached = true;
      blk.entry = entry;
      by_entry[entry] = ids[j];
      blk.parent = kNone;
      blk.depth = 0;
      if (j > 0 && blocks[ids[j - 1]].cached) {
        Block& p = blocks[ids[j - 1]];
        blk.parent = ids[j - 1];
        blk.depth = p.depth + 1;
        if (p.children++ == 0) policy.SetEvictable(p.entry, false);
      }
      policy.OnInsert(entry, EntryTraits{blk.depth, block_tokens, Fingerprint(dense->ids[ids[j]])});
      policy.SetEvictable(entry, true);
      ++resident;
      ++out.saved_blocks;
    }
    ++out.requests;
  }
  return out;
}

// Ranks candidates by their next use in the trace: never again first, then
// farthest first; ties deeper first (a later chunk of the same prompt). The
// replay tells it which request is current.
class FuturePolicy final : public EvictionPolicy {
 public:
  // `uses`: request indices (ascending) of every fingerprint; `current`: the
  // request being replayed. Both outlive the policy.
  FuturePolicy(const absl::flat_hash_map<uint64_t, std::vector<uint32_t>>& uses,
               const size_t& current)
      : uses_(uses), current_(current) {}

  std::string_view Name() const override {
    return std::string_view(kBeladyTailFirst.data(), kBeladyTailFirst.size());
  }

  void OnInsert(EntryId id, const EntryTraits& traits) override {
    OnErase(id);
    entries_[id] =
        State{traits.key_fingerprint, NextUse(traits.key_fingerprint), traits.depth, false};
  }

  void OnAccess(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    State& s = it->second;
    if (s.evictable) candidates_.erase(Key(s, id));
    s.next_use = NextUse(s.fingerprint);
    if (s.evictable) candidates_.insert(Key(s, id));
  }

  void SetEvictable(EntryId id, bool evictable) override {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.evictable == evictable) return;
    it->second.evictable = evictable;
    if (evictable) {
      candidates_.insert(Key(it->second, id));
    } else {
      candidates_.erase(Key(it->second, id));
    }
  }

  void OnErase(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    if (it->second.evictable) candidates_.erase(Key(it->second, id));
    entries_.erase(it);
  }

  std::optional<EntryId> PickVictim(absl::FunctionRef<bool(EntryId)> accept) override {
    for (const auto& [next_use, depth, id] : candidates_) {
      if (accept(id)) return id;
    }
    return std::nullopt;
  }

 private:
  struct State {
    uint64_t fingerprint = 0;
    uint64_t next_use = 0;  // request index; max() for never
    uint32_t depth = 0;
    bool evictable = false;
  };
  using Key_ = std::tuple<uint64_t, uint32_t, EntryId>;
  static Key_ Key(const State& s, EntryId id) { return {s.next_use, s.depth, id}; }

  uint64_t NextUse(uint64_t fingerprint) const {
    auto it = uses_.find(fingerprint);
    if (it == uses_.end()) return std::numeric_limits<uint64_t>::max();
    auto next = std::upper_bound(it->second.begin(), it->second.end(), current_);
    return next == it->second.end() ? std::numeric_limits<uint64_t>::max() : *next;
  }

  const absl::flat_hash_map<uint64_t, std::vector<uint32_t>>& uses_;
  const size_t& current_;
  absl::flat_hash_map<EntryId, State> entries_;
  std::set<Key_, std::greater<Key_>> candidates_;  // farthest next use first
};

}  // namespace

absl::StatusOr<ReplayResult> ReplayTailFirst(absl::Span<const TraceRequest> trace,
                                             uint64_t capacity_blocks, EvictionPolicy& policy,
                                             uint32_t block_tokens) {
  return TailFirst(trace, capacity_blocks, policy, block_tokens, [](size_t) {});
}

absl::StatusOr<ReplayResult> ReplayTailFirstBelady(absl::Span<const TraceRequest> trace,
                                                   uint64_t capacity_blocks,
                                                   uint32_t block_tokens) {
  absl::flat_hash_map<uint64_t, std::vector<uint32_t>> uses;
  for (size_t r = 0; r < trace.size(); ++r) {
    for (uint64_t id : trace[r].hash_ids) {
      std::vector<uint32_t>& u = uses[Fingerprint(id)];
      if (u.empty() || u.back() != r) u.push_back(static_cast<uint32_t>(r));
    }
  }
  size_t current = 0;
  FuturePolicy policy(uses, current);
  return TailFirst(trace, capacity_blocks, policy, block_tokens, [&](size_t r) { current = r; });
}

absl::StatusOr<std::vector<CurvePoint>> ReplayCurve(absl::Span<const TraceRequest> trace,
                                                    absl::Span<const std::string> policies,
                                                    absl::Span<const uint64_t> capacities_tokens,
                                                    uint32_t block_tokens) {
  if (block_tokens == 0) return absl::InvalidArgumentError("block_tokens: must be positive");
  for (uint64_t c : capacities_tokens) {
    if (CapacityBlocks(c, block_tokens) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "capacities_tokens: ", c, " tokens is less than one block of ", block_tokens));
    }
  }
  std::vector<CurvePoint> out;
  for (const std::string& name : policies) {
    for (uint64_t c : capacities_tokens) {
      const uint64_t blocks = CapacityBlocks(c, block_tokens);
      absl::StatusOr<ReplayResult> r;
      if (name == kLruReference) {
        r = ReplayLru(trace, blocks);
      } else if (name == kBeladyTailFirst) {
        r = ReplayTailFirstBelady(trace, blocks, block_tokens);
      } else {
        absl::StatusOr<std::unique_ptr<EvictionPolicy>> policy = NewEvictionPolicy(name);
        if (!policy.ok()) return policy.status();
        r = ReplayTailFirst(trace, blocks, **policy, block_tokens);
      }
      if (!r.ok()) return r.status();
      r->policy = name;
      out.push_back(CurvePoint{c, *std::move(r)});
    }
  }
  return out;
}

}  // namespace kvtier::replay
