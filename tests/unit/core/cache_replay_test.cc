#include "src/core/replay/cache_replay.h"

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/common/temp_path.h"
#include "src/core/eviction.h"
#include "src/core/replay/sim.h"
#include "src/core/replay/trace_reader.h"
#include "tests/testing/replay_traces.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::replay {
namespace {

using ::kvtier::testing::GeneratedTrace;
using ::kvtier::testing::StatusIs;
using ::kvtier::testing::Trace;
using ::testing::HasSubstr;

CacheReplayOptions Options(uint64_t capacity_tokens, const std::string& policy = "lru") {
  CacheReplayOptions o;
  o.capacity_tokens = capacity_tokens;
  o.eviction_policy = policy;
  return o;
}

TEST(CacheReplayGeometry, CapacityIsExactWithPinnedFillers) {
  CacheReplayOptions o = Options(3'000'000);
  o.bytes_per_token = 7;  // 3584 + 64 bytes: one 4 KiB slot
  ASSERT_OK_AND_ASSIGN(ReplayGeometry g, ComputeGeometry(o));
  EXPECT_EQ(g.capacity_chunks, 5859u);
  EXPECT_EQ(g.payload_bytes, 3584u);
  EXPECT_EQ(g.slot_bytes, 4096u);
  EXPECT_EQ(g.slots_per_slab, 512u);
  EXPECT_EQ(g.slabs, 12u);
  EXPECT_EQ(g.filler_chunks, 12u * 512 - 5859);
  EXPECT_EQ(g.dram_capacity_bytes, 12u * (2u << 20));

  o.bytes_per_token = 8;  // 4096 + 64 bytes: an 8 KiB slot
  ASSERT_OK_AND_ASSIGN(g, ComputeGeometry(o));
  EXPECT_EQ(g.slot_bytes, 8192u);
  EXPECT_EQ(g.slots_per_slab, 256u);
  EXPECT_EQ(g.slabs, 23u);
  EXPECT_EQ(g.filler_chunks, 23u * 256 - 5859);
}

TEST(CacheReplayGeometry, RejectsBadOptions) {
  EXPECT_THAT(ComputeGeometry(Options(511)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("capacity_tokens")));
  CacheReplayOptions o = Options(512);
  o.bytes_per_token = 0;
  EXPECT_THAT(ComputeGeometry(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bytes_per_token")));
  o.bytes_per_token = 8192;  // 4 MiB chunks do not fit a 2 MiB slab
  EXPECT_THAT(ComputeGeometry(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bytes_per_token")));
  o = Options(512);
  o.slab_bytes = 3 << 20;
  EXPECT_THAT(ComputeGeometry(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slab_bytes")));
  o = Options(512);
  o.speed = -1;
  EXPECT_THAT(ComputeGeometry(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("speed")));
}

TEST(CacheReplay, CountsLeadingHitsThroughTheRealCache) {
  // r2 shares two leading blocks with r1; r3 repeats r1 whole. Room for all.
  auto t = Trace({{1, 2, 3}, {1, 2, 4}, {1, 2, 3}});
  ASSERT_OK_AND_ASSIGN(CacheReplayResult r, ReplayThroughCache(t, Options(4 * 512)));
  EXPECT_EQ(r.requests, 3u);
  EXPECT_EQ(r.total_blocks, 9u);
  EXPECT_EQ(r.hit_blocks, 5u);  // 0 + 2 + 3
  EXPECT_EQ(r.saved_chunks, 4u);
  EXPECT_EQ(r.evictions, 0u);
  EXPECT_EQ(r.resident_chunks, 4u);
  EXPECT_EQ(r.hit_tokens, 5u * 512);
  EXPECT_EQ(r.bytes_written, 4u * r.geometry.payload_bytes);
  EXPECT_EQ(r.bytes_read, 5u * r.geometry.payload_bytes);
  EXPECT_DOUBLE_EQ(r.HitRate(), 5.0 / 9.0);
  ASSERT_EQ(r.tiers.size(), 1u);
  EXPECT_EQ(r.tiers[0].tier, Tier::kDram);
  EXPECT_EQ(r.tiers[0].bytes_written, r.bytes_written);
  EXPECT_EQ(r.tiers[0].bytes_read, r.bytes_read);
}

TEST(CacheReplay, EvictsChainTailsOnly) {
  // Two slots. r2 must evict: 2 is the only tail (1 has a child), so 1
  // stays and r3 hits it; the reference LRU evicts 1 instead and gets 0.
  auto t = Trace({{1, 2}, {3}, {1, 2}});
  ASSERT_OK_AND_ASSIGN(CacheReplayResult r, ReplayThroughCache(t, Options(2 * 512)));
  EXPECT_EQ(r.hit_blocks, 1u);
  EXPECT_EQ(r.evictions, 2u);  // 2 for 3, then 3 (older than the touched 1) for 2
  EXPECT_EQ(r.resident_chunks, 2u);
  ASSERT_OK_AND_ASSIGN(ReplayResult reference, ReplayLru(t, 2));
  EXPECT_EQ(reference.hit_blocks, 0u);
}

TEST(CacheReplay, TokenFiguresCountThePartialLastBlock) {
  TraceRequest r;
  r.input_length = 700;  // 512 + 188
  r.hash_ids = {7, 8};
  std::vector<TraceRequest> t = {r, r};
  ASSERT_OK_AND_ASSIGN(CacheReplayResult out, ReplayThroughCache(t, Options(8 * 512)));
  EXPECT_EQ(out.total_blocks, 4u);
  EXPECT_EQ(out.hit_blocks, 2u);
  EXPECT_EQ(out.total_tokens, 1400u);
  EXPECT_EQ(out.hit_tokens, 700u);
  EXPECT_DOUBLE_EQ(out.TokenHitRate(), 0.5);
}

TEST(CacheReplay, NeverHoldsMoreThanTheCapacity) {
  // 300 distinct single-block requests through 7 chunks of room: the filler
  // chunks fill the rest of the slab, so exactly 7 stay.
  std::vector<std::vector<uint64_t>> ids;
  for (uint64_t i = 0; i < 300; ++i) ids.push_back({i + 1});
  ASSERT_OK_AND_ASSIGN(CacheReplayResult r, ReplayThroughCache(Trace(ids), Options(7 * 512)));
  EXPECT_EQ(r.geometry.capacity_chunks, 7u);
  EXPECT_EQ(r.geometry.filler_chunks, 512u - 7);
  EXPECT_EQ(r.resident_chunks, 7u);
  EXPECT_EQ(r.saved_chunks, 300u);
  EXPECT_EQ(r.evictions, 300u - 7);
  EXPECT_EQ(r.rejected_saves, 0u);
}

TEST(CacheReplay, RejectsARequestWithARepeatedId) {
  auto t = Trace({{1, 2, 1}});
  EXPECT_THAT(ReplayThroughCache(t, Options(4 * 512)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("repeats")));
}

TEST(CacheReplay, ReportsProgress) {
  auto t = GeneratedTrace(130, 3);
  std::vector<uint64_t> seen;
  ASSERT_OK(ReplayThroughCache(t, Options(64 * 512), [&](uint64_t done) {
              seen.push_back(done);
            }).status());
  EXPECT_EQ(seen, (std::vector<uint64_t>{64, 128, 130}));
}

// The real cache and the tail-first simulator agree block for block.
void ExpectMatchesSimulator(const std::vector<TraceRequest>& t, uint64_t tokens,
                            const std::string& policy) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EvictionPolicy> p, NewEvictionPolicy(policy));
  ASSERT_OK_AND_ASSIGN(ReplayResult sim, ReplayTailFirst(t, CapacityBlocks(tokens, 512), *p));
  ASSERT_OK_AND_ASSIGN(CacheReplayResult real, ReplayThroughCache(t, Options(tokens, policy)));
  EXPECT_EQ(real.total_blocks, sim.total_blocks) << policy;
  EXPECT_EQ(real.hit_blocks, sim.hit_blocks) << policy << " at " << tokens << " tokens";
  EXPECT_EQ(real.saved_chunks, sim.saved_blocks) << policy;
  EXPECT_EQ(real.evictions, sim.evicted_blocks) << policy;
  EXPECT_GT(real.evictions, 0u) << "the capacity must be small enough to evict";
}

TEST(CacheReplay, MatchesTheTailFirstSimulatorOnAGeneratedTrace) {
  auto t = GeneratedTrace(1500, 11);
  ExpectMatchesSimulator(t, 200 * 512, "lru");
  ExpectMatchesSimulator(t, 512 * 512, "2q");  // one whole slab: no fillers
  ExpectMatchesSimulator(t, 512 * 512, "2q-chain");
}

TEST(CacheReplay, MatchesTheTailFirstSimulatorOnTheMooncakeTrace) {
  const std::string path =
      std::string(KVTIER_SOURCE_DIR) + "/../shared/traces/mooncake_synthetic_trace.jsonl";
  if (!std::ifstream(path).good()) GTEST_SKIP() << "no trace at " << path;
  ASSERT_OK_AND_ASSIGN(std::vector<TraceRequest> t, ReadTraceFile(path));
  t.resize(800);
  ExpectMatchesSimulator(t, 500'000, "lru");
  // 2q sizes its history by the entries it holds, pinned fillers included, so
  // it is compared at a capacity of whole slabs (1024 chunks, no fillers).
  ExpectMatchesSimulator(t, 1024 * 512, "2q");
  ExpectMatchesSimulator(t, 1024 * 512, "2q-chain");
}

// ---- DRAM + NVMe -------------------------------------------------------------------

class NvmeFolder {
 public:
  NvmeFolder() {
    absl::StatusOr<std::string> p = MakeTempDir("/tmp", "kvtier-replay-nvme-test-");
    path_ = p.ok() ? *p : "";
  }
  ~NvmeFolder() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The smallest NVMe volume the tier takes: 16 MiB of 8 KiB slots.
constexpr uint64_t kNvmeChunks = 2048;

uint64_t TierHits(const CacheReplayResult& r, Tier tier) {
  for (const TierTraffic& t : r.tiers) {
    if (t.tier == tier) return t.hits;
  }
  return ~uint64_t{0};
}

TEST(CacheReplayGeometry, SizesTheNvmeVolumeInWholeSlots) {
  CacheReplayOptions o = Options(3'000'000);
  o.nvme_tokens = 50'000'000;
  o.nvme_path = "/unused";
  ASSERT_OK_AND_ASSIGN(ReplayGeometry g, ComputeGeometry(o));
  EXPECT_EQ(g.nvme_chunks, 97656u);
  EXPECT_EQ(g.nvme_slot_bytes, 8192u);  // a 4 KiB data area and a 4 KiB commit sector
  EXPECT_EQ(g.nvme_capacity_bytes, 97656u * 8192);
  o.nvme_tokens = 0;
  ASSERT_OK_AND_ASSIGN(g, ComputeGeometry(o));
  EXPECT_EQ(g.nvme_chunks, 0u);
  EXPECT_EQ(g.nvme_capacity_bytes, 0u);
}

TEST(CacheReplayGeometry, RejectsBadNvmeOptions) {
  CacheReplayOptions o = Options(512);
  o.nvme_tokens = kNvmeChunks * 512;
  EXPECT_THAT(ComputeGeometry(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nvme_path")));
  o.nvme_path = "/unused";
  o.nvme_tokens = kNvmeChunks * 512 - 1;  // one chunk short of 16 MiB
  EXPECT_THAT(ComputeGeometry(o), StatusIs(absl::StatusCode::kInvalidArgument,
                                           HasSubstr("nvme_tokens: 1048575 tokens")));
  o.nvme_tokens = kNvmeChunks * 512;
  o.nvme_io_mode = "mmap";
  EXPECT_THAT(ComputeGeometry(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nvme_io_mode")));
  o.nvme_io_mode = "buffered";
  o.nvme_admission = "never";
  EXPECT_THAT(ComputeGeometry(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nvme_admission")));
}

TEST(CacheReplay, NvmeBelowOneChunkOfDramKeepsEveryHit) {
  // DRAM holds one chunk, so every chunk but the last one touched lives on
  // NVMe. Per request (D: DRAM, N: NVMe; a load from NVMe promotes the chunk
  // and evicts DRAM's one chunk, which is demoted unless NVMe has it):
  //   {1,2,3}  no hits; 1 and 2 demoted, DRAM {3}
  //   {1,2,4}  1 N, 2 N (3 demoted); 4 saved, DRAM {4}
  //   {1,2,4}  1 N, 2 N, 4 N (demoted while 1 was promoted); DRAM {4}
  //   {5}      no hit; DRAM {5}
  //   {5}      5 D
  //   {1,2,3}  1 N (5 demoted), 2 N, 3 N
  // 9 hits (8 from NVMe), as many as an unbounded cache gets; DRAM alone
  // gets 1.
  auto t = Trace({{1, 2, 3}, {1, 2, 4}, {1, 2, 4}, {5}, {5}, {1, 2, 3}});
  NvmeFolder folder;
  ASSERT_FALSE(folder.path().empty());
  for (const char* io_mode : {"direct", "buffered"}) {
    CacheReplayOptions o = Options(512);
    o.nvme_tokens = kNvmeChunks * 512;
    o.nvme_path = folder.path();
    o.nvme_io_mode = io_mode;
    std::error_code ec;
    std::filesystem::remove(folder.path() + "/kvtier-nvme.dat", ec);
    ASSERT_OK_AND_ASSIGN(CacheReplayResult r, ReplayThroughCache(t, o));
    EXPECT_EQ(r.geometry.nvme_chunks, kNvmeChunks);
    EXPECT_EQ(r.total_blocks, 14u);
    EXPECT_EQ(r.hit_blocks, 9u) << io_mode;
    EXPECT_EQ(TierHits(r, Tier::kDram), 1u) << io_mode;
    EXPECT_EQ(TierHits(r, Tier::kNvme), 8u) << io_mode;
    EXPECT_EQ(r.lost_hits, 0u);
    EXPECT_EQ(r.demoted, 5u);  // 1, 2, 3, 4, 5
    EXPECT_EQ(r.promoted, 8u);
    EXPECT_EQ(r.skipped_demotions, 0u);
    EXPECT_EQ(r.nvme_resident_chunks, 5u);
    EXPECT_EQ(r.resident_chunks, 1u);
    ASSERT_EQ(r.tiers.size(), 2u);
    EXPECT_EQ(r.tiers[1].tier, Tier::kNvme);
    EXPECT_EQ(r.tiers[1].bytes_read, 8u * r.geometry.payload_bytes);
  }
  ASSERT_OK_AND_ASSIGN(ReplayResult unbounded, ReplayUnbounded(t));
  EXPECT_EQ(unbounded.hit_blocks, 9u);
  ASSERT_OK_AND_ASSIGN(CacheReplayResult dram_only, ReplayThroughCache(t, Options(512)));
  EXPECT_EQ(dram_only.hit_blocks, 1u);
}

TEST(CacheReplay, NvmeMatchesUnboundedOnAGeneratedTrace) {
  // A generated trace whose chunks all fit DRAM + NVMe: with demotions
  // waited for, every policy gets the unbounded hit count although DRAM
  // alone evicts.
  auto t = GeneratedTrace(150, 5);
  ASSERT_OK_AND_ASSIGN(ReplayResult unbounded, ReplayUnbounded(t));
  ASSERT_LT(unbounded.saved_blocks, kNvmeChunks);
  NvmeFolder folder;
  ASSERT_FALSE(folder.path().empty());
  for (const char* policy : {"lru", "2q", "2q-chain", "cost"}) {
    CacheReplayOptions o = Options(32 * 512, policy);
    ASSERT_OK_AND_ASSIGN(CacheReplayResult dram_only, ReplayThroughCache(t, o));
    o.nvme_tokens = kNvmeChunks * 512;
    o.nvme_path = folder.path();
    std::error_code ec;
    std::filesystem::remove(folder.path() + "/kvtier-nvme.dat", ec);
    ASSERT_OK_AND_ASSIGN(CacheReplayResult r, ReplayThroughCache(t, o));
    EXPECT_LT(dram_only.hit_blocks, unbounded.hit_blocks) << policy;
    EXPECT_EQ(r.hit_blocks, unbounded.hit_blocks) << policy;
    EXPECT_EQ(TierHits(r, Tier::kDram) + TierHits(r, Tier::kNvme), r.hit_blocks) << policy;
    EXPECT_GT(TierHits(r, Tier::kNvme), 0u) << policy;
    EXPECT_EQ(r.lost_hits, 0u) << policy;
    EXPECT_EQ(r.skipped_demotions, 0u) << policy;
  }
}

TEST(FillChunkPayload, IsDeterministicAndKeyed) {
  std::vector<std::byte> a(1000), b(1000), c(1000);
  FillChunkPayload(BlockKey{1, 2}, absl::MakeSpan(a));
  FillChunkPayload(BlockKey{1, 2}, absl::MakeSpan(b));
  FillChunkPayload(BlockKey{1, 3}, absl::MakeSpan(c));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(ParseTokenCount, AcceptsDecimalSuffixes) {
  const struct {
    const char* text;
    uint64_t tokens;
  } cases[] = {{"3M", 3'000'000}, {"500k", 500'000}, {"2G", 2'000'000'000}, {"1536", 1536}};
  for (const auto& c : cases) {
    ASSERT_OK_AND_ASSIGN(uint64_t tokens, ParseTokenCount(c.text, "f"));
    EXPECT_EQ(tokens, c.tokens) << c.text;
  }
}

TEST(ParseTokenCount, RejectsJunkNamingTheField) {
  for (const char* bad : {"", "M", "1.5M", "-3", "3MB", "99999999999999999999", "20000000000G"}) {
    EXPECT_THAT(ParseTokenCount(bad, "--dram-tokens"),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--dram-tokens")))
        << bad;
  }
}

}  // namespace
}  // namespace kvtier::replay
