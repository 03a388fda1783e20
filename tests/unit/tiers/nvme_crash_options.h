// Tier options and chunks of the NVMe crash test, shared by the test and
// its writer process (nvme_crash_writer.cc).
#ifndef KVTIER_TESTS_UNIT_TIERS_NVME_CRASH_OPTIONS_H_
#define KVTIER_TESTS_UNIT_TIERS_NVME_CRASH_OPTIONS_H_

#include <string>

#include "src/tiers/nvme/nvme_tier.h"
#include "tests/unit/tiers/nvme_test_util.h"

namespace kvtier::nvme_test {

// Chunks per round; the classes hold all of them so nothing is evicted.
inline constexpr uint64_t kCrashChunksPerRound = 600;
inline constexpr uint64_t kCrashRounds = 3;

// `durability` is "process" or "power"; `layout` is "classes" (explicit
// slot_classes) or "regions" (slot sizes chosen on demand).
inline NvmeTierOptions CrashTestOptions(const std::string& folder, const std::string& durability,
                                        const std::string& layout) {
  NvmeTierOptions o;
  o.path = folder;
  o.durability = durability;
  const uint64_t chunks = kCrashChunksPerRound * kCrashRounds;
  // Room for every chunk plus the clean slots each class keeps free.
  const uint64_t per_class = chunks / 2 + 64;
  if (layout == "regions") {
    // Each size's slot is at most 12.5% above the chunk, and each size
    // wastes at most part of one region.
    o.capacity_bytes = per_class * ((68 << 10) + (256 << 10)) * 9 / 8 + (40ull << 20);
    o.region_bytes = 4 << 20;
  } else {
    o.slot_classes = {{(64 << 10) + 64, per_class * ((68 << 10) + 4096)},
                      {(256 << 10) + 64, per_class * ((260 << 10) + 4096)}};
  }
  o.queue_depth = 16;
  o.max_inflight_bytes = 16 << 20;
  return o;
}

inline BlockKey CrashTestKey(uint64_t round, uint64_t i) { return BlockKey{0xC4A5 + round, i + 1}; }

// Chunk i of a round: chains of four, alternating 64 KiB and 256 KiB.
inline TestChunk CrashTestChunk(uint64_t round, uint64_t i) {
  BlockKey parent = i % 4 == 0 ? BlockKey{} : CrashTestKey(round, i - 1);
  return MakeChunk(CrashTestKey(round, i), i % 2 == 0 ? (64 << 10) : (256 << 10), parent);
}

}  // namespace kvtier::nvme_test

#endif  // KVTIER_TESTS_UNIT_TIERS_NVME_CRASH_OPTIONS_H_
