// The embedded cache's chunk events (the cluster index's feed): saves,
// in-place commits, removals, DRAM evictions, demotions to NVMe and
// promotions back.
#include <filesystem>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/namespace.h"
#include "src/common/temp_path.h"
#include "src/core/embedded_cache.h"
#include "tests/testing/cache_fixtures.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::KvFor;
using ::kvtier::testing::SmallModel;
using ::kvtier::testing::Tokens;

constexpr size_t kPayload = 32 << 10;

class RecordingSink final : public CacheEventSink {
 public:
  void OnChunkEvents(absl::Span<const ChunkEvent> events) override {
    absl::MutexLock lock(&mu_);
    events_.insert(events_.end(), events.begin(), events.end());
  }
  std::vector<ChunkEvent> Take() {
    absl::MutexLock lock(&mu_);
    return std::exchange(events_, {});
  }
  size_t Count(ChunkEvent::Kind kind, Tier tier) {
    absl::MutexLock lock(&mu_);
    size_t n = 0;
    for (const ChunkEvent& e : events_) n += e.kind == kind && e.tier == tier;
    return n;
  }

 private:
  absl::Mutex mu_;
  std::vector<ChunkEvent> events_ ABSL_GUARDED_BY(mu_);
};

CacheOptions DramOnly() {
  CacheOptions o;
  o.dram_capacity_bytes = 2ull << 20;
  o.slab_bytes = 2ull << 20;
  o.huge_pages = false;
  o.index_shards = 8;
  o.register_with_gpu = false;
  return o;
}

TEST(EmbeddedCacheEvents, SaveRemoveAndEviction) {
  RecordingSink sink;
  EmbeddedCacheSeams seams;
  seams.event_sink = &sink;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EmbeddedCache> cache,
                       EmbeddedCache::Create(DramOnly(), seams));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(Tokens(64 * 3, 1)));
  for (const ChunkRef& c : chunks) ASSERT_OK(cache->Save(ns, c, KvFor(c, kPayload)));
  std::vector<ChunkEvent> ev = sink.Take();
  ASSERT_EQ(ev.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(ev[i].kind, ChunkEvent::Kind::kStored);
    EXPECT_EQ(ev[i].tier, Tier::kDram);
    EXPECT_EQ(ev[i].key, chunks[i].key);
    EXPECT_EQ(ev[i].namespace_id, ns.id());
    EXPECT_EQ(ev[i].num_tokens, 64u);
  }
  ASSERT_OK(cache->Remove(ns, chunks[2].key).status());
  ev = sink.Take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, ChunkEvent::Kind::kRemoved);
  EXPECT_EQ(ev[0].key, chunks[2].key);
  // Fill DRAM past its size: every eviction is reported.
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> more, ns.Chunks(Tokens(64 * 100, 2)));
  for (const ChunkRef& c : more) (void)cache->Save(ns, c, KvFor(c, kPayload));
  const size_t removed = sink.Count(ChunkEvent::Kind::kRemoved, Tier::kDram);
  EXPECT_GT(removed, 0u);
  EXPECT_EQ(removed, cache->Stats().tiers[0].evictions);
}

// Remove of a pinned chunk leaves it (and its parent) in DRAM: no removal is
// reported for it, so the cluster index keeps this node as its holder.
TEST(EmbeddedCacheEvents, RemoveOfAPinnedChunkReportsNoRemoval) {
  RecordingSink sink;
  EmbeddedCacheSeams seams;
  seams.event_sink = &sink;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EmbeddedCache> cache,
                       EmbeddedCache::Create(DramOnly(), seams));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(Tokens(64 * 2, 4)));
  for (const ChunkRef& c : chunks) ASSERT_OK(cache->Save(ns, c, KvFor(c, kPayload)));
  sink.Take();
  {
    ASSERT_OK_AND_ASSIGN(ChunkPin pin, cache->Pin(ns, chunks[0].key));
    ASSERT_OK(cache->Remove(ns, chunks[0].key).status());
    // The unpinned child went (descendants are not reported); the pinned
    // root stays, and is not reported either.
    EXPECT_TRUE(sink.Take().empty());
    ASSERT_OK_AND_ASSIGN(LookupResult r, cache->Lookup(ns, Namespace::Keys(chunks)));
    EXPECT_EQ(r.matched, 1u);
  }
}

TEST(EmbeddedCacheEvents, InPlaceCommitReportsOnlyCommittedChunks) {
  RecordingSink sink;
  EmbeddedCacheSeams seams;
  seams.event_sink = &sink;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EmbeddedCache> cache,
                       EmbeddedCache::Create(DramOnly(), seams));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(Tokens(64 * 2, 3)));
  ASSERT_OK_AND_ASSIGN(DramTier::SlotReservation a, cache->ReserveSlot(ns, chunks[0]));
  ASSERT_OK_AND_ASSIGN(DramTier::SlotReservation b, cache->ReserveSlot(ns, chunks[1]));
  EXPECT_TRUE(sink.Take().empty());
  ASSERT_OK(cache->CommitSlot(a.handle));
  cache->AbortSlot(b.handle);
  std::vector<ChunkEvent> ev = sink.Take();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].key, chunks[0].key);
  EXPECT_EQ(ev[0].kind, ChunkEvent::Kind::kStored);
}

TEST(EmbeddedCacheEvents, DemotionAndPromotion) {
  absl::StatusOr<std::string> dir = MakeTempDir("/tmp", "kvtier-events-");
  ASSERT_OK(dir.status());
  {
    RecordingSink sink;
    EmbeddedCacheSeams seams;
    seams.event_sink = &sink;
    CacheOptions o = DramOnly();
    o.nvme.path = *dir;
    o.nvme.capacity_bytes = 64ull << 20;
    o.nvme.slot_payload_bytes = {kPayload};
    o.nvme.io_mode = "buffered";
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<EmbeddedCache> cache, EmbeddedCache::Create(o, seams));
    ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
    // Independent one-chunk prompts: LRU evicts the oldest first.
    std::vector<ChunkRef> chunks;
    for (uint32_t i = 0; i < 100; ++i) {
      ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> one, ns.Chunks(Tokens(64, 100 + i)));
      chunks.push_back(one[0]);
    }
    for (const ChunkRef& c : chunks) ASSERT_OK(cache->Save(ns, c, KvFor(c, kPayload)));
    cache->WaitForDemotions();
    const size_t left = sink.Count(ChunkEvent::Kind::kRemoved, Tier::kDram);
    const size_t on_nvme = sink.Count(ChunkEvent::Kind::kStored, Tier::kNvme);
    EXPECT_GT(left, 0u);
    EXPECT_EQ(on_nvme, cache->Stats().tiering.demoted);
    // Reading the first chunk (demoted) promotes it: stored in DRAM again.
    sink.Take();
    std::vector<std::byte> out(kPayload);
    ASSERT_OK(cache->Load(ns, chunks[0].key, absl::MakeSpan(out)).status());
    EXPECT_EQ(sink.Count(ChunkEvent::Kind::kStored, Tier::kDram), 1u);
    ASSERT_OK(cache->Remove(ns, chunks[0].key).status());
    EXPECT_EQ(sink.Count(ChunkEvent::Kind::kRemoved, Tier::kNvme), 1u);
  }
  std::filesystem::remove_all(*dir);
}

TEST(EmbeddedCacheEvents, NvmeEvictionsAreReported) {
  absl::StatusOr<std::string> dir = MakeTempDir("/tmp", "kvtier-events-");
  ASSERT_OK(dir.status());
  {
    RecordingSink sink;
    EmbeddedCacheSeams seams;
    seams.event_sink = &sink;
    CacheOptions o = DramOnly();
    o.nvme.path = *dir;
    o.nvme.capacity_bytes = 16ull << 20;  // the smallest volume: a few hundred slots
    o.nvme.slot_payload_bytes = {kPayload};
    o.nvme.io_mode = "buffered";
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<EmbeddedCache> cache, EmbeddedCache::Create(o, seams));
    ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
    std::vector<ChunkRef> chunks;
    for (uint32_t i = 0; i < 800; ++i) {
      ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> one, ns.Chunks(Tokens(64, 500 + i)));
      chunks.push_back(one[0]);
      ASSERT_OK(cache->Save(ns, one[0], KvFor(one[0], kPayload)));
      cache->WaitForDemotions();
    }
    const CacheStats st = cache->Stats();
    ASSERT_EQ(st.tiers.size(), 2u);
    ASSERT_GT(st.tiers[1].evictions, 0u) << "the NVMe tier must have filled up";
    std::vector<BlockKey> evicted;
    for (const ChunkEvent& e : sink.Take()) {
      if (e.kind == ChunkEvent::Kind::kRemoved && e.tier == Tier::kNvme) {
        EXPECT_EQ(e.namespace_id, ns.id());
        evicted.push_back(e.key);
      }
    }
    EXPECT_EQ(evicted.size(), st.tiers[1].evictions);
    // Every chunk reported gone from NVMe is really gone from the cache
    // (it had left DRAM before it was demoted).
    for (const BlockKey& k : evicted) {
      ASSERT_OK_AND_ASSIGN(LookupResult r, cache->Lookup(ns, absl::MakeConstSpan(&k, 1)));
      EXPECT_EQ(r.matched, 0u) << k.ToHex();
    }
  }
  std::filesystem::remove_all(*dir);
}

}  // namespace
}  // namespace kvtier
