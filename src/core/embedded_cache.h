// The embedded cache: kvtier::Cache inside the caller's process, over the
// DRAM tier and, when CacheOptions::nvme.path is set, the NVMe tier.
// Cache::Create returns one.
//
// Placement. Every save lands in DRAM. A chunk that DRAM evicts to make room
// is offered to the admission policy and, when admitted, handed to
// NvmeTier::PutAsync, which copies it and writes it in the background: the
// evicting thread never waits for the disk. A demotion NVMe refuses (too much
// in flight, nothing evictable, an I/O error) is skipped and counted
// (TieringStats); DRAM goes on serving. A chunk is briefly in neither tier
// while its demotion is being written (WaitForDemotions waits that out).
//
// Reads. Lookup walks the chain through both tiers (a prefix may continue
// from DRAM into NVMe and back). Load, Pin, LoadAsync and Prefetch read an
// NVMe-resident chunk (the tier verifies its checksum; a damaged one is
// dropped, counted and reported as NotFound) and copy it into DRAM again
// (promotion). NVMe keeps its copy, so the chunk's next eviction from DRAM
// writes nothing.
//
// Blob (CacheOptions::blob.endpoint set). Chunks are uploaded write-behind
// by policy: "on_demotion" when DRAM evicts them (beside their NVMe
// demotion), "always" on every save (Save and CommitSlot), "never". Lookup
// continues a prefix past DRAM and NVMe with the chunks this node uploaded
// and, with blob.probe, asks Blob about the rest (within blob.deadline_ms).
// Load, Pin, LoadAsync and Prefetch download a Blob chunk, verify it, and
// promote it into DRAM. An unreachable Blob degrades the cache to DRAM +
// NVMe (BlobTier); no call waits past blob.deadline_ms for it.
//
// Threads. Besides the NVMe tier's completion thread and the Blob tier's
// upload threads, the cache runs two worker threads for the asynchronous
// reads (LoadAsync, Prefetch) when it has a tier below DRAM.
//
// Thread-safety: all methods are thread-safe.
#ifndef KVTIER_SRC_CORE_EMBEDDED_CACHE_H_
#define KVTIER_SRC_CORE_EMBEDDED_CACHE_H_

#include <atomic>
#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "kvtier/cache.h"
#include "src/common/env.h"
#include "src/core/admission.h"
#include "src/core/cache_events.h"
#include "src/tiers/blob/blob_tier.h"
#include "src/tiers/dram/dram_tier.h"
#include "src/tiers/nvme/nvme_tier.h"

namespace kvtier {

// Injection points for tests; production uses the defaults.
struct EmbeddedCacheSeams {
  // Files and I/O of the NVMe tier; nullptr means Env::Default(). Not owned;
  // must outlive the cache.
  Env* nvme_env = nullptr;
  // Told about chunks stored in and leaving DRAM and NVMe (the cluster
  // index's feed); nullptr = nobody. Not owned; must outlive the cache.
  // Removals of a chunk's descendants (Remove drops a subtree from DRAM) and
  // DRAM-only chunks of RemoveNamespace are not reported.
  CacheEventSink* event_sink = nullptr;
  // Where the Blob tier's log lines go; empty means stderr.
  BlobLogFn blob_log;
  // Allocates the DRAM arena when huge pages are not in use (ArenaOptions::
  // allocator); empty means a memfd.
  ArenaAllocator arena_allocator;
};

class EmbeddedCache final : public Cache {
 public:
  static absl::StatusOr<std::unique_ptr<EmbeddedCache>> Create(
      const CacheOptions& options, const EmbeddedCacheSeams& seams = {});

  absl::StatusOr<LookupResult> Lookup(const Namespace& ns,
                                      absl::Span<const BlockKey> chain) override;
  absl::Status Save(const Namespace& ns, const ChunkRef& chunk,
                    absl::Span<const std::byte> payload) override;
  absl::StatusOr<size_t> Load(const Namespace& ns, const BlockKey& key,
                              absl::Span<std::byte> out) override;
  using Cache::LoadAsync;
  void LoadAsync(const Namespace& ns, const BlockKey& key, absl::Span<std::byte> out,
                 LoadCallback done) override;
  using Cache::Prefetch;
  absl::Status Prefetch(const Namespace& ns, absl::Span<const BlockKey> chain,
                        PrefetchCallback done) override;
  absl::StatusOr<ChunkPin> Pin(const Namespace& ns, const BlockKey& key) override;
  absl::StatusOr<size_t> Remove(const Namespace& ns, const BlockKey& key) override;
  // Remove by namespace id (kvtierd's Evict, which may name only the id).
  absl::StatusOr<size_t> RemoveById(uint64_t namespace_id, const BlockKey& key);
  // Removes every chunk of a namespace from every tier; returns how many.
  size_t RemoveNamespace(uint64_t namespace_id);
  CacheStats Stats() const override;

  // Close(), ignoring its status.
  ~EmbeddedCache() override;

  // Waits for the demotions in flight, finishes the asynchronous reads and
  // closes the NVMe tier (writing its index snapshot when
  // nvme.write_snapshot). Afterwards the cache serves DRAM only: evicted
  // chunks are dropped (counted as skipped_io_error) and NVMe reads miss.
  // Returns the NVMe tier's close error, if any; safe to call twice.
  absl::Status Close();

  // Blocks until every demotion started before the call has finished
  // (written or failed). Returns at once without NVMe.
  void WaitForDemotions();
  // Chunks Close copied from DRAM to NVMe (nvme.persist_on_close_seconds).
  uint64_t persisted_on_close() const { return persisted_on_close_.load(); }

  DramTier& dram() { return *dram_; }
  // The NVMe tier; nullptr without one.
  NvmeTier* nvme() { return nvme_.get(); }

  // In-place saves, for kvtierd's local clients that write the shared arena
  // (dram().arena()) themselves: checks `chunk` as Save does, then reserves a
  // DRAM slot for its payload (DramTier::ReserveSlot). CommitSlot makes the
  // written chunk visible; AbortSlot gives the slot back.
  absl::StatusOr<DramTier::SlotReservation> ReserveSlot(const Namespace& ns, const ChunkRef& chunk);
  // With blob.policy "always", CommitSlot also queues the chunk's upload.
  absl::Status CommitSlot(uint64_t handle);
  void AbortSlot(uint64_t handle);

  // The Blob tier; nullptr without one.
  BlobTier* blob() { return blob_.get(); }

 private:
  struct NsKey {
    uint64_t ns = 0;
    BlockKey key;
    friend bool operator==(const NsKey& a, const NsKey& b) {
      return a.ns == b.ns && a.key == b.key;
    }
    template <typename H>
    friend H AbslHashValue(H h, const NsKey& k) {
      return H::combine(std::move(h), k.ns, k.key);
    }
  };

  // Reads of chunks while in DRAM (for the admission policy), in shards.
  struct AccessShard {
    absl::Mutex mu;
    absl::flat_hash_map<NsKey, uint32_t> reads ABSL_GUARDED_BY(mu);
  };
  static constexpr size_t kAccessShards = 16;

  // A chunk read from NVMe: 4 KiB-aligned memory the device fills directly.
  struct NvmeRead;

  explicit EmbeddedCache(const CacheOptions& options);

  absl::Status OpenNvme(const EmbeddedCacheSeams& seams);
  void StartWorkers();
  // DramTierOptions::on_evict.
  void Demote(const ChunkMeta& meta, absl::Span<const std::byte> encoded);
  void DemotionDone(const absl::Status& status, uint64_t demotion);
  // Forgets a demotion that ended (written, failed, or refused by NVMe).
  void DemotionEnded(uint64_t demotion);
  // Waits until no demotion of the namespace's chunks that began before the
  // call is being written (later ones do not hold it up).
  void WaitForNamespaceDemotions(uint64_t namespace_id);

  // Tier of each chunk of the cached prefix of `chain`.
  std::vector<ChunkLocation> Locate(uint64_t ns_id, absl::Span<const BlockKey> chain) const;

  // Prepares a read of `key` from NVMe into `out_limit`-checked memory:
  // NotFound (counted as an NVMe miss) when NVMe does not hold it,
  // InvalidArgument when its payload exceeds `out_limit` bytes.
  absl::StatusOr<std::unique_ptr<NvmeRead>> StartNvmeRead(const Namespace& ns, const BlockKey& key,
                                                          size_t out_limit);
  // Checks what a read returned, copies the payload into `out` (when not
  // empty) and promotes the chunk into DRAM. Returns the payload size;
  // NotFound for a chunk that was gone or damaged (counted).
  absl::StatusOr<size_t> FinishNvmeRead(const Namespace& ns, NvmeRead& read,
                                        absl::StatusOr<size_t> got, absl::Span<std::byte> out,
                                        bool* promoted);
  // Synchronous read + promotion (waits for room in flight).
  absl::StatusOr<size_t> LoadFromNvme(const Namespace& ns, const BlockKey& key,
                                      absl::Span<std::byte> out, bool* promoted);
  // Download from Blob (within blob.deadline_ms), verification, copy into
  // `out` (when not empty) and promotion into DRAM. NotFound for a chunk Blob
  // does not hold, damaged, or out of time; InvalidArgument for a small `out`.
  absl::StatusOr<size_t> LoadFromBlob(const Namespace& ns, const BlockKey& key,
                                      absl::Span<std::byte> out, bool* promoted);
  // Extends `where` (the local prefix of `chain`) with the chunks Blob holds.
  void ExtendWithBlob(uint64_t ns_id, absl::Span<const BlockKey> chain,
                      std::vector<ChunkLocation>& where);

  void NoteRead(uint64_t ns_id, const BlockKey& key);
  uint32_t TakeReads(uint64_t ns_id, const BlockKey& key);
  void ForgetReads(uint64_t ns_id, const BlockKey& key);

  // Runs `task` on a worker thread (inline once the workers have stopped).
  void Post(absl::AnyInvocable<void() &&> task);
  void WorkerLoop();
  // Close's copy of DRAM-resident chunks to NVMe (see CacheOptions).
  void PersistDramToNvme();

  // Reports one chunk event to seams.event_sink (when set).
  void Emit(ChunkEvent::Kind kind, uint64_t ns_id, const BlockKey& key, Tier tier,
            uint32_t num_tokens = 0);
  // Whether ReserveSlot records its chunk for CommitSlot.
  bool TracksReservations() const { return event_sink_ != nullptr || blob_always_; }

  const CacheOptions options_;
  CacheEventSink* event_sink_ = nullptr;
  // Declared before dram_ so they are destroyed after it.
  std::unique_ptr<NvmeTier> nvme_;
  std::unique_ptr<BlobTier> blob_;
  bool blob_on_demotion_ = false;
  bool blob_always_ = false;
  // Reserved slots' chunks, for what CommitSlot does besides committing: the
  // Stored event (with an event sink) and the upload (blob.policy "always").
  absl::Mutex reserve_mu_;
  absl::flat_hash_map<uint64_t, ChunkMeta> reserved_ ABSL_GUARDED_BY(reserve_mu_);
  std::atomic<uint64_t> blob_promoted_{0};
  std::unique_ptr<DramTier> dram_;
  std::unique_ptr<AdmissionPolicy> admission_;
  bool track_reads_ = false;
  uint64_t max_tracked_per_shard_ = 0;
  std::unique_ptr<AccessShard[]> access_;

  bool gpu_registered_ = false;
  std::string gpu_registration_;
  std::atomic<uint64_t> lookups_{0};
  std::atomic<uint64_t> lookup_chunks_{0};
  std::atomic<uint64_t> lookup_hits_{0};

  // Demotions.
  mutable absl::Mutex demote_mu_;
  uint64_t demotions_in_flight_ ABSL_GUARDED_BY(demote_mu_) = 0;
  // Demotions being written: number -> namespace id.
  uint64_t demotions_started_ ABSL_GUARDED_BY(demote_mu_) = 0;
  std::map<uint64_t, uint64_t> demotions_open_ ABSL_GUARDED_BY(demote_mu_);
  std::atomic<bool> nvme_closed_{false};
  double persist_on_close_seconds_ = 0;
  std::atomic<uint64_t> persisted_on_close_{0};
  std::atomic<uint64_t> demoted_{0};
  std::atomic<uint64_t> already_stored_{0};
  std::atomic<uint64_t> skipped_admission_{0};
  std::atomic<uint64_t> skipped_busy_{0};
  std::atomic<uint64_t> skipped_full_{0};
  std::atomic<uint64_t> skipped_io_error_{0};
  // Promotions and NVMe reads.
  std::atomic<uint64_t> promoted_{0};
  std::atomic<uint64_t> promotion_failures_{0};
  std::atomic<uint64_t> prefetched_{0};
  std::atomic<uint64_t> nvme_misses_{0};

  // Workers.
  absl::Mutex work_mu_;
  std::deque<absl::AnyInvocable<void() &&>> work_ ABSL_GUARDED_BY(work_mu_);
  bool workers_stopping_ ABSL_GUARDED_BY(work_mu_) = false;
  std::vector<std::thread> workers_;
  absl::Mutex close_mu_;  // serializes Close
  bool closed_ ABSL_GUARDED_BY(close_mu_) = false;
  absl::Status close_status_ ABSL_GUARDED_BY(close_mu_);
};

// Checks a key chain: no zero key, no key twice. InvalidArgument naming the
// position otherwise.
absl::Status ValidateChain(absl::Span<const BlockKey> chain);

// Checks a chunk and its payload against `ns`.
absl::Status ValidateChunk(const Namespace& ns, const ChunkRef& chunk, size_t payload_bytes);

// The NVMe tier options the cache opens its volume with.
NvmeTierOptions ToNvmeTierOptions(const CacheOptions& options, Env* env);

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_EMBEDDED_CACHE_H_
