// T1: chunks in host DRAM.
//
// One Arena (memfd-backed, shareable) carved into slabs; each slab holds slots
// of one size class, and a class exists per distinct encoded chunk size seen
// (rounded to 4 KiB). A slot holds the encoded chunk: the 64-byte header of
// src/core/chunk_format.h followed by the payload.
//
// Eviction never removes a chunk that has a cached successor in its chain
// (tails first) and never a pinned one; among the remaining candidates the
// EvictionPolicy chooses. A chunk is linked to its parent when the parent is
// resident at the moment the chunk is committed.
//
// Locking: `mu_` guards slab allocation, entries and the policy. The key index
// is split into shards with their own locks so Lookup never takes `mu_`. Lock
// order: mu_, then a shard lock. Bytes are copied outside every lock; a chunk
// being written or read is pinned, so its slot cannot be reused meanwhile.
//
// Thread-safety: all public methods are thread-safe.
#ifndef KVTIER_SRC_TIERS_DRAM_DRAM_TIER_H_
#define KVTIER_SRC_TIERS_DRAM_DRAM_TIER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "src/core/chunk_format.h"
#include "src/core/eviction.h"
#include "src/tiers/dram/arena.h"
#include "src/tiers/tier.h"

namespace kvtier {

struct DramTierOptions {
  ArenaOptions arena;
  uint32_t index_shards = 64;                      // power of two, 1..4096
  std::string eviction_policy = "lru";             // see src/core/eviction.h
  ChecksumType checksum = ChecksumType::kXxh3_64;  // written into each header
  uint32_t max_slot_classes = 32;                  // distinct slot sizes, 1..256
  // Compute each payload checksum at save time. When false (the default) a
  // save is one memcpy and the checksum is computed when the chunk leaves
  // DRAM (Get, eviction to a lower tier): host memory is trusted, the media
  // below are not.
  bool seal_on_save = false;
  // Called for every chunk evicted to make room, with its encoded (sealed)
  // bytes, which are valid only during the call; the call must not block on I/O (copy and
  // return). Used to demote chunks to a lower tier. May be empty.
  std::function<void(const ChunkMeta& meta, absl::Span<const std::byte> encoded)> on_evict;

  absl::Status Validate() const;
};

class DramTier final : public StorageTier, public ChunkPin::Releaser {
 public:
  static absl::StatusOr<std::unique_ptr<DramTier>> Create(DramTierOptions options);
  ~DramTier() override;

  // Tier interface. Put takes an encoded chunk; Get returns it after checking
  // the header and the payload checksum.
  std::string_view Name() const override { return "dram"; }
  TierCapabilities Capabilities() const override;
  absl::Status Put(const ChunkMeta& meta, absl::Span<const std::byte> encoded) override;
  absl::StatusOr<size_t> Get(uint64_t namespace_id, const BlockKey& key,
                             absl::Span<std::byte> out) override;
  bool CouldExist(uint64_t namespace_id, const BlockKey& key) const override;
  // Where a key stands: absent, reserved and still being written, or readable.
  enum class Presence { kAbsent, kWriting, kReady };
  Presence Find(uint64_t namespace_id, const BlockKey& key) const;
  absl::Status Remove(uint64_t namespace_id, const BlockKey& key) override;
  absl::Status Flush() override { return absl::OkStatus(); }
  TierStats Stats() const override;

  // Stores a payload, writing the header itself (sealed when
  // options.seal_on_save).
  // ResourceExhausted when nothing can be evicted to make room; InvalidArgument
  // when the encoded chunk is larger than a slab.
  absl::Status SavePayload(const ChunkMeta& meta, absl::Span<const std::byte> payload);

  // Copies the payload of a resident chunk into `out` and returns its size.
  // The header is checked (namespace, key, length); the payload checksum is
  // not (host memory is trusted; lower tiers verify on every read).
  // NotFound, InvalidArgument (`out` too small), DataLoss (header damaged;
  // the chunk is dropped).
  absl::StatusOr<size_t> LoadPayload(uint64_t namespace_id, const BlockKey& key,
                                     uint64_t layout_signature, absl::Span<std::byte> out);

  // Pins a resident chunk and returns a view of its payload (counted in
  // bytes_read: the payload is served in place).
  // Calls `fn` with the meta and a sealed copy of the bytes (header and
  // payload) of every resident chunk, parents before their children; each is
  // pinned while its bytes are copied. Stops early when `fn` returns false.
  // Chunks saved or evicted meanwhile may or may not be seen.
  void ForEachChunk(
      absl::FunctionRef<bool(const ChunkMeta& meta, absl::Span<const std::byte> sealed)> fn);
  absl::StatusOr<ChunkPin> PinChunk(uint64_t namespace_id, const BlockKey& key);
  // The same, after checking the chunk's header against the key and
  // `layout_signature` as LoadPayload does: a damaged header is DataLoss, and
  // the chunk is dropped and counted as corrupt.
  absl::StatusOr<ChunkPin> PinChunk(uint64_t namespace_id, const BlockKey& key,
                                    uint64_t layout_signature);
  // The same for the cache's own use of the bytes (an upload right after a
  // save, or the pin of a chunk just promoted, whose read the lower tier
  // counted): no hit, no bytes read, no access for the policy.
  absl::StatusOr<ChunkPin> PinChunkUncounted(uint64_t namespace_id, const BlockKey& key,
                                             uint64_t layout_signature);

  // A pin for another node's one-sided read of the encoded chunk, with the
  // payload checksum the reader verifies the transferred bytes against.
  struct TransferPin {
    ChunkPin pin;
    uint64_t payload_checksum = 0;  // of the header's checksum type
  };
  // Pins a resident chunk as PinChunk does and returns its payload checksum:
  // the header's when the chunk is sealed, else computed on the first such
  // pin and remembered with the entry until the chunk leaves DRAM, so a
  // chunk read by other nodes many times is hashed here once. NotFound;
  // DataLoss when the header is damaged.
  absl::StatusOr<TransferPin> PinChunkForTransfer(uint64_t namespace_id, const BlockKey& key);

  // ---- in-place writes (kvtierd's local clients fill slots themselves) ----

  // A slot reserved for one chunk. The holder writes exactly `payload_bytes`
  // payload bytes at arena offset `payload_offset` (the header before it is
  // the tier's), then calls CommitSlot, or AbortSlot to give it back.
  struct SlotReservation {
    uint64_t handle = 0;           // for CommitSlot / AbortSlot
    uint64_t payload_offset = 0;   // arena offset of the payload's first byte
    uint64_t payload_bytes = 0;    // bytes to write there
    bool already_present = false;  // key resident or being written: nothing reserved
  };

  // Reserves a slot (evicting as SavePayload does). The reserved entry is
  // pinned and invisible to readers until CommitSlot.
  // ResourceExhausted when nothing can be evicted; InvalidArgument for a zero
  // key or a chunk larger than a slab.
  absl::StatusOr<SlotReservation> ReserveSlot(const ChunkMeta& meta, uint64_t payload_bytes);

  // Writes the header of a reserved slot (sealed when options.seal_on_save)
  // and makes the chunk visible. FailedPrecondition when `handle` names no
  // outstanding reservation.
  // REQUIRES: each handle is committed or aborted once, by one thread.
  absl::Status CommitSlot(uint64_t handle);

  // Frees a reserved slot unwritten; a stale handle is ignored.
  // REQUIRES: as CommitSlot.
  void AbortSlot(uint64_t handle);

  // Number of leading keys of `chain` resident in `namespace_id`.
  size_t MatchPrefix(uint64_t namespace_id, absl::Span<const BlockKey> chain) const;

  // Removes `key` and its resident descendants; pinned ones stay. Returns the
  // number removed; NotFound when `key` is not resident.
  absl::StatusOr<size_t> RemoveTree(uint64_t namespace_id, const BlockKey& key);

  // Removes every unpinned chunk of `namespace_id`; returns how many.
  // Returns once every on_evict call that had begun is done, so a chunk of
  // the namespace evicted just before is in the lower tier's hands.
  size_t RemoveNamespace(uint64_t namespace_id);

  bool huge_pages() const { return arena_->huge_pages(); }
  const Arena& arena() const { return *arena_; }

  // ChunkPin::Releaser.
  void ReleasePin(uint64_t handle) override;

 private:
  absl::StatusOr<ChunkPin> PinChunkChecked(uint64_t namespace_id, const BlockKey& key,
                                           std::optional<uint64_t> layout_signature,
                                           bool count = true);
  enum class State : uint8_t { kFree, kWriting, kReady, kDetached };

  struct IndexKey {
    uint64_t ns;
    BlockKey key;
    friend bool operator==(const IndexKey& a, const IndexKey& b) {
      return a.ns == b.ns && a.key == b.key;
    }
    template <typename H>
    friend H AbslHashValue(H h, const IndexKey& k) {
      return H::combine(std::move(h), k.ns, k.key);
    }
  };

  struct IndexValue {
    EntryId id;
    bool ready;
  };

  struct Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<IndexKey, IndexValue> map ABSL_GUARDED_BY(mu);
  };

  struct Entry {
    ChunkMeta meta;
    State state = State::kFree;
    uint32_t generation = 0;        // bumped on reuse; part of pin handles
    bool checksum_known = false;    // payload_checksum is set (PinChunkForTransfer)
    uint64_t payload_checksum = 0;  // remembered payload checksum of the resident chunk
    uint32_t pins = 0;
    uint32_t depth = 0;
    uint32_t slot_class = 0;
    uint32_t slab = 0;
    uint32_t slot = 0;
    uint64_t encoded_bytes = 0;
    std::byte* data = nullptr;  // the slot
    EntryId parent = kNoEntry;
    absl::InlinedVector<EntryId, 2> children;
  };

  struct SlotClass {
    uint64_t slot_bytes = 0;
    uint32_t slots_per_slab = 0;
    std::set<uint32_t> slabs_with_room;  // slabs of this class with a free slot
    uint64_t resident = 0;               // chunks in this class
  };

  struct Slab {
    int32_t slot_class = -1;  // -1: free
    uint32_t used = 0;
    std::vector<uint32_t> free_slots;
  };

  struct Reservation {
    EntryId id;
    std::byte* data;
    uint32_t generation;
  };

  static constexpr EntryId kNoEntry = ~EntryId{0};

  DramTier(DramTierOptions options, std::unique_ptr<Arena> arena,
           std::unique_ptr<EvictionPolicy> policy);

  size_t ShardIndex(const IndexKey& k) const;
  Shard& ShardFor(const IndexKey& k) const;
  // Reserves a slot for `meta` of `encoded_bytes`, evicting as needed. The
  // entry is pinned and in kWriting state; it is invisible to Lookup.
  // Sets *already_present when the key is resident or being written.
  absl::StatusOr<Reservation> Reserve(const ChunkMeta& meta, uint64_t encoded_bytes,
                                      bool* already_present) ABSL_LOCKS_EXCLUDED(mu_);
  // Makes a reserved entry visible (or frees it when `ok` is false).
  void Commit(const Reservation& r, bool ok) ABSL_LOCKS_EXCLUDED(mu_);
  // The reservation behind a ReserveSlot handle; FailedPrecondition when it
  // is not an outstanding one.
  absl::StatusOr<Reservation> OutstandingReservation(uint64_t handle) ABSL_LOCKS_EXCLUDED(mu_);

  absl::StatusOr<uint32_t> ClassFor(uint64_t encoded_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool TryAllocate(uint32_t cls, uint32_t* slab, uint32_t* slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeSlot(uint32_t slab, uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  EntryId NewEntry() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  EntryId FindReady(const IndexKey& k) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a ready entry from the index, the policy and its parent's
  // children; its slot stays allocated (state kDetached).
  void Detach(EntryId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees the slot and the entry of a detached or writing entry.
  void Destroy(EntryId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateEvictable(EntryId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes a pin on a live entry (it cannot be evicted or reused until Unpin).
  void PinEntry(EntryId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unpin(EntryId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Decodes the header of pinned entry `id` against the key and layout. On
  // failure the entry is dropped as corrupt and unpinned; on success it stays
  // pinned and the result points into its slot.
  absl::StatusOr<DecodedChunk> DecodePinned(EntryId id, uint64_t namespace_id, const BlockKey& key,
                                            uint64_t layout_signature) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops a chunk whose header failed a check.
  void DropCorrupt(EntryId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pins a ready entry for reading. kNoEntry when absent. `count_access`:
  // counts the hit or miss and tells the eviction policy of the access.
  EntryId PinForRead(const IndexKey& k, bool count_access) ABSL_LOCKS_EXCLUDED(mu_);
  void UnpinForRead(EntryId id) ABSL_LOCKS_EXCLUDED(mu_);

  const DramTierOptions options_;
  const std::unique_ptr<Arena> arena_;
  std::vector<std::unique_ptr<Shard>> shards_;

  mutable absl::Mutex mu_;
  std::unique_ptr<EvictionPolicy> policy_ ABSL_GUARDED_BY(mu_);
  std::vector<Slab> slabs_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> free_slabs_ ABSL_GUARDED_BY(mu_);
  std::vector<SlotClass> classes_ ABSL_GUARDED_BY(mu_);
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::vector<EntryId> free_entries_ ABSL_GUARDED_BY(mu_);
  uint64_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t resident_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pinned_ ABSL_GUARDED_BY(mu_) = 0;

  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> saves_{0};
  std::atomic<uint64_t> save_rejections_{0};
  std::atomic<uint64_t> evictions_{0};
  // on_evict calls under way (numbered), for RemoveNamespace.
  uint64_t handovers_started_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<uint64_t> handovers_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> bytes_written_{0};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> corrupt_{0};
};

}  // namespace kvtier

#endif  // KVTIER_SRC_TIERS_DRAM_DRAM_TIER_H_
