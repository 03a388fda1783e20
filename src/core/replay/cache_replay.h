// Trace replay through the real cache: the embedded one (kvtier::Cache::Create)
// or a running kvtierd (any kvtier::Cache, e.g. a kvtier::Client).
//
// ReplayThroughCache feeds a request trace (trace_reader.h) to an embedded
// cache whose DRAM tier holds exactly CapacityBlocks(capacity_tokens) chunks,
// so its hit rate is directly comparable with the block simulators of
// sim.h (ReplayTailFirst gives the same figure for the same policy). Per
// request, in trace order:
//   1. every hash id becomes a chunk key: KeyFromEngineHash(namespace id,
//      the id's 8 little-endian bytes); chunk i's parent is chunk i-1's key;
//   2. Lookup of the whole chain; the matched leading chunks are hits;
//   3. Load of every hit chunk, first chunk first (this touches recency, as
//      the simulators' hits do); the bytes are checked against
//      FillChunkPayload(key);
//   4. Save of every chunk after the matched prefix, in order (a chunk that
//      is cached past the gap is re-saved, which touches it, as in the
//      simulators). ResourceExhausted counts as a rejected save.
// A request's last block is usually partial (input_length is not a multiple
// of 512); like the simulators it counts as one whole block and is stored as
// a full chunk, while token figures count only its real tokens.
//
// Exact capacity: a chunk of 512 tokens x bytes_per_token payload bytes plus
// the 64-byte chunk header takes one slot of that size rounded up to 4 KiB;
// slabs of 2 MiB hold slots_per_slab slots and the arena is whole slabs. The
// replay sizes the arena as ceil(chunks / slots_per_slab) slabs and fills the
// surplus slots with pinned chunks of a separate namespace before the trace
// starts, so exactly `capacity_chunks` slots remain for the trace.
//
// NVMe (options.nvme_tokens > 0). The cache also gets an NVMe tier in
// options.nvme_path with one slot size, the replay chunk's, and room for
// exactly nvme_chunks of them (geometry.nvme_slot_bytes each: the chunk
// rounded up to 4 KiB plus a 4 KiB commit sector). Chunks evicted from DRAM
// are demoted there, Lookup finds them there and Load promotes them back. A
// demotion is written in the background, so a chunk is briefly in neither
// tier; with wait_for_demotions the replay waits for the demotions after
// each request's saves and, when a Load misses a chunk Lookup had matched,
// once more before retrying it, so no hit is lost to a write still in
// flight. A matched chunk that still cannot be loaded ends the request's
// hits there (counted in lost_hits) and is saved again like a miss.
//
// Blob (options.blob_tokens > 0). The cache also gets a Blob tier at
// options.blob's endpoint (an Azurite the caller started, or an account),
// uploading chunks as DRAM evicts them (policy on_demotion) and bounded to
// exactly blob_chunks objects (BlobCacheOptions::capacity_bytes: the least
// recently used object is deleted past it). Lookup continues a prefix with
// the chunks the tier recorded, and Load downloads and promotes them. With
// wait_for_demotions the replay also waits for the uploads after each
// request, as for NVMe.
//
// ReplayThroughDaemon runs the same requests against a cache the caller
// built (a kvtierd behind a Client): its tiers, capacities and policy are
// the daemon's. The trace's chunks go to a namespace of their own (a fresh
// salt per run), so chunks of earlier runs never count as hits; they and
// any other traffic do take room. Nothing is waited for: a matched chunk
// that Load no longer finds (evicted, or moving between tiers) ends the
// request's hits (lost_hits). Tier figures are the daemon's deltas over the
// run, other clients' traffic included.
//
// Thread-safety: free functions; each call builds its own cache.
#ifndef KVTIER_SRC_CORE_REPLAY_CACHE_REPLAY_H_
#define KVTIER_SRC_CORE_REPLAY_CACHE_REPLAY_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "kvtier/keys.h"
#include "kvtier/namespace.h"
#include "src/core/replay/trace_reader.h"

namespace kvtier::replay {

struct CacheReplayOptions {
  uint64_t capacity_tokens = 3'000'000;  // DRAM capacity, tokens (floor / 512 chunks)
  uint32_t bytes_per_token = 7;          // payload bytes per token (7: a chunk fits 4 KiB)
  std::string eviction_policy = "lru";   // CacheOptions::eviction_policy
  double speed = 0;                      // 0: as fast as possible; else timestamps / speed
  uint64_t slab_bytes = 2ull << 20;      // CacheOptions::slab_bytes (multiple of 2 MiB)
  uint64_t nvme_tokens = 0;              // NVMe capacity, tokens (floor / 512 chunks); 0: none
  std::string nvme_path;                 // folder of the NVMe volume (needed with nvme_tokens)
  std::string nvme_io_mode = "direct";   // NvmeCacheOptions::io_mode: "direct" or "buffered"
  std::string nvme_admission = "all";    // NvmeCacheOptions::admission
  bool wait_for_demotions = true;        // wait out demotions in flight (see the file comment)
  uint64_t blob_tokens = 0;              // Blob capacity, tokens (floor / 512 chunks); 0: none
  // With blob_tokens: endpoint, account, container and credentials. The
  // replay sets the policy (on_demotion), the bound, and no probes.
  BlobCacheOptions blob;

  // InvalidArgument naming the field: capacity below one 512-token chunk,
  // bytes_per_token 0 or so large a chunk exceeds a slab, negative speed,
  // slab_bytes not a positive multiple of 2 MiB; with nvme_tokens: an empty
  // nvme_path, a volume below the NVMe tier's 16 MiB minimum, a bad
  // nvme_io_mode or nvme_admission; blob_tokens below one chunk, or
  // without an endpoint.
  absl::Status Validate() const;
};

// Tokens a chunk (and a trace block) covers.
inline constexpr uint32_t kReplayBlockTokens = 512;

// How the arena is laid out for a capacity (see the file comment).
struct ReplayGeometry {
  uint64_t capacity_chunks = 0;  // floor(capacity_tokens / 512): chunks the trace may hold
  uint64_t payload_bytes = 0;    // 512 x bytes_per_token
  uint64_t slot_bytes = 0;       // header + payload, rounded up to 4 KiB
  uint64_t slots_per_slab = 0;
  uint64_t slabs = 0;          // ceil(capacity_chunks / slots_per_slab)
  uint64_t filler_chunks = 0;  // surplus slots taken by pinned chunks
  uint64_t dram_capacity_bytes = 0;
  uint64_t nvme_chunks = 0;          // floor(nvme_tokens / 512): chunks NVMe holds
  uint64_t nvme_slot_bytes = 0;      // slot_bytes + a 4 KiB commit sector
  uint64_t nvme_capacity_bytes = 0;  // nvme_chunks x nvme_slot_bytes
  uint64_t blob_chunks = 0;          // floor(blob_tokens / 512): objects Blob keeps
  uint64_t blob_object_bytes = 0;    // header + payload
  uint64_t blob_capacity_bytes = 0;  // blob_chunks x blob_object_bytes
};

// The slot a replay chunk takes: its header and 512 x bytes_per_token payload
// bytes, rounded up to 4 KiB.
uint64_t ReplaySlotBytes(uint32_t bytes_per_token);

// The geometry for `options`. InvalidArgument as Validate.
absl::StatusOr<ReplayGeometry> ComputeGeometry(const CacheReplayOptions& options);

// Traffic of one tier during the trace (CacheStats deltas).
struct TierTraffic {
  Tier tier = Tier::kNone;
  uint64_t hits = 0;           // chunks Load found in this tier
  uint64_t bytes_written = 0;  // payload bytes stored
  uint64_t bytes_read = 0;     // payload bytes served
  uint64_t evictions = 0;
};

struct CacheReplayResult {
  std::string policy;
  uint64_t capacity_tokens = 0;
  ReplayGeometry geometry;
  uint64_t requests = 0;
  uint64_t total_blocks = 0;          // hash ids of all requests
  uint64_t hit_blocks = 0;            // chunks matched by Lookup and loaded
  uint64_t total_tokens = 0;          // prompt tokens of all requests
  uint64_t hit_tokens = 0;            // prompt tokens covered by hit chunks (prefill saved)
  uint64_t saved_chunks = 0;          // Saves that stored a new chunk
  uint64_t rejected_saves = 0;        // Saves refused with ResourceExhausted
  uint64_t evictions = 0;             // DRAM tier evictions during the trace
  uint64_t bytes_written = 0;         // DRAM tier payload bytes stored during the trace
  uint64_t bytes_read = 0;            // DRAM tier payload bytes served during the trace
  uint64_t resident_chunks = 0;       // trace chunks cached at the end (DRAM)
  uint64_t lost_hits = 0;             // chunks Lookup matched that Load no longer found
  uint64_t demoted = 0;               // chunks written to NVMe after leaving DRAM
  uint64_t skipped_demotions = 0;     // evicted chunks NVMe did not take (admission, busy, full)
  uint64_t promoted = 0;              // chunks copied from NVMe back into DRAM
  uint64_t nvme_resident_chunks = 0;  // chunks on NVMe at the end
  uint64_t blob_resident_chunks = 0;  // chunks the Blob tier keeps at the end
  std::vector<TierTraffic> tiers;     // every tier of the cache, fastest first
  double seconds = 0;                 // wall time of the trace (setup excluded)

  // The traffic of `tier`; zeros when the cache had no such tier.
  TierTraffic TrafficOf(Tier tier) const;
  double HitRate() const;       // hit_blocks / total_blocks; 0 when empty
  double TokenHitRate() const;  // hit_tokens / total_tokens; 0 when empty
  double RequestsPerSecond() const;
};

// Replays `trace` through a fresh embedded cache. `progress`, when set, is
// called with the number of requests done (about every 64 requests and at
// the end). InvalidArgument for bad options or a request whose hash ids
// repeat; DataLoss when a loaded chunk's bytes differ from what was saved;
// any other cache error as returned.
absl::StatusOr<CacheReplayResult> ReplayThroughCache(
    absl::Span<const TraceRequest> trace, const CacheReplayOptions& options,
    const std::function<void(uint64_t requests_done)>& progress = nullptr);

// Options of ReplayThroughDaemon.
struct DaemonReplayOptions {
  uint32_t bytes_per_token = 7;  // payload bytes per token
  double speed = 0;              // 0: as fast as possible; else timestamps / speed
  std::string salt;              // the namespace's cache_salt (a fresh one per run)

  // InvalidArgument naming the field (bytes_per_token 0 or a chunk over
  // 64 MiB, negative speed).
  absl::Status Validate() const;
};

// The namespace of a replay's chunks: 512 tokens of `bytes_per_token` opaque
// bytes each, under `salt`.
absl::StatusOr<Namespace> ReplayNamespace(uint32_t bytes_per_token, absl::string_view salt);

// Replays `trace` through `cache` as it is (see the file comment).
// result.geometry has payload_bytes and slot_bytes only; capacity_tokens
// is 0 and policy empty: the daemon's. The resident counts are the
// daemon's whole tiers at the end, other namespaces' chunks included.
// Errors as ReplayThroughCache.
absl::StatusOr<CacheReplayResult> ReplayThroughDaemon(
    absl::Span<const TraceRequest> trace, Cache& cache, const DaemonReplayOptions& options,
    const std::function<void(uint64_t requests_done)>& progress = nullptr);

// Byte `i` of the payload saved under `key`: a SplitMix64 stream seeded by
// the key, so every chunk's bytes are distinct and reproducible.
void FillChunkPayload(const BlockKey& key, absl::Span<std::byte> out);

// Token counts: a decimal integer with an optional K, M or G suffix (powers
// of 1000), e.g. "3M" = 3000000, "500K", "1500000". InvalidArgument naming
// `field` for anything else (empty text, other suffixes, signs,
// fractions, values past 2^64 - 1). Zero is accepted.
absl::StatusOr<uint64_t> ParseTokenCount(absl::string_view text, absl::string_view field);

}  // namespace kvtier::replay

#endif  // KVTIER_SRC_CORE_REPLAY_CACHE_REPLAY_H_
