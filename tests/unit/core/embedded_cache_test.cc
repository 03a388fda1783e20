#include "kvtier/cache.h"

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/namespace.h"
#include "tests/testing/cache_fixtures.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::KvFor;
using ::kvtier::testing::SmallModel;
using ::kvtier::testing::StatusIs;
using ::kvtier::testing::Tokens;
using ::testing::HasSubstr;

CacheOptions SmallCache(uint64_t capacity = 8ull << 20) {
  CacheOptions o;
  o.dram_capacity_bytes = capacity;
  o.slab_bytes = 2ull << 20;
  o.huge_pages = false;
  o.index_shards = 8;
  return o;
}

class CacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(ns_, Namespace::Create(SmallModel()));
    ASSERT_OK_AND_ASSIGN(cache_, Cache::Create(SmallCache()));
  }
  absl::Status SaveAll(const std::vector<ChunkRef>& chunks) {
    for (const ChunkRef& c : chunks) {
      absl::Status s = cache_->Save(*ns_, c, KvFor(c, ns_->PayloadBytes(c.num_tokens)));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  std::optional<Namespace> ns_;
  std::unique_ptr<Cache> cache_;
};

TEST_F(CacheTest, SavedPrefixIsFoundAndLoadedByteForByte) {
  std::vector<TokenId> prompt = Tokens(64 * 5 + 10, 1);
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns_->Chunks(prompt));
  ASSERT_EQ(chunks.size(), 5u);
  ASSERT_OK(SaveAll({chunks.begin(), chunks.begin() + 3}));

  // A second request sharing the first 4 chunks' tokens and then diverging.
  std::vector<TokenId> second(prompt.begin(), prompt.begin() + 64 * 4);
  std::vector<TokenId> tail = Tokens(200, 2);
  second.insert(second.end(), tail.begin(), tail.end());
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> c2, ns_->Chunks(second));
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(c2)));
  EXPECT_EQ(r.matched, 3u);
  ASSERT_EQ(r.chunks.size(), 3u);
  EXPECT_EQ(r.chunks[0].tier, Tier::kDram);
  std::vector<std::byte> out(ns_->FullChunkPayloadBytes());
  for (size_t i = 0; i < r.matched; ++i) {
    ASSERT_OK_AND_ASSIGN(size_t n, cache_->Load(*ns_, c2[i].key, absl::MakeSpan(out)));
    EXPECT_EQ(n, out.size());
    EXPECT_EQ(out, KvFor(chunks[i], out.size())) << "chunk " << i;
  }
  CacheStats st = cache_->Stats();
  EXPECT_EQ(st.lookups, 1u);
  EXPECT_EQ(st.lookup_hits, 3u);
  EXPECT_EQ(st.tiers[0].hits, 3u);
  EXPECT_EQ(st.tiers[0].bytes_read, 3 * out.size());
}

TEST_F(CacheTest, SavingTwiceIsHarmless) {
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns_->Chunks(Tokens(128, 3)));
  ASSERT_OK(SaveAll(chunks));
  ASSERT_OK(SaveAll(chunks));
  EXPECT_EQ(cache_->Stats().tiers[0].chunks, 2u);
}

TEST_F(CacheTest, BadInputGetsAClearError) {
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns_->Chunks(Tokens(64 * 3, 4)));
  ASSERT_OK(SaveAll(chunks));
  const size_t full = ns_->FullChunkPayloadBytes();

  // Load into a buffer too small: nothing written.
  std::vector<std::byte> small(full - 1, std::byte{0x77});
  EXPECT_THAT(cache_->Load(*ns_, chunks[0].key, absl::MakeSpan(small)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("smaller")));
  EXPECT_EQ(small, std::vector<std::byte>(full - 1, std::byte{0x77}));

  // Load with another namespace (another tenant's salt): a miss, and the
  // owner's chunk is untouched.
  ASSERT_OK_AND_ASSIGN(Namespace other, Namespace::Create(SmallModel("tenant-b")));
  std::vector<std::byte> out(full);
  EXPECT_THAT(cache_->Load(other, chunks[0].key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("namespace")));
  ASSERT_OK_AND_ASSIGN(LookupResult other_hit, cache_->Lookup(other, Namespace::Keys(chunks)));
  EXPECT_EQ(other_hit.matched, 0u);
  ASSERT_OK(cache_->Load(*ns_, chunks[0].key, absl::MakeSpan(out)).status());
  EXPECT_EQ(out, KvFor(chunks[0], full));

  // A chain with a repeated key, or a zero key.
  std::vector<BlockKey> repeated = {chunks[0].key, chunks[1].key, chunks[0].key};
  EXPECT_THAT(cache_->Lookup(*ns_, repeated),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chain[2]")));
  std::vector<BlockKey> zero = {chunks[0].key, BlockKey{}};
  EXPECT_THAT(cache_->Lookup(*ns_, zero),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chain[1]: zero key")));

  // Payload of the wrong size; tokens that are not whole blocks or exceed
  // the chunk.
  std::vector<std::byte> wrong(full + 1);
  EXPECT_THAT(cache_->Save(*ns_, chunks[0], wrong),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("payload")));
  ChunkRef odd = chunks[0];
  odd.num_tokens = 20;
  EXPECT_THAT(cache_->Save(*ns_, odd, std::vector<std::byte>(ns_->PayloadBytes(20))),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_tokens")));
  ChunkRef big = chunks[0];
  big.num_tokens = 128;
  EXPECT_THAT(cache_->Save(*ns_, big, std::vector<std::byte>(ns_->PayloadBytes(128))),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokens_per_chunk")));
  ChunkRef zero_key = chunks[0];
  zero_key.key = BlockKey{};
  EXPECT_THAT(cache_->Save(*ns_, zero_key, std::vector<std::byte>(full)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chunk.key")));
}

TEST(CacheOptionsTest, ZeroAndAbsurdCapacities) {
  CacheOptions o = SmallCache(0);
  EXPECT_THAT(Cache::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dram_capacity_bytes")));
  o = SmallCache(1ull << 62);
  EXPECT_THAT(Cache::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dram_capacity_bytes")));
  o = SmallCache(1ull << 20);  // below one slab
  EXPECT_THAT(Cache::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at least one slab")));
}

TEST(CacheChunkSize, ChunkLargerThanItsSlotIsRefused) {
  NamespaceOptions no = SmallModel();
  no.layout.num_layers = 64;  // 16 KiB per token
  no.tokens_per_chunk = 256;  // 4 MiB chunk > 2 MiB slab
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(no));
  ASSERT_OK_AND_ASSIGN(auto cache, Cache::Create(SmallCache()));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(Tokens(256, 5)));
  EXPECT_THAT(cache->Save(ns, chunks[0], std::vector<std::byte>(ns.FullChunkPayloadBytes())),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("largest slot")));
}

TEST_F(CacheTest, PinKeepsAChunkAndGivesZeroCopyAccess) {
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns_->Chunks(Tokens(64, 6)));
  ASSERT_OK(SaveAll(chunks));
  ASSERT_OK_AND_ASSIGN(ChunkPin pin, cache_->Pin(*ns_, chunks[0].key));
  std::vector<std::byte> expect = KvFor(chunks[0], ns_->FullChunkPayloadBytes());
  ASSERT_EQ(pin.payload().size(), expect.size());
  EXPECT_TRUE(std::equal(expect.begin(), expect.end(), pin.payload().begin()));
  EXPECT_EQ(pin.num_tokens(), 64u);
  // Flood the cache; the pinned chunk stays.
  for (uint32_t i = 0; i < 40; ++i) {
    ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> other, ns_->Chunks(Tokens(64 * 8, 100 + i)));
    ASSERT_OK(SaveAll(other));
  }
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, {chunks[0].key}));
  EXPECT_EQ(r.matched, 1u);
  EXPECT_TRUE(std::equal(expect.begin(), expect.end(), pin.payload().begin()));
  ChunkPin moved = std::move(pin);
  EXPECT_FALSE(pin.valid());  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_TRUE(moved.valid());
  EXPECT_EQ(cache_->Stats().tiers[0].pinned_chunks, 1u);
  moved.Release();
  EXPECT_EQ(cache_->Stats().tiers[0].pinned_chunks, 0u);
  EXPECT_THAT(cache_->Pin(*ns_, BlockKey{1, 2}), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(CacheTest, RemoveTakesTheSuffix) {
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns_->Chunks(Tokens(64 * 4, 7)));
  ASSERT_OK(SaveAll(chunks));
  ASSERT_OK_AND_ASSIGN(size_t removed, cache_->Remove(*ns_, chunks[2].key));
  EXPECT_EQ(removed, 2u);
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(chunks)));
  EXPECT_EQ(r.matched, 2u);
}

// Eight threads save and load overlapping chains (a shared system prompt plus
// per-thread turns) under eviction pressure; every loaded byte is checked.
TEST(CacheConcurrency, EightThreadsOverlappingChains) {
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallModel()));
  // 4 MiB: 120 chunks of 32 KiB, well below the chains' total, so eviction
  // runs all the time.
  ASSERT_OK_AND_ASSIGN(auto cache, Cache::Create(SmallCache(4ull << 20)));
  const std::vector<TokenId> shared = Tokens(64 * 6, 42);
  std::atomic<uint64_t> loads{0}, wrong{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int round = 0; round < 60; ++round) {
        std::vector<TokenId> prompt = shared;
        // Threads share branch seeds pairwise, so chains overlap past the
        // shared prefix too.
        std::vector<TokenId> branch = Tokens(64 * (1 + rng() % 6), (t / 2) * 1000 + rng() % 5);
        prompt.insert(prompt.end(), branch.begin(), branch.end());
        absl::StatusOr<std::vector<ChunkRef>> chunks = ns.Chunks(prompt);
        if (!chunks.ok()) {
          ++errors;
          continue;
        }
        absl::StatusOr<LookupResult> hit = cache->Lookup(ns, Namespace::Keys(*chunks));
        if (!hit.ok()) {
          ++errors;
          continue;
        }
        std::vector<std::byte> out(ns.FullChunkPayloadBytes());
        size_t i = 0;
        for (; i < hit->matched; ++i) {
          absl::StatusOr<size_t> n = cache->Load(ns, (*chunks)[i].key, absl::MakeSpan(out));
          if (!n.ok()) {
            if (!absl::IsNotFound(n.status())) ++errors;
            break;  // evicted meanwhile
          }
          ++loads;
          if (out != KvFor((*chunks)[i], out.size())) ++wrong;
        }
        for (; i < chunks->size(); ++i) {
          const ChunkRef& c = (*chunks)[i];
          absl::Status s = cache->Save(ns, c, KvFor(c, ns.PayloadBytes(c.num_tokens)));
          if (!s.ok() && !absl::IsResourceExhausted(s)) ++errors;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_EQ(errors.load(), 0u);
  EXPECT_GT(loads.load(), 100u);
  TierStats st = cache->Stats().tiers[0];
  EXPECT_GT(st.evictions, 0u);
  EXPECT_LE(st.used_bytes, st.capacity_bytes);
  EXPECT_EQ(st.pinned_chunks, 0u);
}

TEST_F(CacheTest, PinRefusesAChunkWithADamagedHeader) {
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns_->Chunks(Tokens(64 * 2, 9)));
  ASSERT_OK(SaveAll(chunks));
  {
    ASSERT_OK_AND_ASSIGN(ChunkPin pin, cache_->Pin(*ns_, chunks[1].key));
    // The 64-byte header sits right before the payload in the arena.
    std::memset(const_cast<std::byte*>(pin.payload().data()) - 64 + 8, 0x5A, 8);
  }
  EXPECT_THAT(cache_->Pin(*ns_, chunks[1].key).status(), StatusIs(absl::StatusCode::kDataLoss));
  // Dropped and counted: the next lookup stops before it, and no pin or load
  // serves it.
  EXPECT_EQ(cache_->Stats().tiers[0].corrupt_chunks, 1u);
  ASSERT_OK_AND_ASSIGN(LookupResult r, cache_->Lookup(*ns_, Namespace::Keys(chunks)));
  EXPECT_EQ(r.matched, 1u);
  EXPECT_THAT(cache_->Pin(*ns_, chunks[1].key).status(), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(cache_->Pin(*ns_, chunks[0].key).status());
}

TEST(CacheGpuRegistration, FallbackIsReported) {
  CacheOptions o = SmallCache();
  ASSERT_OK_AND_ASSIGN(auto cache, Cache::Create(o));
  CacheStats st = cache->Stats();
  if (st.gpu_registered) {
    EXPECT_EQ(st.gpu_registration, "registered");
  } else {
    // No GPU here (or no CUDA build): the arena stays pageable and says why.
    EXPECT_FALSE(st.gpu_registration.empty());
    EXPECT_NE(st.gpu_registration, "registered");
  }
  o.register_with_gpu = false;
  ASSERT_OK_AND_ASSIGN(auto off, Cache::Create(o));
  EXPECT_FALSE(off->Stats().gpu_registered);
  EXPECT_THAT(off->Stats().gpu_registration, HasSubstr("disabled"));
}

}  // namespace
}  // namespace kvtier
