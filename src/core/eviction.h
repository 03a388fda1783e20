// Eviction policies: which evictable chunk goes first.
//
// The tier decides *which* chunks may be evicted (unpinned chain tails: a
// chunk with a cached successor is never a candidate); the policy only ranks
// the candidates. Entries are named by small integer ids chosen by the tier.
//
// Thread-safety: none; the owning tier calls a policy under its own lock.
#ifndef KVTIER_SRC_CORE_EVICTION_H_
#define KVTIER_SRC_CORE_EVICTION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace kvtier {

using EntryId = uint32_t;

// What a policy may weigh about an entry.
struct EntryTraits {
  uint32_t depth = 0;  // chunks before this one in its chain
  uint64_t bytes = 0;  // slot bytes it occupies
  // A stable fingerprint of the chunk's key (namespace and block key), the
  // same every time the same chunk is inserted; 0 when the tier gives none.
  // Ids are reused, so a policy that remembers chunks across evictions
  // (history, ghosts) keys that memory by this.
  uint64_t key_fingerprint = 0;
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string_view Name() const = 0;

  // A new resident entry; it starts not evictable.
  virtual void OnInsert(EntryId id, const EntryTraits& traits) = 0;
  // The entry was read or re-saved.
  virtual void OnAccess(EntryId id) = 0;
  // The entry became (or stopped being) an eviction candidate.
  virtual void SetEvictable(EntryId id, bool evictable) = 0;
  // The entry left the tier (evicted or removed).
  virtual void OnErase(EntryId id) = 0;
  // The best candidate for which `accept` is true, or nullopt. Does not
  // remove it: the tier calls OnErase once it is gone.
  virtual std::optional<EntryId> PickVictim(absl::FunctionRef<bool(EntryId)> accept) = 0;
};

// "lru": least recently used candidate first.
std::unique_ptr<EvictionPolicy> NewLruPolicy();

// Builds a policy by name; InvalidArgument naming `eviction_policy` otherwise.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> NewEvictionPolicy(std::string_view name);

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_EVICTION_H_
