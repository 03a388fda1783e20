// kvtier::Cache: the interface an inference server uses to save and reuse KV.
//
// Cache::Create builds the embedded cache: it lives in the caller's process
// and keeps chunks in a bounded host-DRAM arena (tier T1). Other
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
#include <memory>
#include <string>
#include <vector>

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

struct CacheStats {
  uint64_t lookups = 0;          // Lookup calls
  uint64_t lookup_chunks = 0;    // keys asked about
  uint64_t lookup_hits = 0;      // chunks reported cached
  std::vector<TierStats> tiers;  // one per configured tier, fastest first
  bool huge_pages = false;       // the DRAM arena is backed by huge pages
  bool gpu_registered = false;   // the DRAM arena is pinned for GPU DMA
  std::string gpu_registration;  // "registered", or why not
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
  // chunks go before re-used ones; best hit rate on the Mooncake trace),
  // "cost" (recompute cost by prefix depth). See src/core/eviction_policies.h.
  std::string eviction_policy = "lru";
  // Register the arena with the GPU driver (cudaHostRegister) so copies
  // between engine blocks and DRAM slots are DMA without a bounce buffer.
  // Without a GPU (or a CUDA build) the arena stays pageable and
  // CacheStats::gpu_registration says why.
  bool register_with_gpu = true;

  absl::Status Validate() const;
};

class Cache {
 public:
  virtual ~Cache() = default;

  // Creates the embedded cache. InvalidArgument for bad options;
  // ResourceExhausted when the arena cannot be allocated.
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
  virtual absl::StatusOr<size_t> Load(const Namespace& ns, const BlockKey& key,
                                      absl::Span<std::byte> out) = 0;

  // Pins `key` in place (zero-copy read). NotFound when it is not cached.
  virtual absl::StatusOr<ChunkPin> Pin(const Namespace& ns, const BlockKey& key) = 0;

  // Removes `key` and every cached chunk that extends it, and returns how
  // many chunks were removed. Pinned chunks are left in place.
  // NotFound when `key` is not cached in `ns`.
  virtual absl::StatusOr<size_t> Remove(const Namespace& ns, const BlockKey& key) = 0;

  virtual CacheStats Stats() const = 0;
};

}  // namespace kvtier

#endif  // KVTIER_INCLUDE_KVTIER_CACHE_H_
