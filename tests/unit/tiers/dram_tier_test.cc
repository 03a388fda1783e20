#include "src/tiers/dram/dram_tier.h"

#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/core/chunk_format.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

constexpr uint64_t kSlab = 2ull << 20;
constexpr uint64_t kNs = 0x5eed;
constexpr uint64_t kSig = 0x51;

DramTierOptions SmallOptions(uint64_t capacity = 2 * kSlab) {
  DramTierOptions o;
  o.arena.capacity_bytes = capacity;
  o.arena.slab_bytes = kSlab;
  o.arena.huge_pages = false;
  o.index_shards = 4;
  return o;
}

ChunkMeta Meta(uint64_t i, uint64_t parent = 0) {
  return ChunkMeta{kNs, BlockKey{7, i}, parent == 0 ? BlockKey{} : BlockKey{7, parent}, kSig, 16};
}

std::vector<std::byte> Payload(size_t n, uint64_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 7) & 0xFF);
  return v;
}

// 1 MiB slots minus the header: two per 2 MiB slab.
constexpr size_t kBig = (1 << 20) - 64;

TEST(DramTier, BadOptionsAreRejected) {
  DramTierOptions o = SmallOptions();
  o.arena.capacity_bytes = 0;
  EXPECT_THAT(DramTier::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dram_capacity_bytes")));
  o = SmallOptions();
  o.arena.capacity_bytes = 1ull << 60;
  EXPECT_THAT(DramTier::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("physical memory")));
  o = SmallOptions();
  o.arena.slab_bytes = 12345;
  EXPECT_THAT(DramTier::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slab_bytes")));
  o = SmallOptions();
  o.index_shards = 3;
  EXPECT_THAT(DramTier::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("index_shards")));
  o = SmallOptions();
  o.eviction_policy = "nope";
  EXPECT_THAT(DramTier::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eviction_policy")));
}

TEST(DramTier, ChunkLargerThanASlotIsRejected) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  std::vector<std::byte> huge(kSlab);  // + header > slab
  EXPECT_THAT(
      tier->SavePayload(Meta(1), huge),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("larger than the largest slot")));
  EXPECT_EQ(tier->Stats().chunks, 0u);
}

TEST(DramTier, CapacityIsNeverExceeded) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  for (uint64_t i = 1; i <= 50; ++i) {
    ASSERT_OK(tier->SavePayload(Meta(i), Payload(kBig, i)));
    TierStats s = tier->Stats();
    EXPECT_LE(s.used_bytes, s.capacity_bytes);
    EXPECT_LE(s.chunks, 4u);
  }
  TierStats s = tier->Stats();
  EXPECT_EQ(s.chunks, 4u);
  EXPECT_EQ(s.evictions, 46u);
  // LRU: the four newest survive, byte for byte.
  std::vector<std::byte> out(kBig);
  for (uint64_t i = 47; i <= 50; ++i) {
    ASSERT_OK_AND_ASSIGN(size_t n,
                         tier->LoadPayload(kNs, BlockKey{7, i}, kSig, absl::MakeSpan(out)));
    EXPECT_EQ(n, kBig);
    EXPECT_EQ(out, Payload(kBig, i));
  }
  EXPECT_THAT(tier->LoadPayload(kNs, BlockKey{7, 1}, kSig, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(DramTier, TailsAreEvictedBeforeTheirParents) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  // Chain 1 -> 2 -> 3, then an unrelated chunk 10. Room for four.
  ASSERT_OK(tier->SavePayload(Meta(1), Payload(kBig, 1)));
  ASSERT_OK(tier->SavePayload(Meta(2, 1), Payload(kBig, 2)));
  ASSERT_OK(tier->SavePayload(Meta(3, 2), Payload(kBig, 3)));
  ASSERT_OK(tier->SavePayload(Meta(10), Payload(kBig, 10)));
  // Chunk 1 is the least recently used, but it has a successor: the tail (3)
  // goes first, then 2, then 1.
  ASSERT_OK(tier->SavePayload(Meta(11), Payload(kBig, 11)));
  std::vector<BlockKey> chain = {BlockKey{7, 1}, BlockKey{7, 2}, BlockKey{7, 3}};
  EXPECT_EQ(tier->MatchPrefix(kNs, chain), 2u);
  ASSERT_OK(tier->SavePayload(Meta(12), Payload(kBig, 12)));
  EXPECT_EQ(tier->MatchPrefix(kNs, chain), 1u);
  ASSERT_OK(tier->SavePayload(Meta(13), Payload(kBig, 13)));
  EXPECT_EQ(tier->MatchPrefix(kNs, chain), 0u);
  EXPECT_TRUE(tier->CouldExist(kNs, BlockKey{7, 13}));
}

TEST(DramTier, PinnedChunksSurvivePressure) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  for (uint64_t i = 1; i <= 4; ++i) ASSERT_OK(tier->SavePayload(Meta(i), Payload(kBig, i)));
  ASSERT_OK_AND_ASSIGN(ChunkPin pin1, tier->PinChunk(kNs, BlockKey{7, 1}));
  ASSERT_OK_AND_ASSIGN(ChunkPin pin2, tier->PinChunk(kNs, BlockKey{7, 2}));
  for (uint64_t i = 100; i < 120; ++i) ASSERT_OK(tier->SavePayload(Meta(i), Payload(kBig, i)));
  EXPECT_TRUE(tier->CouldExist(kNs, BlockKey{7, 1}));
  EXPECT_TRUE(tier->CouldExist(kNs, BlockKey{7, 2}));
  std::vector<std::byte> expect = Payload(kBig, 1);
  ASSERT_EQ(pin1.payload().size(), kBig);
  EXPECT_TRUE(std::equal(pin1.payload().begin(), pin1.payload().end(), expect.begin()));
  EXPECT_EQ(tier->Stats().pinned_chunks, 2u);

  // With every slot pinned, a save is refused at once.
  ASSERT_OK_AND_ASSIGN(ChunkPin pin3, tier->PinChunk(kNs, BlockKey{7, 118}));
  ASSERT_OK_AND_ASSIGN(ChunkPin pin4, tier->PinChunk(kNs, BlockKey{7, 119}));
  EXPECT_THAT(tier->SavePayload(Meta(500), Payload(kBig, 5)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(tier->Stats().save_rejections, 1u);
  pin1.Release();
  pin1.Release();  // twice is harmless
  ASSERT_OK(tier->SavePayload(Meta(500), Payload(kBig, 5)));
  EXPECT_FALSE(tier->CouldExist(kNs, BlockKey{7, 1}));
}

TEST(DramTier, DamagedHeaderIsAMissAndIsDropped) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  ASSERT_OK(tier->SavePayload(Meta(1), Payload(4000, 1)));
  // The first chunk sits at the start of the first slab used: the arena's
  // last slab (slabs are handed out from the top of the free list).
  std::byte* base = tier->arena().base();
  bool flipped = false;
  for (uint32_t s = 0; s < tier->arena().num_slabs() && !flipped; ++s) {
    std::byte* p = tier->arena().slab(s);
    if (p[0] == std::byte{'K'} && p[1] == std::byte{'V'}) {
      p[20] ^= std::byte{1};
      flipped = true;
    }
  }
  ASSERT_TRUE(flipped) << "chunk header not found in arena at " << static_cast<void*>(base);
  std::vector<std::byte> out(4000);
  EXPECT_THAT(tier->LoadPayload(kNs, BlockKey{7, 1}, kSig, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(tier->Stats().corrupt_chunks, 1u);
  EXPECT_EQ(tier->Stats().chunks, 0u);
  EXPECT_THAT(tier->LoadPayload(kNs, BlockKey{7, 1}, kSig, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(DramTier, GetHandsOutSealedChunksAndPutTakesThem) {
  ASSERT_OK_AND_ASSIGN(auto a, DramTier::Create(SmallOptions()));
  ASSERT_OK_AND_ASSIGN(auto b, DramTier::Create(SmallOptions()));
  std::vector<std::byte> payload = Payload(10000, 3);
  ASSERT_OK(a->SavePayload(Meta(1), payload));
  std::vector<std::byte> encoded(20000);
  ASSERT_OK_AND_ASSIGN(size_t n, a->Get(kNs, BlockKey{7, 1}, absl::MakeSpan(encoded)));
  encoded.resize(n);
  ASSERT_OK_AND_ASSIGN(DecodedChunk d,
                       DecodeChunk(encoded, ChunkExpectation{kNs, BlockKey{7, 1}, kSig, true}));
  EXPECT_TRUE(d.header.sealed);
  ASSERT_OK(b->Put(Meta(1), encoded));
  std::vector<std::byte> out(10000);
  ASSERT_OK(b->LoadPayload(kNs, BlockKey{7, 1}, kSig, absl::MakeSpan(out)).status());
  EXPECT_EQ(out, payload);
  // A header that does not match the meta is refused.
  EXPECT_THAT(b->Put(Meta(2), encoded), StatusIs(absl::StatusCode::kInvalidArgument));
  std::vector<std::byte> tiny(10);
  EXPECT_THAT(a->Get(kNs, BlockKey{7, 1}, absl::MakeSpan(tiny)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("smaller")));
  EXPECT_TRUE(a->CouldExist(kNs, BlockKey{7, 1}));  // a short buffer is not damage
}

TEST(DramTier, EvictedChunksReachTheLowerTierSealed) {
  DramTierOptions o = SmallOptions();
  std::vector<std::pair<ChunkMeta, std::vector<std::byte>>> demoted;
  o.on_evict = [&](const ChunkMeta& m, absl::Span<const std::byte> bytes) {
    demoted.emplace_back(m, std::vector<std::byte>(bytes.begin(), bytes.end()));
  };
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(o));
  for (uint64_t i = 1; i <= 6; ++i) ASSERT_OK(tier->SavePayload(Meta(i), Payload(kBig, i)));
  ASSERT_EQ(demoted.size(), 2u);
  for (uint64_t i = 0; i < 2; ++i) {
    EXPECT_EQ(demoted[i].first.key, (BlockKey{7, i + 1}));
    ASSERT_OK_AND_ASSIGN(
        DecodedChunk d,
        DecodeChunk(demoted[i].second, ChunkExpectation{kNs, BlockKey{7, i + 1}, kSig, true}));
    EXPECT_TRUE(std::equal(d.payload.begin(), d.payload.end(), Payload(kBig, i + 1).begin()));
  }
}

TEST(DramTier, RemoveTreeTakesDescendantsButNotPinned) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions(8 * kSlab)));
  ASSERT_OK(tier->SavePayload(Meta(1), Payload(1000, 1)));
  ASSERT_OK(tier->SavePayload(Meta(2, 1), Payload(1000, 2)));
  ASSERT_OK(tier->SavePayload(Meta(3, 2), Payload(1000, 3)));
  ASSERT_OK(tier->SavePayload(Meta(4, 2), Payload(1000, 4)));  // a branch
  ASSERT_OK(tier->SavePayload(Meta(5), Payload(1000, 5)));
  ASSERT_OK_AND_ASSIGN(ChunkPin pin, tier->PinChunk(kNs, BlockKey{7, 4}));
  ASSERT_OK_AND_ASSIGN(size_t removed, tier->RemoveTree(kNs, BlockKey{7, 2}));
  EXPECT_EQ(removed, 2u);  // 2 and 3; 4 is pinned
  EXPECT_TRUE(tier->CouldExist(kNs, BlockKey{7, 1}));
  EXPECT_FALSE(tier->CouldExist(kNs, BlockKey{7, 2}));
  EXPECT_TRUE(tier->CouldExist(kNs, BlockKey{7, 4}));
  EXPECT_THAT(tier->RemoveTree(kNs, BlockKey{7, 99}), StatusIs(absl::StatusCode::kNotFound));
  pin.Release();
  EXPECT_EQ(tier->RemoveNamespace(kNs), 3u);
  EXPECT_EQ(tier->Stats().chunks, 0u);
}

TEST(DramTier, MixedSizesShareSlabs) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  // Fill with big chunks, then ask for small ones: big chunks alone in their
  // slab are evicted to free a whole slab for the new class.
  for (uint64_t i = 1; i <= 4; ++i) ASSERT_OK(tier->SavePayload(Meta(i), Payload(kBig, i)));
  for (uint64_t i = 10; i < 20; ++i) ASSERT_OK(tier->SavePayload(Meta(i), Payload(8000, i)));
  std::vector<std::byte> out(8000);
  for (uint64_t i = 10; i < 20; ++i) {
    ASSERT_OK(tier->LoadPayload(kNs, BlockKey{7, i}, kSig, absl::MakeSpan(out)).status());
    EXPECT_EQ(out, Payload(8000, i));
  }
  EXPECT_LE(tier->Stats().used_bytes, tier->Stats().capacity_bytes);
}

// A new size class needs a whole slab: one full of small chunks (512 of
// them, more than the rounds a save spends looking for a direct victim) is
// emptied for it.
TEST(DramTier, AFullSlabOfSmallChunksIsEmptiedForANewSize) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  constexpr size_t kSmall = 4096 - kChunkHeaderBytes;  // 4 KiB slots: 512 a slab
  for (uint64_t i = 1; i <= 1024; ++i) ASSERT_OK(tier->SavePayload(Meta(i), Payload(kSmall, i)));
  ASSERT_OK(tier->SavePayload(Meta(5000), Payload(kBig, 5000)));
  EXPECT_EQ(tier->Stats().evictions, 512u);
  std::vector<std::byte> out(kBig);
  ASSERT_OK(tier->LoadPayload(kNs, BlockKey{7, 5000}, kSig, absl::MakeSpan(out)).status());
  EXPECT_EQ(out, Payload(kBig, 5000));
}

// A slab that cannot be emptied (its chunk P is the parent of a chunk in the
// other slab) is passed over for one that can.
TEST(DramTier, ASlabThatCannotBeEmptiedIsPassedOver) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  ASSERT_OK(tier->SavePayload(Meta(1), Payload(kBig, 1)));     // P, slab A
  ASSERT_OK(tier->SavePayload(Meta(2), Payload(kBig, 2)));     // Q, slab A
  ASSERT_OK(tier->SavePayload(Meta(3, 1), Payload(kBig, 3)));  // C, child of P, slab B
  ASSERT_OK(tier->SavePayload(Meta(4), Payload(kBig, 4)));     // R, slab B
  // Q is the least recently used tail: its slab is tried first, and P stays
  // (its child C is resident).
  ASSERT_OK(tier->SavePayload(Meta(20), Payload(8000, 20)));
  std::vector<std::byte> out(8000);
  ASSERT_OK(tier->LoadPayload(kNs, BlockKey{7, 20}, kSig, absl::MakeSpan(out)).status());
  EXPECT_EQ(out, Payload(8000, 20));
  EXPECT_TRUE(tier->CouldExist(kNs, BlockKey{7, 1}));
  EXPECT_EQ(tier->Stats().evictions, 3u);
}

// A slab holding a pinned chunk cannot be emptied: a slab without one is
// chosen, so nothing is evicted in vain.
TEST(DramTier, ASlabWithAPinnedChunkIsNotEmptiedInVain) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(SmallOptions()));
  for (uint64_t i = 1; i <= 4; ++i) ASSERT_OK(tier->SavePayload(Meta(i), Payload(kBig, i)));
  // 1 and 2 share a slab, 3 and 4 the other; 1 is the least recently used.
  ASSERT_OK_AND_ASSIGN(ChunkPin pin, tier->PinChunk(kNs, BlockKey{7, 2}));
  ASSERT_OK(tier->SavePayload(Meta(20), Payload(8000, 20)));
  EXPECT_EQ(tier->Stats().evictions, 2u);
  EXPECT_TRUE(tier->CouldExist(kNs, BlockKey{7, 1}));
  EXPECT_FALSE(tier->CouldExist(kNs, BlockKey{7, 3}));
  EXPECT_FALSE(tier->CouldExist(kNs, BlockKey{7, 4}));
}

}  // namespace
}  // namespace kvtier
