#include "src/core/eviction.h"

#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "src/core/eviction_policies.h"

namespace kvtier {
namespace {

// Exact LRU over the candidates. Every entry carries the tick of its last
// access; candidates sit in an ordered set by that tick, so a chain parent
// that becomes a candidate again (its last child left) takes its true place
// instead of the front.
class LruPolicy final : public EvictionPolicy {
 public:
  std::string_view Name() const override { return "lru"; }

  void OnInsert(EntryId id, const EntryTraits&) override { entries_[id] = State{++tick_, false}; }

  void OnAccess(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    State& s = it->second;
    if (s.evictable) candidates_.erase({s.tick, id});
    s.tick = ++tick_;
    if (s.evictable) candidates_.insert({s.tick, id});
  }

  void SetEvictable(EntryId id, bool evictable) override {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.evictable == evictable) return;
    State& s = it->second;
    s.evictable = evictable;
    if (evictable) {
      candidates_.insert({s.tick, id});
    } else {
      candidates_.erase({s.tick, id});
    }
  }

  void OnErase(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    if (it->second.evictable) candidates_.erase({it->second.tick, id});
    entries_.erase(it);
  }

  std::optional<EntryId> PickVictim(absl::FunctionRef<bool(EntryId)> accept) override {
    for (const auto& [tick, id] : candidates_) {
      if (accept(id)) return id;
    }
    return std::nullopt;
  }

 private:
  struct State {
    uint64_t tick = 0;
    bool evictable = false;
  };
  uint64_t tick_ = 0;
  absl::flat_hash_map<EntryId, State> entries_;
  std::set<std::pair<uint64_t, EntryId>> candidates_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> NewLruPolicy() { return std::make_unique<LruPolicy>(); }

absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewEvictionPolicy(std::string_view name) {
  if (name == "lru") return NewLruPolicy();
  if (name == "2q") return NewTwoQueuePolicy(TwoQueueOptions{});
  if (name == "2q-chain") return NewChainTwoQueuePolicy(ChainTwoQueueOptions{});
  if (name == "cost") return NewCostPolicy(CostOptions{});
  return absl::InvalidArgumentError(absl::StrCat("eviction_policy: unknown policy '",
                                                 std::string(name),
                                                 "' (known: lru, 2q, 2q-chain, cost)"));
}

}  // namespace kvtier
