// The embedded cache: kvtier::Cache inside the caller's process, over the
// DRAM tier. Cache::Create returns one.
//
// Thread-safety: all methods are thread-safe (the tiers lock internally).
#ifndef KVTIER_SRC_CORE_EMBEDDED_CACHE_H_
#define KVTIER_SRC_CORE_EMBEDDED_CACHE_H_

#include <atomic>
#include <memory>

#include "kvtier/cache.h"
#include "src/tiers/dram/dram_tier.h"

namespace kvtier {

class EmbeddedCache final : public Cache {
 public:
  static absl::StatusOr<std::unique_ptr<EmbeddedCache>> Create(const CacheOptions& options);

  absl::StatusOr<LookupResult> Lookup(const Namespace& ns,
                                      absl::Span<const BlockKey> chain) override;
  absl::Status Save(const Namespace& ns, const ChunkRef& chunk,
                    absl::Span<const std::byte> payload) override;
  absl::StatusOr<size_t> Load(const Namespace& ns, const BlockKey& key,
                              absl::Span<std::byte> out) override;
  absl::StatusOr<ChunkPin> Pin(const Namespace& ns, const BlockKey& key) override;
  absl::StatusOr<size_t> Remove(const Namespace& ns, const BlockKey& key) override;
  CacheStats Stats() const override;

  ~EmbeddedCache() override;

  DramTier& dram() { return *dram_; }

  // In-place saves, for kvtierd's local clients that write the shared arena
  // (dram().arena()) themselves: checks `chunk` as Save does, then reserves a
  // DRAM slot for its payload (DramTier::ReserveSlot). CommitSlot makes the
  // written chunk visible; AbortSlot gives the slot back.
  absl::StatusOr<DramTier::SlotReservation> ReserveSlot(const Namespace& ns, const ChunkRef& chunk);
  absl::Status CommitSlot(uint64_t handle) { return dram_->CommitSlot(handle); }
  void AbortSlot(uint64_t handle) { dram_->AbortSlot(handle); }

 private:
  explicit EmbeddedCache(std::unique_ptr<DramTier> dram) : dram_(std::move(dram)) {}

  std::unique_ptr<DramTier> dram_;
  bool gpu_registered_ = false;
  std::string gpu_registration_;
  std::atomic<uint64_t> lookups_{0};
  std::atomic<uint64_t> lookup_chunks_{0};
  std::atomic<uint64_t> lookup_hits_{0};
};

// Checks a key chain: no zero key, no key twice. InvalidArgument naming the
// position otherwise.
absl::Status ValidateChain(absl::Span<const BlockKey> chain);

// Checks a chunk and its payload against `ns`.
absl::Status ValidateChunk(const Namespace& ns, const ChunkRef& chunk, size_t payload_bytes);

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_EMBEDDED_CACHE_H_
