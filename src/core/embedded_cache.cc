#include "src/core/embedded_cache.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "cuda/device_runtime.h"
#include "src/common/bytes.h"
#include "src/common/status_macros.h"
#include "src/core/chunk_format.h"

namespace kvtier {

namespace {

DramTierOptions ToDramOptions(const CacheOptions& options) {
  DramTierOptions dram;
  dram.arena.capacity_bytes = options.dram_capacity_bytes;
  dram.arena.slab_bytes = options.slab_bytes;
  dram.arena.huge_pages = options.huge_pages;
  dram.arena.prefault = options.prefault;
  dram.index_shards = options.index_shards;
  dram.eviction_policy = options.eviction_policy;
  return dram;
}

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("nvme.", field, ": ", what));
}

// Region size of an on-demand volume (no slot_payload_bytes): big enough for
// four of the largest chunk a DRAM slab holds, but at most four times the
// staging memory (a slot must fit in flight), a quarter of the volume, and
// 1 GiB; a whole number of MiB.
uint64_t RegionBytes(const CacheOptions& options) {
  constexpr uint64_t kMiB = 1ull << 20;
  const uint64_t for_slab = AlignUp(uint64_t{4} * (options.slab_bytes + uint64_t{2} * 4096), kMiB);
  const uint64_t for_staging = 4 * options.nvme.max_inflight_bytes / kMiB * kMiB;
  const uint64_t for_volume = std::max(kMiB, options.nvme.capacity_bytes / 4 / kMiB * kMiB);
  return std::max(kMiB, std::min({for_slab, for_staging, for_volume, 1024 * kMiB}));
}

}  // namespace

NvmeTierOptions ToNvmeTierOptions(const CacheOptions& options, Env* env) {
  NvmeTierOptions o;
  o.path = options.nvme.path;
  const std::vector<uint64_t>& payloads = options.nvme.slot_payload_bytes;
  if (payloads.empty()) {
    o.capacity_bytes = options.nvme.capacity_bytes;
    o.region_bytes = RegionBytes(options);
  } else {
    for (uint64_t p : payloads) {
      o.slot_classes.push_back(
          NvmeSlotClass{p + kChunkHeaderBytes, options.nvme.capacity_bytes / payloads.size()});
    }
  }
  o.durability = options.nvme.durability;
  o.io_mode = options.nvme.io_mode;
  o.queue_depth = options.nvme.queue_depth;
  o.max_inflight_bytes = options.nvme.max_inflight_bytes;
  o.write_snapshot = options.nvme.write_snapshot;
  o.eviction_policy = options.nvme.eviction_policy;
  o.env = env;
  return o;
}

absl::Status NvmeCacheOptions::Validate() const {
  if (path.empty()) return Invalid("path", "must not be empty when the NVMe tier is on");
  if (!(persist_on_close_seconds >= 0)) {
    return Invalid("persist_on_close_seconds",
                   absl::StrCat(persist_on_close_seconds, " must be >= 0"));
  }
  if (capacity_bytes < (16ull << 20)) {
    return Invalid("capacity_bytes", absl::StrCat(capacity_bytes, " is below 16 MiB"));
  }
  for (size_t i = 0; i < slot_payload_bytes.size(); ++i) {
    if (slot_payload_bytes[i] == 0) {
      return Invalid(absl::StrCat("slot_payload_bytes[", i, "]"), "must be positive");
    }
    if (i > 0 && slot_payload_bytes[i] <= slot_payload_bytes[i - 1]) {
      return Invalid(absl::StrCat("slot_payload_bytes[", i, "]"), "sizes must ascend");
    }
  }
  if (io_mode != "direct" && io_mode != "buffered") {
    return Invalid("io_mode", absl::StrCat("'", io_mode, "' is not direct or buffered"));
  }
  if (queue_depth < 1 || queue_depth > 4096) {
    return Invalid("queue_depth", absl::StrCat(queue_depth, " is outside [1, 4096]"));
  }
  if (max_inflight_bytes % 4096 != 0 || max_inflight_bytes == 0 ||
      max_inflight_bytes > (1ull << 30)) {
    return Invalid(
        "max_inflight_bytes",
        absl::StrCat(max_inflight_bytes, " must be a positive multiple of 4096 up to 1 GiB"));
  }
  if (admission != "all" && admission != "second-chance") {
    return Invalid("admission", absl::StrCat("'", admission, "' is not all or second-chance"));
  }
  if (durability != "power" && durability != "process") {
    return Invalid("durability", absl::StrCat("'", durability, "' is not power or process"));
  }
  if (eviction_policy.empty()) return Invalid("eviction_policy", "must not be empty");
  return absl::OkStatus();
}

absl::Status CacheOptions::Validate() const {
  KVTIER_RETURN_IF_ERROR(ToDramOptions(*this).Validate());
  if (blob.enabled()) KVTIER_RETURN_IF_ERROR(blob.Validate());
  if (!nvme.enabled()) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(nvme.Validate());
  const std::vector<uint64_t>& payloads = nvme.slot_payload_bytes;
  if (!payloads.empty() && payloads.back() + kChunkHeaderBytes > slab_bytes) {
    return Invalid(absl::StrCat("slot_payload_bytes[", payloads.size() - 1, "]"),
                   absl::StrCat(payloads.back(), " bytes: no chunk that large fits a DRAM slab (",
                                slab_bytes, " bytes)"));
  }
  absl::Status s = ToNvmeTierOptions(*this, nullptr).Validate();
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("nvme: ", s.message(),
                     nvme.slot_payload_bytes.empty()
                         ? absl::StrCat(" (region_bytes ", RegionBytes(*this),
                                        " follows from slab_bytes, nvme.max_inflight_bytes "
                                        "and nvme.capacity_bytes)")
                         : std::string(" (slot_classes come from nvme.capacity_bytes split "
                                       "evenly among nvme.slot_payload_bytes)")));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Cache>> Cache::Create(const CacheOptions& options) {
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<EmbeddedCache> cache, EmbeddedCache::Create(options));
  return std::unique_ptr<Cache>(std::move(cache));
}

// ---- validation -------------------------------------------------------------

absl::Status ValidateChain(absl::Span<const BlockKey> chain) {
  // Open addressing over positions in a table at least twice the chain's
  // size: no allocation for the usual chain of a few hundred keys.
  constexpr size_t kStackSlots = 2048;
  size_t slots = kStackSlots;
  while (slots < 2 * chain.size()) slots *= 2;
  std::array<uint32_t, kStackSlots> stack_table;
  std::vector<uint32_t> heap_table;
  uint32_t* table = stack_table.data();
  if (slots > kStackSlots) {
    heap_table.resize(slots);
    table = heap_table.data();
  }
  std::fill(table, table + slots, UINT32_MAX);
  const size_t mask = slots - 1;
  for (size_t i = 0; i < chain.size(); ++i) {
    const BlockKey& k = chain[i];
    if (k.IsZero()) return absl::InvalidArgumentError(absl::StrCat("chain[", i, "]: zero key"));
    for (size_t h = (k.lo ^ (k.hi >> 7)) & mask;; h = (h + 1) & mask) {
      if (table[h] == UINT32_MAX) {
        table[h] = static_cast<uint32_t>(i);
        break;
      }
      if (chain[table[h]] == k) {
        return absl::InvalidArgumentError(
            absl::StrCat("chain[", i, "]: key ", k.ToHex(), " repeats chain[", table[h], "]"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateChunk(const Namespace& ns, const ChunkRef& chunk, size_t payload_bytes) {
  if (chunk.key.IsZero()) return absl::InvalidArgumentError("chunk.key: must not be zero");
  if (chunk.key == chunk.parent) {
    return absl::InvalidArgumentError("chunk.parent: equals chunk.key");
  }
  const uint32_t bs = ns.layout().tokens_per_block;
  if (chunk.num_tokens == 0 || chunk.num_tokens % bs != 0 ||
      chunk.num_tokens > ns.tokens_per_chunk()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk.num_tokens = ", chunk.num_tokens, " must be a positive multiple of ", bs,
        " (tokens_per_block) up to ", ns.tokens_per_chunk(), " (tokens_per_chunk)"));
  }
  const size_t want = ns.PayloadBytes(chunk.num_tokens);
  if (payload_bytes != want) {
    return absl::InvalidArgumentError(absl::StrCat("payload: ", payload_bytes, " bytes, but ",
                                                   chunk.num_tokens, " tokens of this layout are ",
                                                   want, " bytes"));
  }
  return absl::OkStatus();
}

// ---- EmbeddedCache ----------------------------------------------------------

struct EmbeddedCache::NvmeRead {
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  BlockKey key;
  NvmeChunkInfo info;
  std::unique_ptr<std::byte, Free> memory;
  size_t size = 0;

  absl::Span<std::byte> buffer() { return absl::MakeSpan(memory.get(), size); }
};

EmbeddedCache::EmbeddedCache(const CacheOptions& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<EmbeddedCache>> EmbeddedCache::Create(
    const CacheOptions& options, const EmbeddedCacheSeams& seams) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<EmbeddedCache> cache(new EmbeddedCache(options));
  cache->event_sink_ = seams.event_sink;
  DramTierOptions dram = ToDramOptions(options);
  dram.arena.allocator = seams.arena_allocator;
  if (options.nvme.enabled()) KVTIER_RETURN_IF_ERROR(cache->OpenNvme(seams));
  if (options.blob.enabled()) {
    KVTIER_ASSIGN_OR_RETURN(cache->blob_, BlobTier::Create(options.blob, seams.blob_log));
    cache->blob_on_demotion_ = options.blob.policy == "on_demotion";
    cache->blob_always_ = options.blob.policy == "always";
    cache->StartWorkers();
  }
  if (options.nvme.enabled() || cache->blob_on_demotion_) {
    EmbeddedCache* self = cache.get();
    dram.on_evict = [self](const ChunkMeta& meta, absl::Span<const std::byte> encoded) {
      self->Demote(meta, encoded);
    };
  } else if (seams.event_sink != nullptr) {
    EmbeddedCache* self = cache.get();
    dram.on_evict = [self](const ChunkMeta& meta, absl::Span<const std::byte>) {
      self->Emit(ChunkEvent::Kind::kRemoved, meta.namespace_id, meta.key, Tier::kDram);
    };
  }
  KVTIER_ASSIGN_OR_RETURN(cache->dram_, DramTier::Create(std::move(dram)));
  if (cache->track_reads_) {
    // A bound on the chunks DRAM can hold (4 KiB is the smallest slot).
    cache->max_tracked_per_shard_ =
        std::max<uint64_t>(1024, options.dram_capacity_bytes / 4096 / kAccessShards);
  }
  if (options.register_with_gpu) {
    const Arena& arena = cache->dram_->arena();
    absl::Status s = RegisterHostMemoryForDevice(arena.base(), arena.size());
    cache->gpu_registered_ = s.ok();
    cache->gpu_registration_ = s.ok() ? "registered" : std::string(s.message());
  } else {
    cache->gpu_registration_ = "disabled (register_with_gpu = false)";
  }
  return cache;
}

absl::Status EmbeddedCache::OpenNvme(const EmbeddedCacheSeams& seams) {
  KVTIER_ASSIGN_OR_RETURN(admission_, NewAdmissionPolicy(options_.nvme.admission));
  track_reads_ = options_.nvme.admission != "all";
  persist_on_close_seconds_ = options_.nvme.persist_on_close_seconds;
  access_ = std::make_unique<AccessShard[]>(kAccessShards);
  NvmeTierOptions nvme_options = ToNvmeTierOptions(options_, seams.nvme_env);
  if (event_sink_ != nullptr) {
    nvme_options.on_evict = [this](uint64_t namespace_id, const BlockKey& key) {
      Emit(ChunkEvent::Kind::kRemoved, namespace_id, key, Tier::kNvme);
    };
  }
  absl::StatusOr<std::unique_ptr<NvmeTier>> tier = NvmeTier::Create(nvme_options);
  if (!tier.ok()) {
    return absl::Status(tier.status().code(), absl::StrCat("nvme: ", tier.status().message()));
  }
  nvme_ = std::move(*tier);
  StartWorkers();
  return absl::OkStatus();
}

void EmbeddedCache::StartWorkers() {
  if (!workers_.empty()) return;
  constexpr int kWorkers = 2;
  for (int i = 0; i < kWorkers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

EmbeddedCache::~EmbeddedCache() {
  (void)Close();
  if (gpu_registered_) (void)UnregisterHostMemoryForDevice(dram_->arena().base());
}

absl::Status EmbeddedCache::Close() {
  absl::MutexLock close_lock(&close_mu_);
  if (closed_) return close_status_;
  closed_ = true;
  // Uploads still queued get blob.write_deadline_ms to finish.
  if (blob_ != nullptr) blob_->Close();
  if (nvme_ != nullptr) {
    WaitForDemotions();
    PersistDramToNvme();
    // New demotions are dropped from here on; reads in flight complete (their
    // callbacks post to the workers, which still run).
    nvme_closed_.store(true);
    WaitForDemotions();
    close_status_ = nvme_->Close();
  }
  {
    absl::MutexLock lock(&work_mu_);
    workers_stopping_ = true;
  }
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  return close_status_;
}

void EmbeddedCache::PersistDramToNvme() {
  const double budget = persist_on_close_seconds_;
  // No DRAM tier: Create failed after NVMe opened (Blob or the arena).
  if (!(budget > 0) || dram_ == nullptr) return;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(budget));
  // Shallowest first: a restart reaches a prefix's deep chunks only through
  // its first ones. Put waits for room in flight; a chunk NVMe refuses (full
  // of chunks it cannot evict, or an I/O error) is skipped.
  dram_->ForEachChunk([&](const ChunkMeta& meta, absl::Span<const std::byte> sealed) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    if (nvme_->Contains(meta.namespace_id, meta.key)) return true;
    if (nvme_->Put(meta, sealed).ok()) ++persisted_on_close_;
    return true;
  });
}

void EmbeddedCache::WaitForDemotions() {
  if (nvme_ == nullptr) return;
  absl::MutexLock lock(&demote_mu_);
  demote_mu_.Await(absl::Condition(
      +[](uint64_t* n) { return *n == 0; }, &demotions_in_flight_));
}

// ---- demotion -----------------------------------------------------------------

void EmbeddedCache::Emit(ChunkEvent::Kind kind, uint64_t ns_id, const BlockKey& key, Tier tier,
                         uint32_t num_tokens) {
  if (event_sink_ == nullptr) return;
  const ChunkEvent e{kind, ns_id, key, tier, num_tokens};
  event_sink_->OnChunkEvents(absl::MakeConstSpan(&e, 1));
}

void EmbeddedCache::Demote(const ChunkMeta& meta, absl::Span<const std::byte> encoded) {
  Emit(ChunkEvent::Kind::kRemoved, meta.namespace_id, meta.key, Tier::kDram);
  if (blob_on_demotion_) (void)blob_->Enqueue(meta, encoded);
  if (nvme_ == nullptr) return;
  const uint32_t reads = track_reads_ ? TakeReads(meta.namespace_id, meta.key) : 0;
  if (nvme_closed_.load(std::memory_order_relaxed)) {
    skipped_io_error_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (nvme_->Contains(meta.namespace_id, meta.key)) {
    already_stored_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (!admission_->Admit(meta, reads)) {
    skipped_admission_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  uint64_t demotion = 0;
  {
    absl::MutexLock lock(&demote_mu_);
    ++demotions_in_flight_;
    demotion = ++demotions_started_;
    demotions_open_.emplace(demotion, meta.namespace_id);
  }
  absl::Status s = nvme_->PutAsync(meta, encoded, [this, meta, demotion](const absl::Status& st) {
    if (st.ok()) {
      Emit(ChunkEvent::Kind::kStored, meta.namespace_id, meta.key, Tier::kNvme, meta.num_tokens);
    }
    DemotionDone(st, demotion);
  });
  if (!s.ok()) {
    switch (s.code()) {
      case absl::StatusCode::kUnavailable:
        skipped_busy_.fetch_add(1, std::memory_order_relaxed);
        break;
      case absl::StatusCode::kResourceExhausted:
        skipped_full_.fetch_add(1, std::memory_order_relaxed);
        break;
      default:
        skipped_io_error_.fetch_add(1, std::memory_order_relaxed);
        break;
    }
    DemotionEnded(demotion);
  }
}

void EmbeddedCache::DemotionDone(const absl::Status& status, uint64_t demotion) {
  if (status.ok()) {
    demoted_.fetch_add(1, std::memory_order_relaxed);
  } else {
    skipped_io_error_.fetch_add(1, std::memory_order_relaxed);
  }
  DemotionEnded(demotion);
}

void EmbeddedCache::DemotionEnded(uint64_t demotion) {
  absl::MutexLock lock(&demote_mu_);
  --demotions_in_flight_;
  demotions_open_.erase(demotion);
}

void EmbeddedCache::WaitForNamespaceDemotions(uint64_t namespace_id) {
  absl::MutexLock lock(&demote_mu_);
  struct Arg {
    const std::map<uint64_t, uint64_t>* open;
    uint64_t ns;
    uint64_t upto;
  } arg{&demotions_open_, namespace_id, demotions_started_};
  // Open demotions are few (bounded by NVMe's bytes in flight).
  demote_mu_.Await(absl::Condition(
      +[](Arg* a) {
        for (const auto& [id, ns] : *a->open) {
          if (id > a->upto) break;
          if (ns == a->ns) return false;
        }
        return true;
      },
      &arg));
}

// ---- read tracking (admission) ------------------------------------------------

void EmbeddedCache::NoteRead(uint64_t ns_id, const BlockKey& key) {
  if (!track_reads_) return;
  NsKey k{ns_id, key};
  AccessShard& sh = access_[absl::HashOf(k) % kAccessShards];
  absl::MutexLock lock(&sh.mu);
  ++sh.reads[k];
  if (sh.reads.size() > max_tracked_per_shard_) {
    // Entries of chunks that left DRAM without an eviction (Remove) linger;
    // drop every entry whose chunk is gone.
    absl::erase_if(sh.reads,
                   [&](const auto& kv) { return !dram_->CouldExist(kv.first.ns, kv.first.key); });
  }
}

uint32_t EmbeddedCache::TakeReads(uint64_t ns_id, const BlockKey& key) {
  NsKey k{ns_id, key};
  AccessShard& sh = access_[absl::HashOf(k) % kAccessShards];
  absl::MutexLock lock(&sh.mu);
  auto it = sh.reads.find(k);
  if (it == sh.reads.end()) return 0;
  const uint32_t n = it->second;
  sh.reads.erase(it);
  return n;
}

void EmbeddedCache::ForgetReads(uint64_t ns_id, const BlockKey& key) {
  if (track_reads_) (void)TakeReads(ns_id, key);
}

// ---- workers --------------------------------------------------------------------

void EmbeddedCache::Post(absl::AnyInvocable<void() &&> task) {
  {
    absl::MutexLock lock(&work_mu_);
    if (!workers_stopping_ && !workers_.empty()) {
      work_.push_back(std::move(task));
      return;
    }
  }
  std::move(task)();
}

void EmbeddedCache::WorkerLoop() {
  for (;;) {
    absl::AnyInvocable<void() &&> task;
    {
      absl::MutexLock lock(&work_mu_);
      work_mu_.Await(absl::Condition(
          +[](EmbeddedCache* c) { return c->workers_stopping_ || !c->work_.empty(); }, this));
      if (work_.empty()) return;  // stopping, and everything queued has run
      task = std::move(work_.front());
      work_.pop_front();
    }
    std::move(task)();
  }
}

// ---- lookup -----------------------------------------------------------------------

std::vector<ChunkLocation> EmbeddedCache::Locate(uint64_t ns_id,
                                                 absl::Span<const BlockKey> chain) const {
  const size_t in_dram = dram_->MatchPrefix(ns_id, chain);
  std::vector<ChunkLocation> out(in_dram, ChunkLocation{Tier::kDram, ""});
  if (nvme_ == nullptr || nvme_closed_.load(std::memory_order_relaxed)) return out;
  for (size_t i = in_dram; i < chain.size(); ++i) {
    if (nvme_->Contains(ns_id, chain[i])) {
      out.push_back(ChunkLocation{Tier::kNvme, ""});
    } else if (dram_->CouldExist(ns_id, chain[i])) {
      out.push_back(ChunkLocation{Tier::kDram, ""});
    } else {
      break;
    }
  }
  return out;
}

absl::StatusOr<LookupResult> EmbeddedCache::Lookup(const Namespace& ns,
                                                   absl::Span<const BlockKey> chain) {
  KVTIER_RETURN_IF_ERROR(ValidateChain(chain));
  LookupResult result;
  result.chunks = Locate(ns.id(), chain);
  if (blob_ != nullptr) ExtendWithBlob(ns.id(), chain, result.chunks);
  result.matched = result.chunks.size();
  lookups_.fetch_add(1, std::memory_order_relaxed);
  lookup_chunks_.fetch_add(chain.size(), std::memory_order_relaxed);
  lookup_hits_.fetch_add(result.matched, std::memory_order_relaxed);
  return result;
}

// ---- save -------------------------------------------------------------------------

absl::Status EmbeddedCache::Save(const Namespace& ns, const ChunkRef& chunk,
                                 absl::Span<const std::byte> payload) {
  KVTIER_RETURN_IF_ERROR(ValidateChunk(ns, chunk, payload.size()));
  ChunkMeta meta{ns.id(), chunk.key, chunk.parent, ns.layout_signature(), chunk.num_tokens};
  absl::Status s = dram_->SavePayload(meta, payload);
  if (s.ok()) {
    Emit(ChunkEvent::Kind::kStored, ns.id(), chunk.key, Tier::kDram, chunk.num_tokens);
    if (blob_always_) (void)blob_->EnqueuePayload(meta, payload);
  }
  return s;
}

absl::StatusOr<DramTier::SlotReservation> EmbeddedCache::ReserveSlot(const Namespace& ns,
                                                                     const ChunkRef& chunk) {
  const size_t payload_bytes = ns.PayloadBytes(chunk.num_tokens);
  KVTIER_RETURN_IF_ERROR(ValidateChunk(ns, chunk, payload_bytes));
  ChunkMeta meta{ns.id(), chunk.key, chunk.parent, ns.layout_signature(), chunk.num_tokens};
  absl::StatusOr<DramTier::SlotReservation> r = dram_->ReserveSlot(meta, payload_bytes);
  if (r.ok() && !r->already_present && TracksReservations()) {
    absl::MutexLock lock(&reserve_mu_);
    reserved_[r->handle] = meta;
  }
  return r;
}

absl::Status EmbeddedCache::CommitSlot(uint64_t handle) {
  std::optional<ChunkMeta> meta;
  if (TracksReservations()) {
    absl::MutexLock lock(&reserve_mu_);
    auto it = reserved_.find(handle);
    if (it != reserved_.end()) {
      meta = it->second;
      reserved_.erase(it);
    }
  }
  KVTIER_RETURN_IF_ERROR(dram_->CommitSlot(handle));
  if (meta.has_value()) {
    Emit(ChunkEvent::Kind::kStored, meta->namespace_id, meta->key, Tier::kDram, meta->num_tokens);
    if (blob_always_) {
      // Not a read: no hit, no access for the eviction policy.
      absl::StatusOr<ChunkPin> pin =
          dram_->PinChunkUncounted(meta->namespace_id, meta->key, meta->layout_signature);
      if (pin.ok()) (void)blob_->EnqueuePayload(*meta, pin->payload());
    }
  }
  return absl::OkStatus();
}

void EmbeddedCache::AbortSlot(uint64_t handle) {
  if (TracksReservations()) {
    absl::MutexLock lock(&reserve_mu_);
    reserved_.erase(handle);
  }
  dram_->AbortSlot(handle);
}

// ---- NVMe reads ---------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<EmbeddedCache::NvmeRead>> EmbeddedCache::StartNvmeRead(
    const Namespace& ns, const BlockKey& key, size_t out_limit) {
  absl::StatusOr<NvmeChunkInfo> info = nvme_closed_.load(std::memory_order_relaxed)
                                           ? absl::NotFoundError("the NVMe tier is closed")
                                           : nvme_->Describe(ns.id(), key);
  if (!info.ok()) {
    nvme_misses_.fetch_add(1, std::memory_order_relaxed);
    return absl::NotFoundError(
        absl::StrCat("chunk ", key.ToHex(), " is not cached in namespace ", ns.id()));
  }
  if (info->meta.layout_signature != ns.layout_signature()) {
    nvme_misses_.fetch_add(1, std::memory_order_relaxed);
    return absl::NotFoundError(
        absl::StrCat("chunk ", key.ToHex(), " is cached with another KV layout"));
  }
  const uint64_t payload = info->encoded_bytes - kChunkHeaderBytes;
  if (payload > out_limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "out: ", out_limit, " bytes, smaller than the chunk payload (", payload, " bytes)"));
  }
  auto read = std::make_unique<NvmeRead>();
  read->key = key;
  read->info = *info;
  read->size = AlignUp(info->direct_bytes, 4096);
  read->memory.reset(static_cast<std::byte*>(std::aligned_alloc(4096, read->size)));
  if (read->memory == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", read->size, " bytes to read a chunk from NVMe"));
  }
  return read;
}

absl::StatusOr<size_t> EmbeddedCache::FinishNvmeRead(const Namespace& ns, NvmeRead& read,
                                                     absl::StatusOr<size_t> got,
                                                     absl::Span<std::byte> out, bool* promoted) {
  *promoted = false;
  const std::string key_hex = read.key.ToHex();
  if (!got.ok()) {
    // Gone meanwhile (NotFound), damaged (DataLoss: dropped and counted by
    // the tier) or unreadable (Unavailable: dropped): a miss either way.
    nvme_misses_.fetch_add(1, std::memory_order_relaxed);
    return absl::NotFoundError(absl::StrCat("chunk ", key_hex, " is not cached in namespace ",
                                            ns.id(), " (NVMe: ", got.status().message(), ")"));
  }
  ChunkExpectation expect;
  expect.namespace_id = ns.id();
  expect.key = read.key;
  expect.layout_signature = ns.layout_signature();
  expect.verify_payload_checksum = false;  // the tier verified it
  absl::StatusOr<DecodedChunk> chunk =
      DecodeChunk(absl::MakeConstSpan(read.memory.get(), *got), expect);
  if (!chunk.ok()) {
    nvme_misses_.fetch_add(1, std::memory_order_relaxed);
    return absl::NotFoundError(absl::StrCat("chunk ", key_hex, " is not cached in namespace ",
                                            ns.id(), " (NVMe: ", chunk.status().message(), ")"));
  }
  const size_t n = chunk->payload.size();
  if (!out.empty()) {
    if (out.size() < n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "out: ", out.size(), " bytes, smaller than the chunk payload (", n, " bytes)"));
    }
    std::memcpy(out.data(), chunk->payload.data(), n);
  }
  absl::Status s = dram_->SavePayload(read.info.meta, chunk->payload);
  if (s.ok()) {
    Emit(ChunkEvent::Kind::kStored, ns.id(), read.key, Tier::kDram, read.info.meta.num_tokens);
    *promoted = true;
    promoted_.fetch_add(1, std::memory_order_relaxed);
    NoteRead(ns.id(), read.key);
  } else {
    promotion_failures_.fetch_add(1, std::memory_order_relaxed);
  }
  return n;
}

absl::StatusOr<size_t> EmbeddedCache::LoadFromNvme(const Namespace& ns, const BlockKey& key,
                                                   absl::Span<std::byte> out, bool* promoted) {
  *promoted = false;
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<NvmeRead> read,
                          StartNvmeRead(ns, key, out.empty() ? SIZE_MAX : out.size()));
  absl::StatusOr<size_t> got = nvme_->Get(ns.id(), key, read->buffer());
  return FinishNvmeRead(ns, *read, std::move(got), out, promoted);
}

absl::StatusOr<size_t> EmbeddedCache::Load(const Namespace& ns, const BlockKey& key,
                                           absl::Span<std::byte> out) {
  absl::StatusOr<size_t> r = dram_->LoadPayload(ns.id(), key, ns.layout_signature(), out);
  if (r.ok()) {
    NoteRead(ns.id(), key);
    return r;
  }
  if (r.status().code() != absl::StatusCode::kNotFound) return r;
  if (nvme_ == nullptr && blob_ == nullptr) return r;
  if (out.empty()) {
    return absl::InvalidArgumentError("out: 0 bytes, too small for any chunk payload");
  }
  bool promoted = false;
  if (nvme_ != nullptr) {
    r = LoadFromNvme(ns, key, out, &promoted);
    if (r.ok() || blob_ == nullptr || r.status().code() != absl::StatusCode::kNotFound) return r;
  }
  return LoadFromBlob(ns, key, out, &promoted);
}

absl::StatusOr<size_t> EmbeddedCache::LoadFromBlob(const Namespace& ns, const BlockKey& key,
                                                   absl::Span<std::byte> out, bool* promoted) {
  *promoted = false;
  const absl::Time deadline = absl::Now() + absl::Milliseconds(options_.blob.deadline_ms);
  const uint64_t limit = out.empty() ? options_.slab_bytes : out.size();
  KVTIER_ASSIGN_OR_RETURN(BlobChunk chunk,
                          blob_->Fetch(ns.id(), key, ns.layout_signature(), limit, deadline));
  const absl::Span<const std::byte> payload = chunk.payload();
  if (!out.empty()) std::memcpy(out.data(), payload.data(), payload.size());
  if (dram_->SavePayload(chunk.meta, payload).ok()) {
    *promoted = true;
    blob_promoted_.fetch_add(1, std::memory_order_relaxed);
    NoteRead(ns.id(), key);
  } else {
    promotion_failures_.fetch_add(1, std::memory_order_relaxed);
  }
  return payload.size();
}

void EmbeddedCache::ExtendWithBlob(uint64_t ns_id, absl::Span<const BlockKey> chain,
                                   std::vector<ChunkLocation>& where) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(options_.blob.deadline_ms);
  const bool nvme_open = nvme_ != nullptr && !nvme_closed_.load(std::memory_order_relaxed);
  auto local = [&](size_t i) -> std::optional<Tier> {
    if (nvme_open && nvme_->Contains(ns_id, chain[i])) return Tier::kNvme;
    if (dram_->CouldExist(ns_id, chain[i])) return Tier::kDram;
    return std::nullopt;
  };
  // The prefix goes on through local chunks and runs of chunks Blob holds.
  size_t i = where.size();
  while (i < chain.size()) {
    if (std::optional<Tier> t = local(i)) {
      where.push_back(ChunkLocation{*t, ""});
      ++i;
      continue;
    }
    size_t end = i + 1;
    while (end < chain.size() && !local(end).has_value()) ++end;
    const size_t n =
        blob_->MatchPrefix(ns_id, chain.subspan(i, end - i), options_.blob.probe, deadline);
    where.insert(where.end(), n, ChunkLocation{Tier::kBlob, ""});
    if (n < end - i) break;
    i = end;
  }
}

void EmbeddedCache::LoadAsync(const Namespace& ns, const BlockKey& key, absl::Span<std::byte> out,
                              LoadCallback done) {
  absl::StatusOr<size_t> r = dram_->LoadPayload(ns.id(), key, ns.layout_signature(), out);
  if (r.ok()) NoteRead(ns.id(), key);
  if (r.ok() || (nvme_ == nullptr && blob_ == nullptr) ||
      r.status().code() != absl::StatusCode::kNotFound) {
    std::move(done)(std::move(r));
    return;
  }
  if (out.empty()) {
    std::move(done)(absl::InvalidArgumentError("out: 0 bytes, too small for any chunk payload"));
    return;
  }
  if (blob_ != nullptr && (nvme_ == nullptr || nvme_closed_.load(std::memory_order_relaxed) ||
                           !nvme_->Contains(ns.id(), key))) {
    // Not on NVMe: a worker downloads it from Blob.
    Post([this, ns, key, out, done = std::move(done)]() mutable {
      bool promoted = false;
      std::move(done)(LoadFromBlob(ns, key, out, &promoted));
    });
    return;
  }
  absl::StatusOr<std::unique_ptr<NvmeRead>> started = StartNvmeRead(ns, key, out.size());
  if (!started.ok()) {
    std::move(done)(started.status());
    return;
  }
  // The read, the namespace and the callback travel together until the
  // worker finishes the load.
  struct Job {
    Namespace ns;
    std::unique_ptr<NvmeRead> read;
    absl::Span<std::byte> out;
    LoadCallback done;
  };
  auto job = std::make_shared<Job>(Job{ns, std::move(*started), out, std::move(done)});
  absl::Span<std::byte> buffer = job->read->buffer();
  absl::Status s =
      nvme_->GetAsync(ns.id(), key, buffer, [this, job](absl::StatusOr<size_t> got) mutable {
        Post([this, job, got = std::move(got)]() mutable {
          bool promoted = false;
          absl::StatusOr<size_t> n =
              FinishNvmeRead(job->ns, *job->read, std::move(got), job->out, &promoted);
          std::move(job->done)(std::move(n));
        });
      });
  if (s.ok()) return;
  if (s.code() == absl::StatusCode::kUnavailable) {
    // Too much in flight: a worker reads it, waiting for room.
    Post([this, job]() mutable {
      absl::StatusOr<size_t> got = nvme_->Get(job->ns.id(), job->read->key, job->read->buffer());
      bool promoted = false;
      absl::StatusOr<size_t> n =
          FinishNvmeRead(job->ns, *job->read, std::move(got), job->out, &promoted);
      std::move(job->done)(std::move(n));
    });
    return;
  }
  bool promoted = false;
  std::move(job->done)(FinishNvmeRead(ns, *job->read, s, out, &promoted));
}

absl::Status EmbeddedCache::Prefetch(const Namespace& ns, absl::Span<const BlockKey> chain,
                                     PrefetchCallback done) {
  KVTIER_RETURN_IF_ERROR(ValidateChain(chain));
  if (nvme_ == nullptr && blob_ == nullptr) {
    std::move(done)(PrefetchResult{});
    return absl::OkStatus();
  }
  std::vector<ChunkLocation> where = Locate(ns.id(), chain);
  if (blob_ != nullptr) ExtendWithBlob(ns.id(), chain, where);
  std::vector<BlockKey> keys;
  std::vector<BlockKey> blob_keys;
  for (size_t i = 0; i < where.size(); ++i) {
    if (where[i].tier == Tier::kNvme) keys.push_back(chain[i]);
    if (where[i].tier == Tier::kBlob) blob_keys.push_back(chain[i]);
  }
  if (keys.empty() && blob_keys.empty()) {
    std::move(done)(PrefetchResult{});
    return absl::OkStatus();
  }
  Post([this, ns, keys = std::move(keys), blob_keys = std::move(blob_keys),
        done = std::move(done)]() mutable {
    PrefetchResult result;
    result.requested = keys.size() + blob_keys.size();
    for (const BlockKey& key : blob_keys) {
      bool promoted = false;
      absl::StatusOr<size_t> n = LoadFromBlob(ns, key, {}, &promoted);
      if (n.ok() && promoted) {
        ++result.promoted;
        prefetched_.fetch_add(1, std::memory_order_relaxed);
      } else {
        ++result.failed;
      }
    }
    // Reads go out together, up to what NVMe takes in flight; each is
    // promoted as it completes, in chain order.
    struct Pending {
      std::unique_ptr<NvmeRead> read;
      std::future<absl::StatusOr<size_t>> got;
    };
    std::deque<Pending> pending;
    auto finish_oldest = [&] {
      Pending p = std::move(pending.front());
      pending.pop_front();
      bool promoted = false;
      absl::StatusOr<size_t> n = FinishNvmeRead(ns, *p.read, p.got.get(), {}, &promoted);
      if (n.ok() && promoted) {
        ++result.promoted;
        prefetched_.fetch_add(1, std::memory_order_relaxed);
      } else {
        ++result.failed;
      }
    };
    for (const BlockKey& key : keys) {
      absl::StatusOr<std::unique_ptr<NvmeRead>> read = StartNvmeRead(ns, key, SIZE_MAX);
      if (!read.ok()) {
        ++result.failed;
        continue;
      }
      for (;;) {
        auto promise = std::make_shared<std::promise<absl::StatusOr<size_t>>>();
        std::future<absl::StatusOr<size_t>> got = promise->get_future();
        absl::Status s = nvme_->GetAsync(
            ns.id(), key, (*read)->buffer(),
            [promise](absl::StatusOr<size_t> r) { promise->set_value(std::move(r)); });
        if (s.ok()) {
          pending.push_back(Pending{std::move(*read), std::move(got)});
          break;
        }
        if (s.code() == absl::StatusCode::kUnavailable && !pending.empty()) {
          finish_oldest();  // frees room in flight
          continue;
        }
        if (s.code() == absl::StatusCode::kUnavailable) {
          promise->set_value(nvme_->Get(ns.id(), key, (*read)->buffer()));
        } else {
          promise->set_value(s);
        }
        pending.push_back(Pending{std::move(*read), std::move(got)});
        break;
      }
    }
    while (!pending.empty()) finish_oldest();
    std::move(done)(result);
  });
  return absl::OkStatus();
}

absl::StatusOr<ChunkPin> EmbeddedCache::Pin(const Namespace& ns, const BlockKey& key) {
  absl::StatusOr<ChunkPin> pin = dram_->PinChunk(ns.id(), key, ns.layout_signature());
  if (pin.ok()) {
    NoteRead(ns.id(), key);
    return pin;
  }
  if ((nvme_ == nullptr && blob_ == nullptr) ||
      pin.status().code() != absl::StatusCode::kNotFound) {
    return pin;
  }
  // Promote, then pin; another thread's saves may evict the promoted chunk
  // before the pin takes it, so try a few times.
  constexpr int kAttempts = 3;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    bool promoted = false;
    absl::StatusOr<size_t> n = absl::NotFoundError("");
    if (nvme_ != nullptr) n = LoadFromNvme(ns, key, {}, &promoted);
    if (!n.ok() && blob_ != nullptr && absl::IsNotFound(n.status())) {
      n = LoadFromBlob(ns, key, {}, &promoted);
    }
    if (!n.ok()) return n.status();
    if (!promoted) {
      return absl::ResourceExhaustedError(
          absl::StrCat("chunk ", key.ToHex(),
                       " is in a lower tier, but DRAM has no room to promote it for a pin"));
    }
    // The lower tier's read was the hit (counted there, as a Load from it
    // is); pinning the promoted copy is not a second one in DRAM.
    pin = dram_->PinChunkUncounted(ns.id(), key, ns.layout_signature());
    if (pin.ok() || pin.status().code() != absl::StatusCode::kNotFound) return pin;
  }
  return pin;
}

absl::StatusOr<size_t> EmbeddedCache::Remove(const Namespace& ns, const BlockKey& key) {
  return RemoveById(ns.id(), key);
}

absl::StatusOr<size_t> EmbeddedCache::RemoveById(uint64_t namespace_id, const BlockKey& key) {
  absl::StatusOr<size_t> removed = dram_->RemoveTree(namespace_id, key);
  ForgetReads(namespace_id, key);
  // A pinned chunk stays (RemoveTree skips it): the index must keep it.
  if (removed.ok() && !dram_->CouldExist(namespace_id, key)) {
    Emit(ChunkEvent::Kind::kRemoved, namespace_id, key, Tier::kDram);
  }
  if (blob_ != nullptr && blob_->Remove(namespace_id, key) && !removed.ok() &&
      (nvme_ == nullptr || !nvme_->Contains(namespace_id, key))) {
    removed = size_t{1};
  }
  if (nvme_ == nullptr || nvme_closed_.load(std::memory_order_relaxed)) return removed;
  absl::Status s = nvme_->Remove(namespace_id, key);
  if (s.ok()) Emit(ChunkEvent::Kind::kRemoved, namespace_id, key, Tier::kNvme);
  if (removed.ok()) return removed;
  if (s.ok()) return size_t{1};
  if (s.code() != absl::StatusCode::kNotFound) return s;
  return removed.status();
}

size_t EmbeddedCache::RemoveNamespace(uint64_t namespace_id) {
  // Blob objects of the namespace are deleted in the background (whichever
  // node wrote them); they are not counted in the result. That comes after
  // DRAM has let go of the namespace: chunks it evicted until then may have
  // been queued for upload (on_demotion), and Blob drops those.
  if (nvme_ == nullptr || nvme_closed_.load(std::memory_order_relaxed)) {
    const size_t removed = dram_->RemoveNamespace(namespace_id);
    if (blob_ != nullptr) (void)blob_->RemoveNamespace(namespace_id);
    return removed;
  }
  // Chunks in both tiers count once: note which NVMe chunks DRAM also holds.
  std::vector<BlockKey> on_nvme = nvme_->KeysOf(namespace_id);
  std::vector<bool> in_dram(on_nvme.size());
  for (size_t i = 0; i < on_nvme.size(); ++i) {
    in_dram[i] = dram_->MatchPrefix(namespace_id, absl::MakeConstSpan(&on_nvme[i], 1)) > 0;
  }
  // DRAM returns once chunks of the namespace it evicted before are handed
  // to Demote; those still being written to NVMe would outlive the removal.
  size_t removed = dram_->RemoveNamespace(namespace_id);
  WaitForNamespaceDemotions(namespace_id);
  if (blob_ != nullptr) (void)blob_->RemoveNamespace(namespace_id);
  {
    absl::flat_hash_set<BlockKey> seen(on_nvme.begin(), on_nvme.end());
    for (const BlockKey& k : nvme_->KeysOf(namespace_id)) {
      if (seen.insert(k).second) {
        on_nvme.push_back(k);
        in_dram.push_back(false);
      }
    }
  }
  for (size_t i = 0; i < on_nvme.size(); ++i) {
    ForgetReads(namespace_id, on_nvme[i]);
    const bool gone = nvme_->Remove(namespace_id, on_nvme[i]).ok();
    if (gone) Emit(ChunkEvent::Kind::kRemoved, namespace_id, on_nvme[i], Tier::kNvme);
    if (in_dram[i] && !dram_->CouldExist(namespace_id, on_nvme[i])) {
      Emit(ChunkEvent::Kind::kRemoved, namespace_id, on_nvme[i], Tier::kDram);
    }
    if (gone && !in_dram[i]) ++removed;
  }
  return removed;
}

CacheStats EmbeddedCache::Stats() const {
  CacheStats s;
  s.lookups = lookups_.load(std::memory_order_relaxed);
  s.lookup_chunks = lookup_chunks_.load(std::memory_order_relaxed);
  s.lookup_hits = lookup_hits_.load(std::memory_order_relaxed);
  s.tiers.push_back(dram_->Stats());
  s.huge_pages = dram_->huge_pages();
  s.gpu_registered = gpu_registered_;
  s.gpu_registration = gpu_registration_;
  if (nvme_ != nullptr) {
    const NvmeTierStats d = nvme_->DetailedStats();
    TieringStats& t = s.tiering;
    t.nvme_enabled = true;
    t.nvme_volume = d.volume_path;
    t.nvme_io_mode = d.io_mode;
    t.nvme_open_source = d.open_source;
    t.nvme_recovered_chunks = d.recovered_chunks;
    t.demoted = demoted_.load(std::memory_order_relaxed);
    t.demotion_already_stored = already_stored_.load(std::memory_order_relaxed);
    t.skipped_admission = skipped_admission_.load(std::memory_order_relaxed);
    t.skipped_busy = skipped_busy_.load(std::memory_order_relaxed);
    t.skipped_full = skipped_full_.load(std::memory_order_relaxed);
    t.skipped_io_error = skipped_io_error_.load(std::memory_order_relaxed);
    {
      absl::MutexLock lock(&demote_mu_);
      t.demotions_in_flight = demotions_in_flight_;
    }
    t.promoted = promoted_.load(std::memory_order_relaxed);
    t.promotion_failures = promotion_failures_.load(std::memory_order_relaxed);
    t.prefetched = prefetched_.load(std::memory_order_relaxed);
    TierStats nv = d.tier;
    nv.tier = Tier::kNvme;
    // Misses: loads that found the chunk in neither tier, or damaged on NVMe.
    nv.misses = nvme_misses_.load(std::memory_order_relaxed);
    // Rejections: demotions NVMe refused or failed (admission refusals are
    // policy, not lack of room, and are counted in TieringStats only).
    nv.save_rejections = t.skipped_busy + t.skipped_full + t.skipped_io_error;
    s.tiers.push_back(nv);
  }
  if (blob_ != nullptr) {
    const BlobTierStats b = blob_->Stats();
    TieringStats& t = s.tiering;
    t.blob_enabled = true;
    t.blob_endpoint = absl::StrCat(options_.blob.endpoint, "/", options_.blob.container);
    t.blob_policy = options_.blob.policy;
    t.blob_degraded = b.degraded;
    t.blob_degraded_events = b.degraded_events;
    t.blob_uploaded = b.uploaded;
    t.blob_upload_failures = b.upload_failures;
    t.blob_skipped_queue_full = b.skipped_queue_full;
    t.blob_skipped_deleting = b.skipped_deleting;
    t.blob_skipped_degraded = b.skipped_degraded;
    t.blob_queued = b.queued;
    t.blob_promoted = blob_promoted_.load(std::memory_order_relaxed);
    t.blob_probes = b.probes;
    t.blob_probe_hits = b.probe_hits;
    t.blob_deadline_misses = b.deadline_misses;
    t.blob_requests_ok = b.http.requests_ok;
    t.blob_requests_not_found = b.http.requests_not_found;
    t.blob_requests_denied = b.http.requests_denied;
    t.blob_requests_client_error = b.http.requests_client_error;
    t.blob_requests_throttled = b.http.requests_throttled;
    t.blob_requests_server_error = b.http.requests_server_error;
    t.blob_requests_connection_error = b.http.requests_connection_error;
    t.blob_retries = b.http.retries;
    t.blob_bytes_sent = b.http.bytes_sent;
    t.blob_bytes_received = b.http.bytes_received;
    TierStats bt;
    bt.tier = Tier::kBlob;
    bt.chunks = b.recorded;  // chunks this node uploaded (and remembers)
    bt.capacity_bytes = options_.blob.capacity_bytes;
    bt.used_bytes = b.recorded_bytes;
    bt.evictions = b.capacity_deletions;
    bt.hits = b.fetched;
    bt.misses = b.fetch_misses;
    bt.saves = b.uploaded;
    bt.save_rejections =
        b.skipped_queue_full + b.skipped_degraded + b.skipped_deleting + b.upload_failures;
    bt.bytes_written = b.bytes_uploaded;
    bt.bytes_read = b.bytes_downloaded;
    bt.corrupt_chunks = b.corrupt;
    s.tiers.push_back(bt);
  }
  return s;
}

}  // namespace kvtier
