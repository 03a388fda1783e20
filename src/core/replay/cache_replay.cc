#include "src/core/replay/cache_replay.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kvtier/cache.h"
#include "kvtier/namespace.h"
#include "src/common/status_macros.h"
#include "src/core/chunk_format.h"
#include "src/core/embedded_cache.h"
#include "src/tiers/blob/blob_tier.h"

namespace kvtier::replay {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kSlotAlign = 4096;
constexpr uint64_t kSlabAlign = 2ull << 20;
constexpr uint64_t kNvmeCommitSector = 4096;
constexpr uint64_t kNvmeMinVolume = 16ull << 20;  // NvmeCacheOptions::capacity_bytes minimum

BlockKey KeyOfId(const Namespace& ns, uint64_t id) {
  std::array<std::byte, 8> bytes;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<std::byte>((id >> (8 * i)) & 0xFF);
  return KeyFromEngineHash(ns.id(), bytes);
}

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Tokens of block `j` of a request with `n` ids and `input_length` tokens:
// 512, except a final partial block.
uint64_t BlockTokens(const TraceRequest& r, size_t j) {
  const size_t n = r.hash_ids.size();
  if (j + 1 < n || r.input_length == 0) return kReplayBlockTokens;
  const uint64_t before = uint64_t{kReplayBlockTokens} * (n - 1);
  if (r.input_length <= before) return kReplayBlockTokens;
  return std::min<uint64_t>(r.input_length - before, kReplayBlockTokens);
}

const TierStats* StatsOf(const CacheStats& stats, Tier tier) {
  for (const TierStats& t : stats.tiers) {
    if (t.tier == tier) return &t;
  }
  return nullptr;
}

const TierStats* DramStats(const CacheStats& stats) { return StatsOf(stats, Tier::kDram); }

// How a replay runs its requests (see the file comment).
struct Loop {
  Cache* cache = nullptr;
  const Namespace* ns = nullptr;
  uint64_t payload_bytes = 0;
  double speed = 0;
  // A matched chunk may be gone by its Load (it moves between tiers): the
  // miss ends the request's hits instead of failing the replay.
  bool may_lose = false;
  // Waits out background moves (demotions, uploads); null: none to wait for.
  std::function<void()> wait;
};

absl::Status LineError(const TraceRequest& req, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat("trace line ", req.line, ": ", s.message()));
}

// Per request: Lookup, Load of the hits (verified), Save of the rest.
absl::Status RunRequests(absl::Span<const TraceRequest> trace, const Loop& loop,
                         CacheReplayResult& out,
                         const std::function<void(uint64_t requests_done)>& progress) {
  Cache& cache = *loop.cache;
  const Namespace& ns = *loop.ns;
  std::vector<std::byte> payload(loop.payload_bytes);
  std::vector<std::byte> expected(loop.payload_bytes);
  std::vector<BlockKey> chain;
  const auto start = Clock::now();
  const int64_t first_ms = trace.empty() ? 0 : trace.front().timestamp_ms;
  for (const TraceRequest& req : trace) {
    if (loop.speed > 0) {
      const double due_s = static_cast<double>(req.timestamp_ms - first_ms) / 1000.0 / loop.speed;
      std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(due_s)));
    }
    chain.clear();
    for (uint64_t id : req.hash_ids) chain.push_back(KeyOfId(ns, id));
    absl::StatusOr<LookupResult> lookup = cache.Lookup(ns, chain);
    if (!lookup.ok()) return LineError(req, lookup.status());
    size_t matched = lookup->matched;
    for (size_t j = 0; j < chain.size(); ++j) out.total_tokens += BlockTokens(req, j);
    out.total_blocks += chain.size();
    for (size_t j = 0; j < matched; ++j) {
      absl::StatusOr<size_t> loaded = cache.Load(ns, chain[j], absl::MakeSpan(payload));
      if (loop.may_lose && absl::IsNotFound(loaded.status())) {
        // Evicted by an earlier load's promotion: in a lower tier, on its
        // way there, or gone.
        if (loop.wait) {
          loop.wait();
          loaded = cache.Load(ns, chain[j], absl::MakeSpan(payload));
        }
        if (absl::IsNotFound(loaded.status())) {
          out.lost_hits += matched - j;
          matched = j;
          break;
        }
      }
      if (!loaded.ok()) return LineError(req, loaded.status());
      const size_t n = *loaded;
      FillChunkPayload(chain[j], absl::MakeSpan(expected));
      if (n != payload.size() || std::memcmp(payload.data(), expected.data(), n) != 0) {
        return absl::DataLossError(absl::StrCat("trace line ", req.line, ": chunk ", j, " (key ",
                                                chain[j].ToHex(),
                                                ") loaded bytes differ from the saved ones"));
      }
      ++out.hit_blocks;
      out.hit_tokens += BlockTokens(req, j);
    }
    for (size_t j = matched; j < chain.size(); ++j) {
      FillChunkPayload(chain[j], absl::MakeSpan(payload));
      const ChunkRef chunk{chain[j], j == 0 ? BlockKey{} : chain[j - 1],
                           static_cast<uint32_t>(j * kReplayBlockTokens), kReplayBlockTokens};
      absl::Status s = cache.Save(ns, chunk, payload);
      if (absl::IsResourceExhausted(s)) {
        ++out.rejected_saves;
      } else if (!s.ok()) {
        return LineError(req, s);
      }
    }
    if (loop.wait) loop.wait();
    ++out.requests;
    if (progress && (out.requests % 64 == 0 || out.requests == trace.size())) {
      progress(out.requests);
    }
  }
  out.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return absl::OkStatus();
}

// The run's share of the cache's counters: `after` less `before`.
absl::Status TakeDeltas(const CacheStats& before, const CacheStats& after, CacheReplayResult& out) {
  const TierStats* dram_before = DramStats(before);
  const TierStats* dram_after = DramStats(after);
  if (dram_before == nullptr || dram_after == nullptr) {
    return absl::InternalError("replay: the cache reports no DRAM tier");
  }
  out.saved_chunks = dram_after->saves - dram_before->saves;
  out.evictions = dram_after->evictions - dram_before->evictions;
  out.bytes_written = dram_after->bytes_written - dram_before->bytes_written;
  out.bytes_read = dram_after->bytes_read - dram_before->bytes_read;
  out.resident_chunks = dram_after->chunks;
  if (const TierStats* nv = StatsOf(after, Tier::kNvme); nv != nullptr) {
    out.nvme_resident_chunks = nv->chunks;
  }
  if (const TierStats* bl = StatsOf(after, Tier::kBlob); bl != nullptr) {
    out.blob_resident_chunks = bl->chunks;
  }
  const TieringStats& ta = after.tiering;
  const TieringStats& tb = before.tiering;
  out.demoted = ta.demoted - tb.demoted;
  out.skipped_demotions =
      (ta.skipped_admission + ta.skipped_busy + ta.skipped_full + ta.skipped_io_error) -
      (tb.skipped_admission + tb.skipped_busy + tb.skipped_full + tb.skipped_io_error);
  out.promoted = ta.promoted - tb.promoted;
  for (const TierStats& t : after.tiers) {
    TierTraffic traffic{t.tier, t.hits, t.bytes_written, t.bytes_read, t.evictions};
    if (const TierStats* b = StatsOf(before, t.tier); b != nullptr) {
      traffic.hits -= b->hits;
      traffic.bytes_written -= b->bytes_written;
      traffic.bytes_read -= b->bytes_read;
      traffic.evictions -= b->evictions;
    }
    out.tiers.push_back(traffic);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Namespace> ReplayNamespace(uint32_t bytes_per_token, absl::string_view salt) {
  // One layer, one tensor, one head of bytes_per_token uint8 elements.
  NamespaceOptions o;
  o.model_id = "kvtier-replay";
  o.layout.num_layers = 1;
  o.layout.num_kv_heads = 1;
  o.layout.head_size = bytes_per_token;
  o.layout.kv_tensors = 1;
  o.layout.tokens_per_block = kReplayBlockTokens;
  o.layout.dtype = DType::kUInt8;
  o.tokens_per_chunk = kReplayBlockTokens;
  o.cache_salt = std::string(salt);
  return Namespace::Create(std::move(o));
}

absl::Status CacheReplayOptions::Validate() const {
  if (capacity_tokens < kReplayBlockTokens) {
    return absl::InvalidArgumentError(absl::StrCat("capacity_tokens: ", capacity_tokens,
                                                   " is less than one ", kReplayBlockTokens,
                                                   "-token chunk"));
  }
  if (slab_bytes == 0 || slab_bytes % kSlabAlign != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slab_bytes: ", slab_bytes, " is not a positive multiple of 2 MiB"));
  }
  if (bytes_per_token == 0 ||
      kChunkHeaderBytes + uint64_t{kReplayBlockTokens} * bytes_per_token > slab_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bytes_per_token: ", bytes_per_token, " must be positive and a ", kReplayBlockTokens,
        "-token chunk plus its header must fit one slab of ", slab_bytes, " bytes"));
  }
  if (!(speed >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("speed: ", speed, " must be 0 or positive"));
  }
  if (blob_tokens > 0 && blob_tokens < kReplayBlockTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob_tokens: ", blob_tokens, " is less than one ", kReplayBlockTokens, "-token chunk"));
  }
  if (blob_tokens > 0 && blob.endpoint.empty()) {
    return absl::InvalidArgumentError(
        "blob.endpoint: a Blob endpoint (e.g. an Azurite's) is needed when blob_tokens is set");
  }
  if (nvme_tokens == 0) return absl::OkStatus();
  if (nvme_path.empty()) {
    return absl::InvalidArgumentError("nvme_path: a folder is needed when nvme_tokens is set");
  }
  const uint64_t nvme_slot = ReplaySlotBytes(bytes_per_token) + kNvmeCommitSector;
  const uint64_t min_chunks = (kNvmeMinVolume + nvme_slot - 1) / nvme_slot;
  if (nvme_tokens / kReplayBlockTokens < min_chunks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nvme_tokens: ", nvme_tokens, " tokens make a volume below the NVMe tier's 16 MiB ",
        "minimum; at least ", min_chunks * kReplayBlockTokens, " tokens (", min_chunks,
        " slots of ", nvme_slot, " bytes)"));
  }
  if (nvme_io_mode != "direct" && nvme_io_mode != "buffered") {
    return absl::InvalidArgumentError(
        absl::StrCat("nvme_io_mode: '", nvme_io_mode, "' is not direct or buffered"));
  }
  if (nvme_admission != "all" && nvme_admission != "second-chance") {
    return absl::InvalidArgumentError(
        absl::StrCat("nvme_admission: '", nvme_admission, "' is not all or second-chance"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ReplayGeometry> ComputeGeometry(const CacheReplayOptions& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  ReplayGeometry g;
  g.capacity_chunks = options.capacity_tokens / kReplayBlockTokens;
  g.payload_bytes = uint64_t{kReplayBlockTokens} * options.bytes_per_token;
  g.slot_bytes = ReplaySlotBytes(options.bytes_per_token);
  g.slots_per_slab = options.slab_bytes / g.slot_bytes;
  g.slabs = (g.capacity_chunks + g.slots_per_slab - 1) / g.slots_per_slab;
  g.filler_chunks = g.slabs * g.slots_per_slab - g.capacity_chunks;
  g.dram_capacity_bytes = g.slabs * options.slab_bytes;
  if (options.nvme_tokens > 0) {
    g.nvme_chunks = options.nvme_tokens / kReplayBlockTokens;
    g.nvme_slot_bytes = g.slot_bytes + kNvmeCommitSector;
    g.nvme_capacity_bytes = g.nvme_chunks * g.nvme_slot_bytes;
  }
  if (options.blob_tokens > 0) {
    g.blob_chunks = options.blob_tokens / kReplayBlockTokens;
    g.blob_object_bytes = kChunkHeaderBytes + g.payload_bytes;
    g.blob_capacity_bytes = g.blob_chunks * g.blob_object_bytes;
  }
  return g;
}

uint64_t ReplaySlotBytes(uint32_t bytes_per_token) {
  const uint64_t encoded = kChunkHeaderBytes + uint64_t{kReplayBlockTokens} * bytes_per_token;
  return (encoded + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
}

TierTraffic CacheReplayResult::TrafficOf(Tier tier) const {
  for (const TierTraffic& t : tiers) {
    if (t.tier == tier) return t;
  }
  return TierTraffic{tier};
}

double CacheReplayResult::HitRate() const {
  return total_blocks == 0 ? 0.0
                           : static_cast<double>(hit_blocks) / static_cast<double>(total_blocks);
}

double CacheReplayResult::TokenHitRate() const {
  return total_tokens == 0 ? 0.0
                           : static_cast<double>(hit_tokens) / static_cast<double>(total_tokens);
}

double CacheReplayResult::RequestsPerSecond() const {
  return seconds > 0 ? static_cast<double>(requests) / seconds : 0.0;
}

void FillChunkPayload(const BlockKey& key, absl::Span<std::byte> out) {
  uint64_t state = key.hi ^ (key.lo * 0xD6E8FEB86659FD93ull);
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    const uint64_t v = SplitMix(state);
    std::memcpy(out.data() + i, &v, 8);
  }
  if (i < out.size()) {
    const uint64_t v = SplitMix(state);
    std::memcpy(out.data() + i, &v, out.size() - i);
  }
}

absl::StatusOr<uint64_t> ParseTokenCount(absl::string_view text, absl::string_view field) {
  absl::string_view digits = absl::StripAsciiWhitespace(text);
  uint64_t scale = 1;
  if (!digits.empty()) {
    switch (absl::ascii_toupper(static_cast<unsigned char>(digits.back()))) {
      case 'K':
        scale = 1'000;
        break;
      case 'M':
        scale = 1'000'000;
        break;
      case 'G':
        scale = 1'000'000'000;
        break;
      default:
        break;
    }
    if (scale != 1) digits.remove_suffix(1);
  }
  uint64_t value = 0;
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(digits, &value) || value > std::numeric_limits<uint64_t>::max() / scale) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", text,
                     "' is not a token count (an integer with an optional K, M or G suffix)"));
  }
  return value * scale;
}

absl::StatusOr<CacheReplayResult> ReplayThroughCache(
    absl::Span<const TraceRequest> trace, const CacheReplayOptions& options,
    const std::function<void(uint64_t requests_done)>& progress) {
  KVTIER_ASSIGN_OR_RETURN(ReplayGeometry geometry, ComputeGeometry(options));
  KVTIER_ASSIGN_OR_RETURN(Namespace ns, ReplayNamespace(options.bytes_per_token, ""));
  KVTIER_ASSIGN_OR_RETURN(Namespace filler_ns,
                          ReplayNamespace(options.bytes_per_token, "kvtier-replay-filler"));

  CacheOptions cache_options;
  cache_options.dram_capacity_bytes = geometry.dram_capacity_bytes;
  cache_options.slab_bytes = options.slab_bytes;
  cache_options.eviction_policy = options.eviction_policy;
  cache_options.register_with_gpu = false;
  cache_options.index_shards = 16;
  if (options.nvme_tokens > 0) {
    // One slot size holding exactly nvme_chunks replay chunks; nothing is
    // kept after the replay (no snapshot, no copy of DRAM at close).
    NvmeCacheOptions& n = cache_options.nvme;
    n.path = options.nvme_path;
    n.capacity_bytes = geometry.nvme_capacity_bytes;
    n.slot_payload_bytes = {geometry.payload_bytes};
    n.io_mode = options.nvme_io_mode;
    n.admission = options.nvme_admission;
    n.eviction_policy = options.eviction_policy;
    n.write_snapshot = false;
    n.persist_on_close_seconds = 0;
  }
  if (options.blob_tokens > 0) {
    // Exactly blob_chunks objects: the least recently used is deleted past them.
    BlobCacheOptions& b = cache_options.blob;
    b = options.blob;
    b.policy = "on_demotion";
    b.probe = false;
    b.capacity_bytes = geometry.blob_capacity_bytes;
    b.max_record_chunks = std::max<uint64_t>(b.max_record_chunks, geometry.blob_chunks);
    // Small objects, waited for after each request: many in flight at once.
    b.upload_workers = std::max<uint32_t>(b.upload_workers, 32);
    b.max_connections = std::max<uint32_t>(b.max_connections, 64);
    b.queue_chunks = std::max<uint32_t>(b.queue_chunks, 1u << 16);
  }
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<EmbeddedCache> cache,
                          EmbeddedCache::Create(cache_options));
  BlobTier* blob = cache->blob();

  // The surplus slots of the last slab hold pinned chunks of another
  // namespace for the whole replay.
  std::vector<std::byte> payload(geometry.payload_bytes);
  std::vector<ChunkPin> fillers;
  fillers.reserve(geometry.filler_chunks);
  for (uint64_t i = 0; i < geometry.filler_chunks; ++i) {
    const BlockKey key = KeyOfId(filler_ns, i);
    FillChunkPayload(key, absl::MakeSpan(payload));
    KVTIER_RETURN_IF_ERROR(
        cache->Save(filler_ns, ChunkRef{key, BlockKey{}, 0, kReplayBlockTokens}, payload));
    KVTIER_ASSIGN_OR_RETURN(ChunkPin pin, cache->Pin(filler_ns, key));
    fillers.push_back(std::move(pin));
  }

  CacheReplayResult out;
  out.policy = options.eviction_policy;
  out.capacity_tokens = options.capacity_tokens;
  out.geometry = geometry;
  Loop loop;
  loop.cache = cache.get();
  loop.ns = &ns;
  loop.payload_bytes = geometry.payload_bytes;
  loop.speed = options.speed;
  loop.may_lose = cache->nvme() != nullptr || blob != nullptr;
  if (loop.may_lose && options.wait_for_demotions) {
    loop.wait = [&] {
      cache->WaitForDemotions();
      if (blob != nullptr) blob->Flush();
    };
  }
  const CacheStats before = cache->Stats();
  KVTIER_RETURN_IF_ERROR(RunRequests(trace, loop, out, progress));
  KVTIER_RETURN_IF_ERROR(TakeDeltas(before, cache->Stats(), out));
  out.resident_chunks -= geometry.filler_chunks;
  return out;
}

absl::Status DaemonReplayOptions::Validate() const {
  if (bytes_per_token == 0 ||
      uint64_t{kReplayBlockTokens} * bytes_per_token > (uint64_t{64} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bytes_per_token: ", bytes_per_token, " must be positive and make a ", kReplayBlockTokens,
        "-token chunk of 64 MiB "
        "or less"));
  }
  if (!(speed >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("speed: ", speed, " must be 0 or positive"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CacheReplayResult> ReplayThroughDaemon(
    absl::Span<const TraceRequest> trace, Cache& cache, const DaemonReplayOptions& options,
    const std::function<void(uint64_t requests_done)>& progress) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  KVTIER_ASSIGN_OR_RETURN(Namespace ns, ReplayNamespace(options.bytes_per_token, options.salt));
  CacheReplayResult out;
  out.geometry.payload_bytes = uint64_t{kReplayBlockTokens} * options.bytes_per_token;
  out.geometry.slot_bytes = ReplaySlotBytes(options.bytes_per_token);
  Loop loop;
  loop.cache = &cache;
  loop.ns = &ns;
  loop.payload_bytes = out.geometry.payload_bytes;
  loop.speed = options.speed;
  loop.may_lose = true;
  const CacheStats before = cache.Stats();
  KVTIER_RETURN_IF_ERROR(RunRequests(trace, loop, out, progress));
  KVTIER_RETURN_IF_ERROR(TakeDeltas(before, cache.Stats(), out));
  return out;
}

}  // namespace kvtier::replay
