#include "src/core/embedded_cache.h"

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "cuda/device_runtime.h"
#include "src/common/status_macros.h"

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

}  // namespace

absl::Status CacheOptions::Validate() const { return ToDramOptions(*this).Validate(); }

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

absl::StatusOr<std::unique_ptr<EmbeddedCache>> EmbeddedCache::Create(const CacheOptions& options) {
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<DramTier> tier, DramTier::Create(ToDramOptions(options)));
  std::unique_ptr<EmbeddedCache> cache(new EmbeddedCache(std::move(tier)));
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

EmbeddedCache::~EmbeddedCache() {
  if (gpu_registered_) (void)UnregisterHostMemoryForDevice(dram_->arena().base());
}

absl::StatusOr<LookupResult> EmbeddedCache::Lookup(const Namespace& ns,
                                                   absl::Span<const BlockKey> chain) {
  KVTIER_RETURN_IF_ERROR(ValidateChain(chain));
  LookupResult result;
  result.matched = dram_->MatchPrefix(ns.id(), chain);
  result.chunks.assign(result.matched, ChunkLocation{Tier::kDram, ""});
  lookups_.fetch_add(1, std::memory_order_relaxed);
  lookup_chunks_.fetch_add(chain.size(), std::memory_order_relaxed);
  lookup_hits_.fetch_add(result.matched, std::memory_order_relaxed);
  return result;
}

absl::Status EmbeddedCache::Save(const Namespace& ns, const ChunkRef& chunk,
                                 absl::Span<const std::byte> payload) {
  KVTIER_RETURN_IF_ERROR(ValidateChunk(ns, chunk, payload.size()));
  ChunkMeta meta{ns.id(), chunk.key, chunk.parent, ns.layout_signature(), chunk.num_tokens};
  return dram_->SavePayload(meta, payload);
}

absl::StatusOr<DramTier::SlotReservation> EmbeddedCache::ReserveSlot(const Namespace& ns,
                                                                     const ChunkRef& chunk) {
  const size_t payload_bytes = ns.PayloadBytes(chunk.num_tokens);
  KVTIER_RETURN_IF_ERROR(ValidateChunk(ns, chunk, payload_bytes));
  ChunkMeta meta{ns.id(), chunk.key, chunk.parent, ns.layout_signature(), chunk.num_tokens};
  return dram_->ReserveSlot(meta, payload_bytes);
}

absl::StatusOr<size_t> EmbeddedCache::Load(const Namespace& ns, const BlockKey& key,
                                           absl::Span<std::byte> out) {
  return dram_->LoadPayload(ns.id(), key, ns.layout_signature(), out);
}

absl::StatusOr<ChunkPin> EmbeddedCache::Pin(const Namespace& ns, const BlockKey& key) {
  return dram_->PinChunk(ns.id(), key);
}

absl::StatusOr<size_t> EmbeddedCache::Remove(const Namespace& ns, const BlockKey& key) {
  return dram_->RemoveTree(ns.id(), key);
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
  return s;
}

}  // namespace kvtier
