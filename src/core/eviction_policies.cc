#include "src/core/eviction_policies.h"

#include <algorithm>
#include <array>
#include <deque>
#include <limits>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace kvtier {
namespace {

// Sighting counts by key fingerprint, for chunks resident or not. Bounded:
// past max(min_keys, keys_per_entry x resident entries) fingerprints, the
// least recently seen are forgotten.
class KeyHistory {
 public:
  explicit KeyHistory(const HistoryOptions& options) : options_(options) {}

  // Records a sighting of `fingerprint` (non-zero) and returns how many
  // sightings the history holds for it, this one included.
  uint32_t See(uint64_t fingerprint, uint64_t resident_entries) {
    Record& r = records_[fingerprint];
    if (r.count < std::numeric_limits<uint32_t>::max()) ++r.count;
    r.stamp = ++clock_;
    order_.emplace_back(fingerprint, r.stamp);
    const uint32_t count = r.count;
    Trim(resident_entries);
    return count;
  }

 private:
  struct Record {
    uint32_t count = 0;
    uint64_t stamp = 0;  // clock_ at the last sighting
  };

  void Trim(uint64_t resident_entries) {
    const uint64_t limit =
        std::max<uint64_t>(options_.min_keys, uint64_t{options_.keys_per_entry} * resident_entries);
    while (records_.size() > limit) {
      auto [fingerprint, stamp] = order_.front();
      order_.pop_front();
      auto it = records_.find(fingerprint);
      if (it != records_.end() && it->second.stamp == stamp) records_.erase(it);
    }
    // order_ keeps one pair per sighting; drop the stale ones once they
    // outnumber the live ones, so memory stays proportional to the limit.
    if (order_.size() > 2 * records_.size() + 1024) {
      std::deque<std::pair<uint64_t, uint64_t>> live;
      for (const auto& [fingerprint, stamp] : order_) {
        auto it = records_.find(fingerprint);
        if (it != records_.end() && it->second.stamp == stamp)
          live.emplace_back(fingerprint, stamp);
      }
      order_.swap(live);
    }
  }

  HistoryOptions options_;
  uint64_t clock_ = 0;
  absl::flat_hash_map<uint64_t, Record> records_;
  std::deque<std::pair<uint64_t, uint64_t>> order_;  // (fingerprint, stamp), oldest first
};

class TwoQueuePolicy final : public EvictionPolicy {
 public:
  explicit TwoQueuePolicy(const TwoQueueOptions& options) : history_(options.history) {}

  std::string_view Name() const override { return "2q"; }

  void OnInsert(EntryId id, const EntryTraits& traits) override {
    OnErase(id);
    const uint32_t count =
        traits.key_fingerprint != 0 ? history_.See(traits.key_fingerprint, entries_.size() + 1) : 1;
    entries_[id] = State{++tick_, traits.key_fingerprint, count >= 2, false};
  }

  void OnAccess(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    State& s = it->second;
    if (s.fingerprint != 0) history_.See(s.fingerprint, entries_.size());
    if (s.evictable) Queue(s).erase({s.tick, id});
    s.tick = ++tick_;
    s.is_protected = true;
    if (s.evictable) Queue(s).insert({s.tick, id});
  }

  void SetEvictable(EntryId id, bool evictable) override {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.evictable == evictable) return;
    State& s = it->second;
    s.evictable = evictable;
    if (evictable) {
      Queue(s).insert({s.tick, id});
    } else {
      Queue(s).erase({s.tick, id});
    }
  }

  void OnErase(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    if (it->second.evictable) Queue(it->second).erase({it->second.tick, id});
    entries_.erase(it);
  }

  std::optional<EntryId> PickVictim(absl::FunctionRef<bool(EntryId)> accept) override {
    for (const auto* queue : {&probation_, &protected_}) {
      for (const auto& [tick, id] : *queue) {
        if (accept(id)) return id;
      }
    }
    return std::nullopt;
  }

 private:
  struct State {
    uint64_t tick = 0;  // last insert or access
    uint64_t fingerprint = 0;
    bool is_protected = false;
    bool evictable = false;
  };
  using Queue_ = std::set<std::pair<uint64_t, EntryId>>;
  Queue_& Queue(const State& s) { return s.is_protected ? protected_ : probation_; }

  KeyHistory history_;
  uint64_t tick_ = 0;
  absl::flat_hash_map<EntryId, State> entries_;
  Queue_ probation_;  // evictable first-timers, least recent first
  Queue_ protected_;  // evictable re-referenced entries, least recent first
};

class ChainTwoQueuePolicy final : public EvictionPolicy {
 public:
  explicit ChainTwoQueuePolicy(const ChainTwoQueueOptions& options)
      : options_(options), history_(options.history) {}

  std::string_view Name() const override { return "2q-chain"; }

  void OnInsert(EntryId id, const EntryTraits& traits) override {
    OnErase(id);
    const uint32_t count =
        traits.key_fingerprint != 0 ? history_.See(traits.key_fingerprint, entries_.size() + 1) : 1;
    State s;
    s.tick = ++tick_;
    s.serial = ++inserts_;
    s.fingerprint = traits.key_fingerprint;
    s.first_timer = count < 2;
    s.queue = (!s.first_timer || traits.depth >= options_.deep_depth) ? kProtected : kProbation;
    entries_[id] = s;
    // An entry settles `settle_inserts` inserts after its own: if it is
    // then still an unread first-timer and a candidate (no child, not
    // pinned), it ended its run.
    recent_.emplace_back(id, s.serial);
    if (recent_.size() > options_.settle_inserts) {
      const auto [old_id, serial] = recent_.front();
      recent_.pop_front();
      auto it = entries_.find(old_id);
      if (it != entries_.end() && it->second.serial == serial && it->second.evictable &&
          it->second.first_timer) {
        Move(old_id, it->second, kRunEnd);
      }
    }
  }

  void OnAccess(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    State& s = it->second;
    if (s.fingerprint != 0) history_.See(s.fingerprint, entries_.size());
    if (s.evictable) queues_[s.queue].erase({s.tick, id});
    s.tick = ++tick_;
    s.queue = kProtected;
    s.first_timer = false;
    if (s.evictable) queues_[s.queue].insert({s.tick, id});
  }

  void SetEvictable(EntryId id, bool evictable) override {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.evictable == evictable) return;
    State& s = it->second;
    s.evictable = evictable;
    if (evictable) {
      queues_[s.queue].insert({s.tick, id});
    } else {
      queues_[s.queue].erase({s.tick, id});
    }
  }

  void OnErase(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    if (it->second.evictable) queues_[it->second.queue].erase({it->second.tick, id});
    entries_.erase(it);
  }

  std::optional<EntryId> PickVictim(absl::FunctionRef<bool(EntryId)> accept) override {
    for (const auto& queue : queues_) {
      for (const auto& [tick, id] : queue) {
        if (accept(id)) return id;
      }
    }
    return std::nullopt;
  }

 private:
  // Queue indices, in eviction order.
  enum QueueIndex : uint8_t { kRunEnd = 0, kProbation = 1, kProtected = 2 };
  struct State {
    uint64_t tick = 0;    // last insert or access
    uint64_t serial = 0;  // inserts_ at this entry's insert
    uint64_t fingerprint = 0;
    QueueIndex queue = kProbation;
    bool first_timer = true;  // no earlier sighting in the history, not read since
    bool evictable = false;
  };

  void Move(EntryId id, State& s, QueueIndex to) {
    if (s.evictable) queues_[s.queue].erase({s.tick, id});
    s.queue = to;
    if (s.evictable) queues_[s.queue].insert({s.tick, id});
  }

  ChainTwoQueueOptions options_;
  KeyHistory history_;
  uint64_t tick_ = 0;
  uint64_t inserts_ = 0;
  absl::flat_hash_map<EntryId, State> entries_;
  std::array<std::set<std::pair<uint64_t, EntryId>>, 3> queues_;  // evictable, least recent first
  std::deque<std::pair<EntryId, uint64_t>>
      recent_;  // (id, serial) of the last inserts, oldest first
};

class CostPolicy final : public EvictionPolicy {
 public:
  explicit CostPolicy(const CostOptions& options) : history_(options.history) {}

  std::string_view Name() const override { return "cost"; }

  void OnInsert(EntryId id, const EntryTraits& traits) override {
    OnErase(id);
    State s;
    s.fingerprint = traits.key_fingerprint;
    s.weight = static_cast<double>(traits.depth + 1) /
               static_cast<double>(std::max<uint64_t>(traits.bytes, 1));
    s.count = s.fingerprint != 0 ? history_.See(s.fingerprint, entries_.size() + 1) : 1;
    Rank(s);
    entries_[id] = s;
  }

  void OnAccess(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    State& s = it->second;
    if (s.evictable) candidates_.erase(Key(s, id));
    s.count = s.fingerprint != 0 ? history_.See(s.fingerprint, entries_.size())
                                 : s.count + (s.count < std::numeric_limits<uint32_t>::max());
    Rank(s);
    if (s.evictable) candidates_.insert(Key(s, id));
  }

  void SetEvictable(EntryId id, bool evictable) override {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.evictable == evictable) return;
    State& s = it->second;
    s.evictable = evictable;
    if (evictable) {
      candidates_.insert(Key(s, id));
    } else {
      candidates_.erase(Key(s, id));
    }
  }

  void OnErase(EntryId id) override {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    const State& s = it->second;
    if (s.evictable) candidates_.erase(Key(s, id));
    // Aging: only an eviction the policy chose raises L; removals by the
    // tier (a chunk deleted on request) do not.
    if (last_victim_ == id) {
      inflation_ = std::max(inflation_, s.priority);
      last_victim_.reset();
    }
    entries_.erase(it);
  }

  std::optional<EntryId> PickVictim(absl::FunctionRef<bool(EntryId)> accept) override {
    for (const auto& [priority, tick, id] : candidates_) {
      if (accept(id)) {
        last_victim_ = id;
        return id;
      }
    }
    return std::nullopt;
  }

 private:
  struct State {
    double priority = 0;
    double weight = 0;  // (depth + 1) / bytes
    uint64_t tick = 0;  // last insert or access: ties go least recent first
    uint64_t fingerprint = 0;
    uint32_t count = 0;
    bool evictable = false;
  };
  using Key_ = std::tuple<double, uint64_t, EntryId>;
  static Key_ Key(const State& s, EntryId id) { return {s.priority, s.tick, id}; }
  void Rank(State& s) {
    s.priority = inflation_ + static_cast<double>(s.count) * s.weight;
    s.tick = ++tick_;
  }

  KeyHistory history_;
  uint64_t tick_ = 0;
  double inflation_ = 0;  // L: priority of the last victim
  std::optional<EntryId> last_victim_;
  absl::flat_hash_map<EntryId, State> entries_;
  std::set<Key_> candidates_;
};

}  // namespace

absl::Status HistoryOptions::Validate() const {
  if (keys_per_entry == 0) {
    return absl::InvalidArgumentError("history.keys_per_entry: must be positive");
  }
  if (min_keys == 0) return absl::InvalidArgumentError("history.min_keys: must be positive");
  return absl::OkStatus();
}

absl::Status TwoQueueOptions::Validate() const { return history.Validate(); }

absl::Status CostOptions::Validate() const { return history.Validate(); }

absl::Status ChainTwoQueueOptions::Validate() const {
  if (deep_depth == 0) return absl::InvalidArgumentError("deep_depth: must be positive");
  if (settle_inserts == 0) return absl::InvalidArgumentError("settle_inserts: must be positive");
  return history.Validate();
}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewTwoQueuePolicy(const TwoQueueOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::make_unique<TwoQueuePolicy>(options);
}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewChainTwoQueuePolicy(
    const ChainTwoQueueOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::make_unique<ChainTwoQueuePolicy>(options);
}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewCostPolicy(const CostOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::make_unique<CostPolicy>(options);
}

}  // namespace kvtier
