#include "src/tiers/dram/dram_tier.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "src/common/bytes.h"
#include "src/common/status_macros.h"

namespace kvtier {
namespace {

constexpr uint64_t kSlotAlign = 4096;
// A class may serve chunks up to this fraction smaller than its slots.
constexpr uint64_t kMaxWasteDivisor = 8;  // 12.5 %
// Rounds of "evict one, retry" a save may take looking for a victim that
// frees a usable slot directly (another thread can take the slot a round
// freed) before it empties a whole slab instead.
constexpr int kMaxEvictRounds = 64;

bool IsPowerOfTwo(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Stable across evictions and reinsertions of the same chunk; never 0.
uint64_t KeyFingerprint(uint64_t ns, const BlockKey& key) {
  uint64_t f = key.lo ^ (key.hi * 0x9E3779B97F4A7C15ull) ^ (ns * 0xC2B2AE3D27D4EB4Full);
  return f == 0 ? 1 : f;
}

}  // namespace

absl::Status DramTierOptions::Validate() const {
  KVTIER_RETURN_IF_ERROR(arena.Validate());
  if (!IsPowerOfTwo(index_shards) || index_shards > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_shards = ", index_shards, " must be a power of two in [1, 4096]"));
  }
  if (max_slot_classes == 0 || max_slot_classes > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_slot_classes = ", max_slot_classes, " must be in [1, 256]"));
  }
  if (checksum != ChecksumType::kXxh3_64 && checksum != ChecksumType::kCrc32c) {
    return absl::InvalidArgumentError("checksum: unknown checksum type");
  }
  return NewEvictionPolicy(eviction_policy).status();
}

absl::StatusOr<std::unique_ptr<DramTier>> DramTier::Create(DramTierOptions options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<EvictionPolicy> policy,
                          NewEvictionPolicy(options.eviction_policy));
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<Arena> arena, Arena::Create(options.arena));
  return std::unique_ptr<DramTier>(
      new DramTier(std::move(options), std::move(arena), std::move(policy)));
}

DramTier::DramTier(DramTierOptions options, std::unique_ptr<Arena> arena,
                   std::unique_ptr<EvictionPolicy> policy)
    : options_(std::move(options)), arena_(std::move(arena)), policy_(std::move(policy)) {
  shards_.reserve(options_.index_shards);
  for (uint32_t i = 0; i < options_.index_shards; ++i) shards_.push_back(std::make_unique<Shard>());
  absl::MutexLock lock(&mu_);
  slabs_.resize(arena_->num_slabs());
  free_slabs_.reserve(slabs_.size());
  for (uint32_t i = arena_->num_slabs(); i > 0; --i) free_slabs_.push_back(i - 1);
}

DramTier::~DramTier() = default;

TierCapabilities DramTier::Capabilities() const {
  TierCapabilities caps;
  caps.persistent = false;
  caps.shared = false;
  caps.zero_copy = true;
  caps.max_chunk_bytes = arena_->slab_bytes();
  return caps;
}

size_t DramTier::ShardIndex(const IndexKey& k) const {
  return (k.key.lo ^ k.ns) & (shards_.size() - 1);
}

DramTier::Shard& DramTier::ShardFor(const IndexKey& k) const { return *shards_[ShardIndex(k)]; }

// ---- allocation ----------------------------------------------------------

absl::StatusOr<uint32_t> DramTier::ClassFor(uint64_t encoded_bytes) {
  if (encoded_bytes > arena_->slab_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk: ", encoded_bytes, " bytes (header included) is larger than the largest slot (",
        arena_->slab_bytes(), " bytes, slab_bytes)"));
  }
  int best = -1;
  for (size_t c = 0; c < classes_.size(); ++c) {
    uint64_t sb = classes_[c].slot_bytes;
    if (sb >= encoded_bytes && (best < 0 || sb < classes_[best].slot_bytes)) {
      best = static_cast<int>(c);
    }
  }
  const uint64_t want =
      std::min<uint64_t>(AlignUp(encoded_bytes, kSlotAlign), arena_->slab_bytes());
  if (best >= 0 && classes_[best].slot_bytes <=
                       std::max(want, encoded_bytes + encoded_bytes / kMaxWasteDivisor)) {
    return static_cast<uint32_t>(best);
  }
  if (classes_.size() < options_.max_slot_classes) {
    SlotClass c;
    c.slot_bytes = want;
    c.slots_per_slab = static_cast<uint32_t>(arena_->slab_bytes() / c.slot_bytes);
    classes_.push_back(std::move(c));
    return static_cast<uint32_t>(classes_.size() - 1);
  }
  if (best >= 0) return static_cast<uint32_t>(best);
  return absl::ResourceExhaustedError(absl::StrCat("chunk: no slot class fits ", encoded_bytes,
                                                   " bytes and all ", options_.max_slot_classes,
                                                   " classes (max_slot_classes) are in use"));
}

bool DramTier::TryAllocate(uint32_t cls, uint32_t* slab, uint32_t* slot) {
  SlotClass& c = classes_[cls];
  if (c.slabs_with_room.empty()) {
    if (free_slabs_.empty()) return false;
    uint32_t s = free_slabs_.back();
    free_slabs_.pop_back();
    Slab& sl = slabs_[s];
    sl.slot_class = static_cast<int32_t>(cls);
    sl.used = 0;
    sl.free_slots.clear();
    for (uint32_t i = c.slots_per_slab; i > 0; --i) sl.free_slots.push_back(i - 1);
    c.slabs_with_room.insert(s);
  }
  uint32_t s = *c.slabs_with_room.begin();
  Slab& sl = slabs_[s];
  *slab = s;
  *slot = sl.free_slots.back();
  sl.free_slots.pop_back();
  ++sl.used;
  if (sl.free_slots.empty()) c.slabs_with_room.erase(s);
  return true;
}

void DramTier::FreeSlot(uint32_t slab, uint32_t slot) {
  Slab& sl = slabs_[slab];
  SlotClass& c = classes_[sl.slot_class];
  sl.free_slots.push_back(slot);
  --sl.used;
  if (sl.used == 0) {
    // An empty slab goes back to the pool so any class can use it.
    c.slabs_with_room.erase(slab);
    sl.slot_class = -1;
    sl.free_slots.clear();
    free_slabs_.push_back(slab);
  } else {
    c.slabs_with_room.insert(slab);
  }
}

EntryId DramTier::NewEntry() {
  if (!free_entries_.empty()) {
    EntryId id = free_entries_.back();
    free_entries_.pop_back();
    return id;
  }
  entries_.emplace_back();
  return static_cast<EntryId>(entries_.size() - 1);
}

EntryId DramTier::FindReady(const IndexKey& k) const {
  Shard& sh = ShardFor(k);
  absl::MutexLock lock(&sh.mu);
  auto it = sh.map.find(k);
  if (it == sh.map.end() || !it->second.ready) return kNoEntry;
  return it->second.id;
}

void DramTier::UpdateEvictable(EntryId id) {
  const Entry& e = entries_[id];
  policy_->SetEvictable(id, e.state == State::kReady && e.pins == 0 && e.children.empty());
}

void DramTier::Detach(EntryId id) {
  Entry& e = entries_[id];
  {
    IndexKey k{e.meta.namespace_id, e.meta.key};
    Shard& sh = ShardFor(k);
    absl::MutexLock lock(&sh.mu);
    sh.map.erase(k);
  }
  policy_->OnErase(id);
  if (e.parent != kNoEntry) {
    Entry& p = entries_[e.parent];
    auto it = std::find(p.children.begin(), p.children.end(), id);
    if (it != p.children.end()) p.children.erase(it);
    UpdateEvictable(e.parent);
    e.parent = kNoEntry;
  }
  for (EntryId child : e.children) entries_[child].parent = kNoEntry;
  e.children.clear();
  e.state = State::kDetached;
  --resident_;
  --classes_[e.slot_class].resident;
}

void DramTier::Destroy(EntryId id) {
  Entry& e = entries_[id];
  FreeSlot(e.slab, e.slot);
  used_bytes_ -= classes_[e.slot_class].slot_bytes;
  if (e.pins > 0) --pinned_;
  e.state = State::kFree;
  e.pins = 0;
  e.data = nullptr;
  e.checksum_known = false;
  ++e.generation;
  free_entries_.push_back(id);
}

void DramTier::DropCorrupt(EntryId id) {
  corrupt_.fetch_add(1, std::memory_order_relaxed);
  if (entries_[id].state == State::kReady) Detach(id);
}

// ---- save ----------------------------------------------------------------

absl::StatusOr<DramTier::Reservation> DramTier::Reserve(const ChunkMeta& meta,
                                                        uint64_t encoded_bytes,
                                                        bool* already_present) {
  *already_present = false;
  IndexKey k{meta.namespace_id, meta.key};
  absl::MutexLock lock(&mu_);
  {
    Shard& sh = ShardFor(k);
    absl::MutexLock shard_lock(&sh.mu);
    auto it = sh.map.find(k);
    if (it != sh.map.end()) {
      if (it->second.ready) policy_->OnAccess(it->second.id);
      *already_present = true;
      return Reservation{kNoEntry, nullptr, 0};
    }
  }
  KVTIER_ASSIGN_OR_RETURN(uint32_t cls, ClassFor(encoded_bytes));
  uint32_t slab = 0;
  uint32_t slot = 0;
  // Once no victim frees a usable slot directly, one slab of another class is
  // chosen and emptied, as many rounds as it has chunks. A slab that cannot
  // be emptied (a pinned chunk, one being written, a chain parent whose child
  // lives in another slab) is left for the next candidate's slab; the save
  // fails only when no evictable chunk is left outside the slabs tried.
  int64_t target_slab = -1;
  absl::flat_hash_set<uint32_t> stuck_slabs;
  std::vector<bool> held_slabs;  // slabs with a pinned or unfinished chunk, when first needed
  for (int round = 0;; ++round) {
    if (TryAllocate(cls, &slab, &slot)) break;
    std::optional<EntryId> victim;
    if (round < kMaxEvictRounds && target_slab < 0) {
      // A victim of the same class frees a usable slot; one that is alone in
      // its slab frees a whole slab for any class.
      victim = policy_->PickVictim([&](EntryId id) {
        const Entry& e = entries_[id];
        return e.slot_class == cls || slabs_[e.slab].used == 1;
      });
    }
    if (!victim.has_value() && target_slab >= 0) {
      victim = policy_->PickVictim(
          [&](EntryId id) { return entries_[id].slab == static_cast<uint32_t>(target_slab); });
      if (!victim.has_value()) {
        stuck_slabs.insert(static_cast<uint32_t>(target_slab));
        target_slab = -1;
      }
    }
    if (!victim.has_value() && target_slab < 0) {
      // Prefer a slab with nothing pinned or being written: one that can be
      // emptied, so no chunk is evicted in vain.
      if (held_slabs.empty()) {
        held_slabs.assign(slabs_.size(), false);
        for (const Entry& e : entries_) {
          if (e.state == State::kWriting || e.state == State::kDetached ||
              (e.state == State::kReady && e.pins > 0)) {
            held_slabs[e.slab] = true;
          }
        }
      }
      victim = policy_->PickVictim([&](EntryId id) {
        const uint32_t s = entries_[id].slab;
        return !stuck_slabs.contains(s) && !held_slabs[s];
      });
      if (!victim.has_value()) {
        victim = policy_->PickVictim(
            [&](EntryId id) { return !stuck_slabs.contains(entries_[id].slab); });
      }
      if (victim.has_value()) target_slab = entries_[*victim].slab;
    }
    if (!victim.has_value()) {
      save_rejections_.fetch_add(1, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(absl::StrCat(
          "dram: no room for a ", encoded_bytes, "-byte chunk: every slot that could take it is ",
          "pinned, being written, or holds a chain parent"));
    }
    EntryId v = *victim;
    Detach(v);
    evictions_.fetch_add(1, std::memory_order_relaxed);
    if (options_.on_evict) {
      // Hand the bytes to the lower tier outside the lock; the detached entry
      // keeps its slot until Destroy. The handover is numbered so that
      // RemoveNamespace can wait for those already under way.
      ChunkMeta vmeta = entries_[v].meta;
      absl::Span<std::byte> bytes(entries_[v].data, entries_[v].encoded_bytes);
      const uint64_t handover = ++handovers_started_;
      handovers_.insert(handover);
      mu_.Unlock();
      // The detached slot belongs to this thread alone until Destroy.
      if (SealChunk(bytes).ok()) {
        options_.on_evict(vmeta, bytes);
      } else {
        corrupt_.fetch_add(1, std::memory_order_relaxed);
      }
      mu_.Lock();
      handovers_.erase(handover);
    }
    Destroy(v);
  }
  // Another thread may have started the same key while the lock was dropped.
  Shard& sh = ShardFor(k);
  absl::MutexLock shard_lock(&sh.mu);
  if (sh.map.contains(k)) {
    FreeSlot(slab, slot);
    *already_present = true;
    return Reservation{kNoEntry, nullptr, 0};
  }
  EntryId id = NewEntry();
  Entry& e = entries_[id];
  e.meta = meta;
  e.state = State::kWriting;
  e.pins = 1;
  e.depth = 0;
  e.slot_class = cls;
  e.slab = slab;
  e.slot = slot;
  e.encoded_bytes = encoded_bytes;
  e.data = arena_->slab(slab) + uint64_t{slot} * classes_[cls].slot_bytes;
  e.parent = kNoEntry;
  e.children.clear();
  used_bytes_ += classes_[cls].slot_bytes;
  ++pinned_;
  sh.map[k] = IndexValue{id, false};
  return Reservation{id, e.data, e.generation};
}

void DramTier::Commit(const Reservation& r, bool ok) {
  absl::MutexLock lock(&mu_);
  Entry& e = entries_[r.id];
  IndexKey k{e.meta.namespace_id, e.meta.key};
  if (!ok) {
    {
      Shard& sh = ShardFor(k);
      absl::MutexLock shard_lock(&sh.mu);
      sh.map.erase(k);
    }
    Destroy(r.id);
    return;
  }
  e.state = State::kReady;
  e.pins = 0;
  --pinned_;
  ++resident_;
  ++classes_[e.slot_class].resident;
  if (!e.meta.parent.IsZero()) {
    EntryId p = FindReady(IndexKey{e.meta.namespace_id, e.meta.parent});
    if (p != kNoEntry) {
      e.parent = p;
      e.depth = entries_[p].depth + 1;
      entries_[p].children.push_back(r.id);
      UpdateEvictable(p);
    }
  }
  policy_->OnInsert(r.id, EntryTraits{e.depth, classes_[e.slot_class].slot_bytes,
                                      KeyFingerprint(e.meta.namespace_id, e.meta.key)});
  UpdateEvictable(r.id);
  {
    Shard& sh = ShardFor(k);
    absl::MutexLock shard_lock(&sh.mu);
    sh.map[k].ready = true;
  }
}

absl::Status DramTier::SavePayload(const ChunkMeta& meta, absl::Span<const std::byte> payload) {
  if (meta.key.IsZero()) return absl::InvalidArgumentError("key: must not be zero");
  const uint64_t encoded = kChunkHeaderBytes + payload.size();
  bool present = false;
  KVTIER_ASSIGN_OR_RETURN(Reservation r, Reserve(meta, encoded, &present));
  if (present) return absl::OkStatus();
  ChunkHeader h;
  h.checksum_type = options_.checksum;
  h.namespace_id = meta.namespace_id;
  h.key = meta.key;
  h.layout_signature = meta.layout_signature;
  h.num_tokens = meta.num_tokens;
  h.sealed = options_.seal_on_save;
  absl::StatusOr<size_t> n = EncodeChunk(h, payload, {r.data, encoded});
  Commit(r, n.ok());
  if (!n.ok()) return n.status();
  saves_.fetch_add(1, std::memory_order_relaxed);
  bytes_written_.fetch_add(payload.size(), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::StatusOr<DramTier::SlotReservation> DramTier::ReserveSlot(const ChunkMeta& meta,
                                                                uint64_t payload_bytes) {
  if (meta.key.IsZero()) return absl::InvalidArgumentError("key: must not be zero");
  bool present = false;
  KVTIER_ASSIGN_OR_RETURN(Reservation r,
                          Reserve(meta, kChunkHeaderBytes + payload_bytes, &present));
  SlotReservation s;
  if (present) {
    s.already_present = true;
    return s;
  }
  s.handle = (uint64_t{r.generation} << 32) | r.id;
  s.payload_offset = static_cast<uint64_t>(r.data - arena_->base()) + kChunkHeaderBytes;
  s.payload_bytes = payload_bytes;
  return s;
}

absl::StatusOr<DramTier::Reservation> DramTier::OutstandingReservation(uint64_t handle) {
  const EntryId id = static_cast<EntryId>(handle & 0xFFFFFFFFu);
  const uint32_t generation = static_cast<uint32_t>(handle >> 32);
  absl::MutexLock lock(&mu_);
  if (id >= entries_.size() || entries_[id].generation != generation ||
      entries_[id].state != State::kWriting) {
    return absl::FailedPreconditionError(
        absl::StrCat("handle: ", handle, " names no outstanding slot reservation"));
  }
  return Reservation{id, entries_[id].data, generation};
}

absl::Status DramTier::CommitSlot(uint64_t handle) {
  KVTIER_ASSIGN_OR_RETURN(Reservation r, OutstandingReservation(handle));
  ChunkHeader h;
  uint64_t encoded;
  {
    absl::MutexLock lock(&mu_);
    const Entry& e = entries_[r.id];
    h.namespace_id = e.meta.namespace_id;
    h.key = e.meta.key;
    h.layout_signature = e.meta.layout_signature;
    h.num_tokens = e.meta.num_tokens;
    encoded = e.encoded_bytes;
  }
  // The slot is pinned in kWriting state: it belongs to this caller alone.
  h.checksum_type = options_.checksum;
  h.payload_length = encoded - kChunkHeaderBytes;
  h.sealed = options_.seal_on_save;
  if (h.sealed) {
    h.payload_checksum =
        PayloadChecksum(h.checksum_type, {r.data + kChunkHeaderBytes, h.payload_length});
  }
  EncodeChunkHeader(h, r.data);
  Commit(r, true);
  saves_.fetch_add(1, std::memory_order_relaxed);
  bytes_written_.fetch_add(h.payload_length, std::memory_order_relaxed);
  return absl::OkStatus();
}

void DramTier::AbortSlot(uint64_t handle) {
  absl::StatusOr<Reservation> r = OutstandingReservation(handle);
  if (r.ok()) Commit(*r, false);
}

absl::Status DramTier::Put(const ChunkMeta& meta, absl::Span<const std::byte> encoded) {
  KVTIER_ASSIGN_OR_RETURN(ChunkHeader h, DecodeChunkHeader(encoded));
  if (h.namespace_id != meta.namespace_id || h.key != meta.key ||
      h.layout_signature != meta.layout_signature) {
    return absl::InvalidArgumentError(
        "encoded: header does not match meta (namespace, key or "
        "layout signature)");
  }
  if (h.payload_length > encoded.size() - kChunkHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("encoded: payload length ", h.payload_length,
                                                   " runs past the ", encoded.size(),
                                                   "-byte buffer"));
  }
  const uint64_t size = kChunkHeaderBytes + h.payload_length;
  bool present = false;
  KVTIER_ASSIGN_OR_RETURN(Reservation r, Reserve(meta, size, &present));
  if (present) return absl::OkStatus();
  std::memcpy(r.data, encoded.data(), size);
  Commit(r, true);
  saves_.fetch_add(1, std::memory_order_relaxed);
  bytes_written_.fetch_add(h.payload_length, std::memory_order_relaxed);
  return absl::OkStatus();
}

// ---- read ----------------------------------------------------------------

EntryId DramTier::PinForRead(const IndexKey& k, bool count_access) {
  absl::MutexLock lock(&mu_);
  EntryId id = FindReady(k);
  if (id == kNoEntry) {
    if (count_access) misses_.fetch_add(1, std::memory_order_relaxed);
    return kNoEntry;
  }
  PinEntry(id);
  if (count_access) {
    policy_->OnAccess(id);
    hits_.fetch_add(1, std::memory_order_relaxed);
  }
  return id;
}

void DramTier::PinEntry(EntryId id) {
  if (entries_[id].pins++ == 0) {
    ++pinned_;
    UpdateEvictable(id);
  }
}

void DramTier::Unpin(EntryId id) {
  Entry& e = entries_[id];
  if (--e.pins == 0) {
    --pinned_;
    if (e.state == State::kDetached) {
      Destroy(id);
    } else {
      UpdateEvictable(id);
    }
  }
}

void DramTier::UnpinForRead(EntryId id) {
  absl::MutexLock lock(&mu_);
  Unpin(id);
}

absl::StatusOr<size_t> DramTier::LoadPayload(uint64_t namespace_id, const BlockKey& key,
                                             uint64_t layout_signature, absl::Span<std::byte> out) {
  IndexKey k{namespace_id, key};
  EntryId id = PinForRead(k, true);
  if (id == kNoEntry) {
    return absl::NotFoundError(absl::StrCat("chunk ", key.ToHex(), " is not cached in namespace ",
                                            absl::Hex(namespace_id, absl::kZeroPad16)));
  }
  absl::StatusOr<DecodedChunk> d = DecodePinned(id, namespace_id, key, layout_signature);
  if (!d.ok()) return d.status();
  absl::Status status;
  size_t n = 0;
  if (out.size() < d->payload.size()) {
    status = absl::InvalidArgumentError(
        absl::StrCat("out: buffer of ", out.size(), " bytes is smaller than the ",
                     d->payload.size(), "-byte payload of chunk ", key.ToHex()));
  } else {
    n = d->payload.size();
    std::memcpy(out.data(), d->payload.data(), n);
    bytes_read_.fetch_add(n, std::memory_order_relaxed);
  }
  UnpinForRead(id);
  if (!status.ok()) return status;
  return n;
}

absl::StatusOr<DecodedChunk> DramTier::DecodePinned(EntryId id, uint64_t namespace_id,
                                                    const BlockKey& key,
                                                    uint64_t layout_signature) {
  std::byte* data;
  uint64_t encoded;
  {
    absl::MutexLock lock(&mu_);
    data = entries_[id].data;
    encoded = entries_[id].encoded_bytes;
  }
  ChunkExpectation expect{namespace_id, key, layout_signature, /*verify_payload_checksum=*/false};
  absl::StatusOr<DecodedChunk> d = DecodeChunk({data, encoded}, expect);
  if (!d.ok()) {
    absl::MutexLock lock(&mu_);
    DropCorrupt(id);
    Unpin(id);
  }
  return d;
}

absl::StatusOr<size_t> DramTier::Get(uint64_t namespace_id, const BlockKey& key,
                                     absl::Span<std::byte> out) {
  IndexKey k{namespace_id, key};
  EntryId id = PinForRead(k, true);
  if (id == kNoEntry) {
    return absl::NotFoundError(absl::StrCat("chunk ", key.ToHex(), " is not in dram"));
  }
  std::byte* data;
  uint64_t encoded;
  uint64_t signature;
  {
    absl::MutexLock lock(&mu_);
    data = entries_[id].data;
    encoded = entries_[id].encoded_bytes;
    signature = entries_[id].meta.layout_signature;
  }
  // Header checks on the slot; the checksum is computed or verified on the
  // copy, so an unsealed slot is handed out sealed.
  ChunkExpectation expect{namespace_id, key, signature, /*verify_payload_checksum=*/false};
  absl::StatusOr<DecodedChunk> d = DecodeChunk({data, encoded}, expect);
  absl::Status status = d.status();
  if (status.ok() && out.size() < encoded) {
    status = absl::InvalidArgumentError(absl::StrCat(
        "out: buffer of ", out.size(), " bytes is smaller than the ", encoded, "-byte chunk"));
  } else if (status.ok()) {
    std::memcpy(out.data(), data, encoded);
    absl::Span<std::byte> copy = out.first(encoded);
    if (d->header.sealed) {
      expect.verify_payload_checksum = true;
      status = DecodeChunk(copy, expect).status();
    } else {
      status = SealChunk(copy);
    }
    if (status.ok()) bytes_read_.fetch_add(d->payload.size(), std::memory_order_relaxed);
  }
  absl::MutexLock lock(&mu_);
  if (!d.ok() || absl::IsDataLoss(status)) DropCorrupt(id);
  Unpin(id);
  if (!status.ok()) return status;
  return encoded;
}

void DramTier::ForEachChunk(
    absl::FunctionRef<bool(const ChunkMeta& meta, absl::Span<const std::byte> sealed)> fn) {
  std::vector<std::pair<uint32_t, std::pair<EntryId, uint32_t>>> ready;  // depth, (id, gen)
  {
    absl::MutexLock lock(&mu_);
    for (EntryId id = 0; id < entries_.size(); ++id) {
      if (entries_[id].state == State::kReady) {
        ready.push_back({entries_[id].depth, {id, entries_[id].generation}});
      }
    }
  }
  std::sort(ready.begin(), ready.end());
  std::vector<std::byte> copy;
  for (const auto& [depth, entry] : ready) {
    const auto [id, generation] = entry;
    ChunkMeta meta;
    const std::byte* data = nullptr;
    uint64_t bytes = 0;
    {
      absl::MutexLock lock(&mu_);
      Entry& e = entries_[id];
      if (e.state != State::kReady || e.generation != generation) continue;
      PinEntry(id);
      meta = e.meta;
      data = e.data;
      bytes = e.encoded_bytes;
    }
    copy.assign(data, data + bytes);  // pinned: the slot cannot be reused meanwhile
    {
      absl::MutexLock lock(&mu_);
      Unpin(id);
    }
    if (!SealChunk(absl::MakeSpan(copy)).ok()) {
      corrupt_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (!fn(meta, copy)) return;
  }
}

absl::StatusOr<ChunkPin> DramTier::PinChunk(uint64_t namespace_id, const BlockKey& key) {
  return PinChunkChecked(namespace_id, key, std::nullopt);
}

absl::StatusOr<ChunkPin> DramTier::PinChunk(uint64_t namespace_id, const BlockKey& key,
                                            uint64_t layout_signature) {
  return PinChunkChecked(namespace_id, key, layout_signature);
}

absl::StatusOr<ChunkPin> DramTier::PinChunkUncounted(uint64_t namespace_id, const BlockKey& key,
                                                     uint64_t layout_signature) {
  return PinChunkChecked(namespace_id, key, layout_signature, /*count=*/false);
}

absl::StatusOr<ChunkPin> DramTier::PinChunkChecked(uint64_t namespace_id, const BlockKey& key,
                                                   std::optional<uint64_t> layout_signature,
                                                   bool count) {
  EntryId id = PinForRead(IndexKey{namespace_id, key}, count);
  if (id == kNoEntry) {
    return absl::NotFoundError(absl::StrCat("chunk ", key.ToHex(), " is not cached in namespace ",
                                            absl::Hex(namespace_id, absl::kZeroPad16)));
  }
  if (layout_signature.has_value()) {
    // The header is checked as LoadPayload checks it, so a damaged chunk is
    // never handed out for zero-copy reads either.
    KVTIER_RETURN_IF_ERROR(DecodePinned(id, namespace_id, key, *layout_signature).status());
  }
  absl::MutexLock lock(&mu_);
  const Entry& e = entries_[id];
  uint64_t handle = (uint64_t{e.generation} << 32) | id;
  // The payload is handed out for reading: it counts as served.
  if (count) bytes_read_.fetch_add(e.encoded_bytes - kChunkHeaderBytes, std::memory_order_relaxed);
  return ChunkPin(this, handle, {e.data + kChunkHeaderBytes, e.encoded_bytes - kChunkHeaderBytes},
                  e.meta.num_tokens);
}

absl::StatusOr<DramTier::TransferPin> DramTier::PinChunkForTransfer(uint64_t namespace_id,
                                                                    const BlockKey& key) {
  EntryId id = PinForRead(IndexKey{namespace_id, key}, true);
  if (id == kNoEntry) {
    return absl::NotFoundError(absl::StrCat("chunk ", key.ToHex(), " is not cached in namespace ",
                                            absl::Hex(namespace_id, absl::kZeroPad16)));
  }
  TransferPin out;
  const std::byte* data;
  uint64_t encoded;
  uint32_t generation;
  bool known;
  {
    absl::MutexLock lock(&mu_);
    const Entry& e = entries_[id];
    data = e.data;
    encoded = e.encoded_bytes;
    generation = e.generation;
    known = e.checksum_known;
    out.payload_checksum = e.payload_checksum;
    out.pin = ChunkPin(this, (uint64_t{generation} << 32) | id,
                       {data + kChunkHeaderBytes, encoded - kChunkHeaderBytes}, e.meta.num_tokens);
    bytes_read_.fetch_add(encoded - kChunkHeaderBytes, std::memory_order_relaxed);
  }
  if (!known) {
    // The pin keeps the slot and its bytes as they are while they are hashed.
    KVTIER_ASSIGN_OR_RETURN(ChunkHeader h,
                            DecodeChunkHeader(absl::MakeConstSpan(data, kChunkHeaderBytes)));
    out.payload_checksum =
        h.sealed ? h.payload_checksum : PayloadChecksum(h.checksum_type, out.pin.payload());
    absl::MutexLock lock(&mu_);
    Entry& e = entries_[id];
    if (e.generation == generation) {
      e.payload_checksum = out.payload_checksum;
      e.checksum_known = true;
    }
  }
  return out;
}

void DramTier::ReleasePin(uint64_t handle) {
  EntryId id = static_cast<EntryId>(handle & 0xFFFFFFFFu);
  uint32_t generation = static_cast<uint32_t>(handle >> 32);
  absl::MutexLock lock(&mu_);
  if (id >= entries_.size() || entries_[id].generation != generation || entries_[id].pins == 0) {
    return;
  }
  Unpin(id);
}

bool DramTier::CouldExist(uint64_t namespace_id, const BlockKey& key) const {
  return Find(namespace_id, key) == Presence::kReady;
}

DramTier::Presence DramTier::Find(uint64_t namespace_id, const BlockKey& key) const {
  IndexKey k{namespace_id, key};
  Shard& sh = ShardFor(k);
  absl::MutexLock lock(&sh.mu);
  auto it = sh.map.find(k);
  if (it == sh.map.end()) return Presence::kAbsent;
  return it->second.ready ? Presence::kReady : Presence::kWriting;
}

size_t DramTier::MatchPrefix(uint64_t namespace_id, absl::Span<const BlockKey> chain) const {
  constexpr size_t kBatch = 256;
  size_t matched = 0;
  // Keys are checked in batches grouped by shard, so each shard lock is taken
  // once per batch rather than once per key.
  while (matched < chain.size()) {
    const size_t n = std::min(kBatch, chain.size() - matched);
    std::array<uint16_t, kBatch> shard_of;
    std::array<uint16_t, kBatch> order;
    std::array<bool, kBatch> present{};
    for (size_t i = 0; i < n; ++i) {
      IndexKey k{namespace_id, chain[matched + i]};
      shard_of[i] = static_cast<uint16_t>(ShardIndex(k));
      order[i] = static_cast<uint16_t>(i);
    }
    std::sort(order.begin(), order.begin() + n,
              [&](uint16_t a, uint16_t b) { return shard_of[a] < shard_of[b]; });
    for (size_t j = 0; j < n;) {
      const uint16_t sh_index = shard_of[order[j]];
      const Shard& sh = *shards_[sh_index];
      absl::MutexLock lock(&sh.mu);
      for (; j < n && shard_of[order[j]] == sh_index; ++j) {
        auto it = sh.map.find(IndexKey{namespace_id, chain[matched + order[j]]});
        present[order[j]] = it != sh.map.end() && it->second.ready;
      }
    }
    size_t i = 0;
    while (i < n && present[i]) ++i;
    matched += i;
    if (i < n) break;
  }
  return matched;
}

// ---- removal -------------------------------------------------------------

absl::StatusOr<size_t> DramTier::RemoveTree(uint64_t namespace_id, const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  EntryId root = FindReady(IndexKey{namespace_id, key});
  if (root == kNoEntry) {
    return absl::NotFoundError(absl::StrCat("chunk ", key.ToHex(), " is not cached in namespace ",
                                            absl::Hex(namespace_id, absl::kZeroPad16)));
  }
  // Collect the subtree first; removing children changes the vectors.
  std::vector<EntryId> order{root};
  for (size_t i = 0; i < order.size(); ++i) {
    for (EntryId c : entries_[order[i]].children) order.push_back(c);
  }
  size_t removed = 0;
  // Deepest first, so parents become tails before their own turn.
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Entry& e = entries_[*it];
    if (e.state != State::kReady || e.pins > 0) continue;
    Detach(*it);
    Destroy(*it);
    ++removed;
  }
  return removed;
}

absl::Status DramTier::Remove(uint64_t namespace_id, const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  EntryId id = FindReady(IndexKey{namespace_id, key});
  if (id == kNoEntry) {
    return absl::NotFoundError(absl::StrCat("chunk ", key.ToHex(), " is not in dram"));
  }
  if (entries_[id].pins > 0) {
    return absl::FailedPreconditionError(absl::StrCat("chunk ", key.ToHex(), " is pinned"));
  }
  Detach(id);
  Destroy(id);
  return absl::OkStatus();
}

size_t DramTier::RemoveNamespace(uint64_t namespace_id) {
  absl::MutexLock lock(&mu_);
  size_t removed = 0;
  for (EntryId id = 0; id < entries_.size(); ++id) {
    Entry& e = entries_[id];
    if (e.state != State::kReady || e.meta.namespace_id != namespace_id || e.pins > 0) continue;
    Detach(id);
    Destroy(id);
    ++removed;
  }
  // Chunks of the namespace evicted before this call may still be being
  // handed to on_evict: wait for those (not for later ones).
  struct Waiting {
    const std::set<uint64_t>* handovers;
    uint64_t upto;
  } w{&handovers_, handovers_started_};
  mu_.Await(absl::Condition(
      +[](Waiting* a) { return a->handovers->empty() || *a->handovers->begin() > a->upto; }, &w));
  return removed;
}

TierStats DramTier::Stats() const {
  TierStats s;
  s.tier = Tier::kDram;
  s.capacity_bytes = arena_->size();
  {
    absl::MutexLock lock(&mu_);
    s.used_bytes = used_bytes_;
    s.chunks = resident_;
    s.pinned_chunks = pinned_;
  }
  s.hits = hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.saves = saves_.load(std::memory_order_relaxed);
  s.save_rejections = save_rejections_.load(std::memory_order_relaxed);
  s.evictions = evictions_.load(std::memory_order_relaxed);
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  s.corrupt_chunks = corrupt_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace kvtier
