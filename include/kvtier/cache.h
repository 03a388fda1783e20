// kvtier::Cache: the interface an inference server uses to save and reuse KV.
//
// Cache::Create builds the embedded cache: it lives in the caller's process
// and keeps chunks in a bounded host-DRAM arena (tier T1) and, when
// CacheOptions::nvme.path is set, in a volume on local NVMe (tier T2): chunks
// evicted from DRAM are written there (demoted) in the background, and a
// chunk found there is read back and copied into DRAM again (promoted). Other
// implementations of the same interface (the kvtierd client) are
// interchangeable with it.
//
// The unit of storage is a chunk (see namespace.h): a Save stores one chunk's
// payload under its key, a Lookup tells how many leading chunks of a key chain
// are cached, a Load copies one chunk's payload out. A chain is only useful
// whole, so eviction removes chain tails before their parents, and a pinned
// chunk is never evicted.
//
// Errors (absl::Status codes mean one thing each):
//   NotFound           the chunk is not cached (in this namespace)
//   ResourceExhausted  no room: every slot that could take it is pinned or busy
//   InvalidArgument    bad input; the message names the field
//   DataLoss           stored bytes failed a header or checksum check (the
//                      chunk is dropped and counted)
//   Unavailable        transient; retry later
//
// Thread-safety: every method may be called from any number of threads.
#ifndef KVTIER_INCLUDE_KVTIER_CACHE_H_
#define KVTIER_INCLUDE_KVTIER_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvtier/keys.h"
#include "kvtier/namespace.h"

namespace kvtier {

// Where a chunk lives. Values are part of the wire format (gRPC, events).
enum class Tier : uint8_t {
  kNone = 0,
  kGpu = 1,     // G0: the engine's own pool
  kDram = 2,    // T1: host DRAM
  kNvme = 3,    // T2: local NVMe
  kBlob = 4,    // T3: object storage
  kRemote = 5,  // another node's DRAM
};
std::string_view TierName(Tier tier);

struct ChunkLocation {
  Tier tier = Tier::kNone;
  std::string holder;  // node that holds it; empty for this node
};

struct LookupResult {
  // Number of leading chunks of the chain that are cached.
  size_t matched = 0;
  // One entry per matched chunk, in chain order.
  std::vector<ChunkLocation> chunks;
};

// Counters of one tier. Monotonic counters only grow; gauges are current.
struct TierStats {
  Tier tier = Tier::kNone;
  uint64_t capacity_bytes = 0;   // gauge
  uint64_t used_bytes = 0;       // gauge: bytes of slots holding chunks
  uint64_t chunks = 0;           // gauge: resident chunks
  uint64_t pinned_chunks = 0;    // gauge
  uint64_t hits = 0;             // chunks found by Load
  uint64_t misses = 0;           // Loads that found nothing
  uint64_t saves = 0;            // chunks stored
  uint64_t save_rejections = 0;  // saves refused for lack of room
  uint64_t evictions = 0;
  uint64_t bytes_written = 0;   // payload bytes stored
  uint64_t bytes_read = 0;      // payload bytes served
  uint64_t corrupt_chunks = 0;  // header or checksum failures, dropped
};

// The movement of chunks between DRAM and NVMe (all zero without NVMe).
// Monotonic counters unless marked as gauges.
struct TieringStats {
  bool nvme_enabled = false;
  std::string nvme_volume;               // the volume file or device
  std::string nvme_io_mode;              // "direct" or "buffered"
  std::string nvme_open_source;          // how its index was built: "new", "snapshot", "scan"
  uint64_t nvme_recovered_chunks = 0;    // chunks found on NVMe at start
  uint64_t demoted = 0;                  // chunks written to NVMe after leaving DRAM
  uint64_t demotion_already_stored = 0;  // evicted chunks NVMe held already
  // Evicted chunks not written, by reason:
  uint64_t skipped_admission = 0;    // the admission policy refused them
  uint64_t skipped_busy = 0;         // NVMe had max_inflight_bytes in flight
  uint64_t skipped_full = 0;         // NVMe had nothing evictable in that slot size
  uint64_t skipped_io_error = 0;     // the write failed, or NVMe refused it otherwise
  uint64_t demotions_in_flight = 0;  // gauge
  uint64_t promoted = 0;             // chunks copied from NVMe into DRAM
  uint64_t promotion_failures = 0;   // read from NVMe but DRAM had no room
  uint64_t prefetched = 0;           // chunks promoted by Prefetch
  // The Blob tier (all zero without one).
  bool blob_enabled = false;
  std::string blob_endpoint;             // endpoint/container
  std::string blob_policy;               // on_demotion, always or never
  bool blob_degraded = false;            // gauge: Blob unreachable, serving DRAM + NVMe only
  uint64_t blob_degraded_events = 0;     // times the tier became degraded
  uint64_t blob_uploaded = 0;            // chunks written to Blob
  uint64_t blob_upload_failures = 0;     // uploads that failed (after retries)
  uint64_t blob_skipped_queue_full = 0;  // uploads skipped: write-behind queue full
  uint64_t blob_skipped_deleting = 0;    // uploads skipped: the object's deletion was pending
  uint64_t blob_skipped_degraded = 0;    // uploads skipped: Blob degraded
  uint64_t blob_queued = 0;              // gauge: chunks waiting to upload
  uint64_t blob_promoted = 0;            // chunks copied from Blob into DRAM
  uint64_t blob_probes = 0;              // Get Blob Properties sent by Lookup
  uint64_t blob_probe_hits = 0;          // of those, found
  uint64_t blob_deadline_misses = 0;     // reads that ran out of deadline (a miss)
  // HTTP requests by result, and retries.
  uint64_t blob_requests_ok = 0;
  uint64_t blob_requests_not_found = 0;
  uint64_t blob_requests_denied = 0;
  uint64_t blob_requests_client_error = 0;
  uint64_t blob_requests_throttled = 0;
  uint64_t blob_requests_server_error = 0;
  uint64_t blob_requests_connection_error = 0;
  uint64_t blob_retries = 0;
  uint64_t blob_bytes_sent = 0;      // HTTP body bytes up
  uint64_t blob_bytes_received = 0;  // HTTP body bytes down
};

struct CacheStats {
  uint64_t lookups = 0;          // Lookup calls
  uint64_t lookup_chunks = 0;    // keys asked about
  uint64_t lookup_hits = 0;      // chunks reported cached
  std::vector<TierStats> tiers;  // one per configured tier, fastest first
  bool huge_pages = false;       // the DRAM arena is backed by huge pages
  bool gpu_registered = false;   // the DRAM arena is pinned for GPU DMA
  std::string gpu_registration;  // "registered", or why not
  TieringStats tiering;
};

// Outcome of a Prefetch.
struct PrefetchResult {
  size_t requested = 0;  // chunks of the chain that had to come up from NVMe
  size_t promoted = 0;   // of those, now in DRAM
  size_t failed = 0;     // of those, not promoted (gone, damaged, or no room)
};

// A chunk held in place: it cannot be evicted until the pin is released
// (Release or destruction). payload() points into the cache's memory and stays
// valid for the pin's lifetime. Move-only.
class ChunkPin {
 public:
  ChunkPin() = default;
  ChunkPin(ChunkPin&& other) noexcept;
  ChunkPin& operator=(ChunkPin&& other) noexcept;
  ChunkPin(const ChunkPin&) = delete;
  ChunkPin& operator=(const ChunkPin&) = delete;
  ~ChunkPin();

  bool valid() const { return releaser_ != nullptr; }
  absl::Span<const std::byte> payload() const { return payload_; }
  uint32_t num_tokens() const { return num_tokens_; }
  // Releases the pin now; safe to call twice.
  void Release();

  // For Cache implementations: called once on release with `handle`.
  class Releaser {
   public:
    virtual ~Releaser() = default;
    virtual void ReleasePin(uint64_t handle) = 0;
  };
  ChunkPin(Releaser* releaser, uint64_t handle, absl::Span<const std::byte> payload,
           uint32_t num_tokens)
      : releaser_(releaser), handle_(handle), payload_(payload), num_tokens_(num_tokens) {}

 private:
  Releaser* releaser_ = nullptr;
  uint64_t handle_ = 0;
  absl::Span<const std::byte> payload_;
  uint32_t num_tokens_ = 0;
};

// The NVMe tier (T2) of the embedded cache. docs/nvme-format.md describes the
// volume.
struct NvmeCacheOptions {
  // Folder of the volume (FOLDER/kvtier-nvme.dat, created and preallocated on
  // first use) or a block device. Empty: no NVMe tier (DRAM only).
  std::string path;
  // Bytes of the volume.
  uint64_t capacity_bytes = 16ull << 30;
  // Largest chunk payload, in bytes, of each slot size the volume is carved
  // into (ascending); capacity_bytes is split evenly among them. Empty (the
  // default): slot sizes are chosen on demand, the volume being cut into
  // regions each given to one slot size when first needed (regions hold four
  // of the largest chunk a DRAM slab can hold, within the limits of
  // max_inflight_bytes and a quarter of capacity_bytes). A volume keeps its
  // geometry: reopening with other sizes fails.
  std::vector<uint64_t> slot_payload_bytes;
  // "direct" (O_DIRECT) or "buffered" (for file systems that refuse
  // O_DIRECT, such as tmpfs).
  std::string io_mode = "direct";
  // I/O requests in flight at once (1..4096).
  uint32_t queue_depth = 32;
  // Bytes of staging memory for reads and writes in flight: a multiple of
  // 4096, at least the largest slot, at most 1 GiB. Demotions beyond it are
  // skipped (counted in TieringStats::skipped_busy).
  uint64_t max_inflight_bytes = 64ull << 20;
  // Which chunks evicted from DRAM are written to NVMe: "all", or
  // "second-chance" (only chunks read at least once while in DRAM).
  std::string admission = "all";
  // What a completed demotion survives: "process" (its write completed: a
  // killed process, not a power loss; damaged chunks after a power loss are
  // detected and dropped) or "power" (flushed: survives a power loss, at
  // the cost of two flushes per write).
  std::string durability = "process";
  // Write an index snapshot at close so the next start skips the slot scan.
  bool write_snapshot = true;
  // At Close, copy the chunks still in DRAM (and not yet on NVMe) to NVMe,
  // shallowest first, for at most this many seconds, so a restart finds the
  // hot prefixes too and not only what DRAM had evicted. 0 = off.
  double persist_on_close_seconds = 10;
  // Eviction among NVMe chain tails (a name NewEvictionPolicy knows).
  std::string eviction_policy = "lru";

  bool enabled() const { return !path.empty(); }
  // InvalidArgument naming the field ("nvme.<field>").
  absl::Status Validate() const;
};

// The Azure Blob tier (T3) of the embedded cache: write-behind of chunks to a
// container that every node of a cluster can read. docs/blob-tier.md
// describes naming, policies and faults.
struct BlobCacheOptions {
  // Service endpoint: "https://<account>.blob.core.windows.net", or a path-
  // style one such as Azurite's "http://127.0.0.1:10000/<account>". Empty:
  // no Blob tier.
  std::string endpoint;
  std::string account;            // storage account name
  std::string container;          // container (created when missing)
  std::string prefix = "kvtier";  // object names: <prefix>/<namespace id hex>/<key hex>
  std::string shared_key;         // base64 account key (Shared Key auth), or
  std::string sas;                // a SAS token (query string without '?')
  // Which chunks are uploaded: "on_demotion" (when they leave DRAM, beside
  // the NVMe demotion), "always" (every save), "never" (read only).
  std::string policy = "on_demotion";
  // Lookup asks Blob (Get Blob Properties) about chunks past the local
  // match that this node did not write itself.
  bool probe = false;
  uint32_t queue_chunks = 1024;                // write-behind queue bound, chunks
  uint64_t queue_bytes = 256ull << 20;         // write-behind queue bound, bytes
  uint32_t upload_workers = 4;                 // uploads in flight at once
  uint32_t max_connections = 32;               // HTTP connections kept to the endpoint
  uint64_t single_put_max_bytes = 8ull << 20;  // Put Blob up to this; blocks above
  uint64_t block_bytes = 4ull << 20;           // Put Block size
  uint64_t get_range_bytes = 4ull << 20;       // ranged GETs of a download, in parallel
  uint32_t connect_timeout_ms = 1000;          // one connection attempt
  uint32_t request_timeout_ms = 5000;          // one request attempt
  uint32_t deadline_ms = 2000;            // a Lookup probe or a Load from Blob, retries included
  uint32_t write_deadline_ms = 30000;     // one upload, retries included
  uint32_t max_attempts = 6;              // attempts per request (1 = no retry)
  uint32_t backoff_initial_ms = 20;       // first retry waits up to this (full jitter)
  uint32_t backoff_max_ms = 1000;         // cap of the exponential backoff
  uint32_t recheck_ms = 1000;             // while degraded: how often to try the endpoint
  uint64_t max_record_chunks = 1u << 20;  // chunks this node remembers uploading
  // The most bytes of objects this node keeps in Blob; 0: no bound. When an
  // upload takes the node's recorded objects past it, the least recently
  // used ones (by upload, download, or a demotion that found them stored)
  // are forgotten and deleted in the background. With a bound, a chunk the
  // record forgets for max_record_chunks is deleted as well.
  uint64_t capacity_bytes = 0;

  bool enabled() const { return !endpoint.empty(); }
  // InvalidArgument naming the field ("blob.<field>").
  absl::Status Validate() const;
};

// Options of the embedded cache.
struct CacheOptions {
  // Bytes of host DRAM for chunks (T1). Rounded down to whole slabs.
  uint64_t dram_capacity_bytes = 1ull << 30;
  // Bytes per slab: the arena is carved into slabs, and each slab into slots
  // of one size. The largest chunk (header included) must fit one slab.
  uint64_t slab_bytes = 64ull << 20;
  // Independent lock shards of the key index (power of two, 1..4096).
  uint32_t index_shards = 64;
  // Back the arena with huge pages when the system has them reserved;
  // otherwise ask for transparent huge pages.
  bool huge_pages = true;
  // Touch every arena page at start so the first saves do not page-fault.
  bool prefault = false;
  // Eviction policy among chain tails: "lru" (default), "2q" (first-time
  // chunks go before re-used ones), "2q-chain" (2q that also evicts the
  // unread last chunks of prompts first; best hit rate on the Mooncake
  // trace), "cost" (recompute cost by prefix depth). See
  // src/core/eviction_policies.h and docs/design-notes.md.
  std::string eviction_policy = "lru";
  // Register the arena with the GPU driver (cudaHostRegister) so copies
  // between engine blocks and DRAM slots are DMA without a bounce buffer.
  // Without a GPU (or a CUDA build) the arena stays pageable and
  // CacheStats::gpu_registration says why.
  bool register_with_gpu = true;
  // The NVMe tier; nvme.path empty (the default) keeps every chunk in DRAM.
  NvmeCacheOptions nvme;
  // The Blob tier; blob.endpoint empty (the default) means none.
  BlobCacheOptions blob;

  absl::Status Validate() const;
};

class Cache {
 public:
  virtual ~Cache() = default;

  // Creates the embedded cache. InvalidArgument for bad options;
  // ResourceExhausted when the arena cannot be allocated.
  // With NVMe: the errors of opening the volume, naming its path (NotFound
  // for a missing folder, PermissionDenied for a read-only one,
  // ResourceExhausted when the file system cannot hold it,
  // FailedPrecondition for a volume of other slot sizes or in use).
  static absl::StatusOr<std::unique_ptr<Cache>> Create(const CacheOptions& options);

  // How many leading chunks of `chain` (chunk keys, first chunk first) are
  // cached in `ns`, and where. InvalidArgument when a key repeats or is zero.
  virtual absl::StatusOr<LookupResult> Lookup(const Namespace& ns,
                                              absl::Span<const BlockKey> chain) = 0;

  // Stores one chunk. `payload` must be exactly ns.PayloadBytes(chunk.num_tokens)
  // bytes in the layout of namespace.h; it is copied before Save returns.
  // Saving a key that is already cached is OK and changes nothing.
  // ResourceExhausted when no slot can be freed; InvalidArgument for a payload
  // of the wrong size, num_tokens that is zero, not a whole number of blocks or
  // over tokens_per_chunk, a zero key, or a chunk larger than any slot.
  virtual absl::Status Save(const Namespace& ns, const ChunkRef& chunk,
                            absl::Span<const std::byte> payload) = 0;

  // Copies the payload of `key` into `out` and returns its size in bytes.
  // NotFound when `key` is not cached in `ns`; InvalidArgument when `out` is
  // smaller than the payload (nothing is written).
  // A chunk on NVMe is read (and its checksum verified), copied into `out`
  // and promoted into DRAM; a damaged one is dropped, counted and reported
  // as NotFound. Load waits for the disk; LoadAsync does not.
  virtual absl::StatusOr<size_t> Load(const Namespace& ns, const BlockKey& key,
                                      absl::Span<std::byte> out) = 0;

  using LoadCallback = absl::AnyInvocable<void(absl::StatusOr<size_t>) &&>;
  // Load without waiting for the disk: `done` runs exactly once with what
  // Load would return, either before LoadAsync returns (a DRAM hit, a miss,
  // bad input) or later on a cache thread (a chunk read from NVMe). `out`
  // must stay valid until `done` runs. `done` must not block.
  // This default implementation calls Load.
  virtual void LoadAsync(const Namespace& ns, const BlockKey& key, absl::Span<std::byte> out,
                         LoadCallback done) {
    std::move(done)(Load(ns, key, out));
  }
  // LoadAsync with a future.
  std::future<absl::StatusOr<size_t>> LoadAsync(const Namespace& ns, const BlockKey& key,
                                                absl::Span<std::byte> out) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<size_t>>>();
    std::future<absl::StatusOr<size_t>> f = promise->get_future();
    LoadAsync(ns, key, out,
              [promise](absl::StatusOr<size_t> r) { promise->set_value(std::move(r)); });
    return f;
  }

  using PrefetchCallback = absl::AnyInvocable<void(PrefetchResult) &&>;
  // Brings the chunks of the cached prefix of `chain` (as Lookup reports it)
  // that are on NVMe only up into DRAM, in the background, and calls `done`
  // once when all are done (on a cache thread, or before Prefetch returns
  // when nothing had to move). InvalidArgument for a bad chain (`done` is
  // then not called). This default implementation (a cache without slower
  // tiers) moves nothing.
  virtual absl::Status Prefetch(const Namespace& ns, absl::Span<const BlockKey> chain,
                                PrefetchCallback done) {
    (void)ns;
    (void)chain;
    std::move(done)(PrefetchResult{});
    return absl::OkStatus();
  }
  // Prefetch with a future (ready with the rejection or the result).
  std::future<absl::StatusOr<PrefetchResult>> Prefetch(const Namespace& ns,
                                                       absl::Span<const BlockKey> chain) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<PrefetchResult>>>();
    std::future<absl::StatusOr<PrefetchResult>> f = promise->get_future();
    absl::Status s = Prefetch(ns, chain, [promise](PrefetchResult r) { promise->set_value(r); });
    if (!s.ok()) promise->set_value(std::move(s));
    return f;
  }

  // Pins `key` in place (zero-copy read). NotFound when it is not cached. A
  // chunk on NVMe only is promoted into DRAM first (ResourceExhausted when
  // DRAM has no room for it).
  virtual absl::StatusOr<ChunkPin> Pin(const Namespace& ns, const BlockKey& key) = 0;

  // Removes `key` and every cached chunk that extends it, and returns how
  // many chunks were removed. Pinned chunks are left in place. With NVMe,
  // `key` is removed from both tiers; descendants on NVMe that are not in
  // DRAM stay until evicted, but no Lookup reaches them (a prefix is matched
  // from its first chunk).
  // NotFound when `key` is not cached in `ns`.
  virtual absl::StatusOr<size_t> Remove(const Namespace& ns, const BlockKey& key) = 0;

  virtual CacheStats Stats() const = 0;
};

}  // namespace kvtier

#endif  // KVTIER_INCLUDE_KVTIER_CACHE_H_
