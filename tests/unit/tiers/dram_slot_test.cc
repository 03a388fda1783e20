// DramTier's in-place write path (ReserveSlot / CommitSlot / AbortSlot), the
// entry points kvtierd's shared-memory clients go through.
#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/tiers/dram/dram_tier.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::StatusIs;

constexpr uint64_t kSlab = 2ull << 20;
constexpr uint64_t kNs = 0xabc;
constexpr uint64_t kSig = 0x77;

DramTierOptions Options(bool seal = false) {
  DramTierOptions o;
  o.arena.capacity_bytes = 2 * kSlab;
  o.arena.slab_bytes = kSlab;
  o.arena.huge_pages = false;
  o.index_shards = 4;
  o.seal_on_save = seal;
  return o;
}

ChunkMeta Meta(uint64_t i) { return ChunkMeta{kNs, BlockKey{9, i}, BlockKey{}, kSig, 16}; }

void Fill(std::byte* p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>((i * 31 + seed) & 0xFF);
}

TEST(DramSlots, CommittedSlotIsReadableAndInvisibleBefore) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(Options()));
  constexpr size_t kBytes = 100000;
  ASSERT_OK_AND_ASSIGN(DramTier::SlotReservation r, tier->ReserveSlot(Meta(1), kBytes));
  ASSERT_FALSE(r.already_present);
  EXPECT_EQ(r.payload_bytes, kBytes);
  ASSERT_LE(r.payload_offset + kBytes, tier->arena().size());
  EXPECT_EQ(tier->MatchPrefix(kNs, {Meta(1).key}), 0u);
  std::byte* slot = tier->arena().base() + r.payload_offset;
  Fill(slot, kBytes, 5);
  ASSERT_OK(tier->CommitSlot(r.handle));
  EXPECT_EQ(tier->MatchPrefix(kNs, {Meta(1).key}), 1u);

  std::vector<std::byte> out(kBytes), want(kBytes);
  Fill(want.data(), kBytes, 5);
  ASSERT_OK_AND_ASSIGN(size_t n, tier->LoadPayload(kNs, Meta(1).key, kSig, absl::MakeSpan(out)));
  EXPECT_EQ(n, kBytes);
  EXPECT_EQ(out, want);
  EXPECT_EQ(tier->Stats().saves, 1u);
  EXPECT_EQ(tier->Stats().bytes_written, kBytes);

  // A pin's payload view is the same slot.
  ASSERT_OK_AND_ASSIGN(ChunkPin pin, tier->PinChunk(kNs, Meta(1).key));
  EXPECT_EQ(tier->Stats().bytes_read, 2 * kBytes);  // the Load above and the pin
  EXPECT_EQ(static_cast<uint64_t>(pin.payload().data() - tier->arena().base()), r.payload_offset);

  // Committing twice is refused: the handle is spent.
  EXPECT_THAT(tier->CommitSlot(r.handle), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(DramSlots, SecondReservationOfAKeyFindsItPresent) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto a, tier->ReserveSlot(Meta(2), 4096));
  ASSERT_OK_AND_ASSIGN(auto b, tier->ReserveSlot(Meta(2), 4096));
  EXPECT_FALSE(a.already_present);
  EXPECT_TRUE(b.already_present);
  ASSERT_OK(tier->CommitSlot(a.handle));
  ASSERT_OK_AND_ASSIGN(auto c, tier->ReserveSlot(Meta(2), 4096));
  EXPECT_TRUE(c.already_present);
}

TEST(DramSlots, AbortFreesTheSlotAndTheKey) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto a, tier->ReserveSlot(Meta(3), 1 << 20));
  EXPECT_EQ(tier->Stats().pinned_chunks, 1u);
  tier->AbortSlot(a.handle);
  EXPECT_EQ(tier->Stats().pinned_chunks, 0u);
  EXPECT_EQ(tier->Stats().used_bytes, 0u);
  EXPECT_THAT(tier->CommitSlot(a.handle), StatusIs(absl::StatusCode::kFailedPrecondition));
  tier->AbortSlot(a.handle);  // stale: ignored
  ASSERT_OK_AND_ASSIGN(auto b, tier->ReserveSlot(Meta(3), 1 << 20));
  EXPECT_FALSE(b.already_present);
}

TEST(DramSlots, ReservedSlotsAreNeverEvicted) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(Options()));
  // Four ~1 MiB slots fill the two slabs; all stay reserved.
  std::vector<DramTier::SlotReservation> held;
  for (uint64_t i = 10; i < 14; ++i) {
    ASSERT_OK_AND_ASSIGN(auto r, tier->ReserveSlot(Meta(i), (1 << 20) - 64));
    held.push_back(r);
  }
  EXPECT_THAT(tier->ReserveSlot(Meta(20), (1 << 20) - 64),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (const auto& r : held) ASSERT_OK(tier->CommitSlot(r.handle));
  // Once committed they are ordinary chunks and may be evicted.
  ASSERT_OK_AND_ASSIGN(auto r, tier->ReserveSlot(Meta(20), (1 << 20) - 64));
  EXPECT_FALSE(r.already_present);
  tier->AbortSlot(r.handle);
}

TEST(DramSlots, SealOnSaveWritesAVerifiableChecksum) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(Options(/*seal=*/true)));
  constexpr size_t kBytes = 8192;
  ASSERT_OK_AND_ASSIGN(auto r, tier->ReserveSlot(Meta(4), kBytes));
  Fill(tier->arena().base() + r.payload_offset, kBytes, 9);
  ASSERT_OK(tier->CommitSlot(r.handle));
  std::vector<std::byte> encoded(kBytes + kChunkHeaderBytes);
  ASSERT_OK(tier->Get(kNs, Meta(4).key, absl::MakeSpan(encoded)).status());
  ChunkExpectation expect{kNs, Meta(4).key, kSig, /*verify_payload_checksum=*/true};
  ASSERT_OK_AND_ASSIGN(DecodedChunk d, DecodeChunk(encoded, expect));
  EXPECT_TRUE(d.header.sealed);
  // Damage a payload byte in the slot: the verifying Get refuses it.
  tier->arena().base()[r.payload_offset + 100] ^= std::byte{1};
  EXPECT_THAT(tier->Get(kNs, Meta(4).key, absl::MakeSpan(encoded)),
              StatusIs(absl::StatusCode::kDataLoss));
}

TEST(DramSlots, ZeroKeyIsRejected) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create(Options()));
  ChunkMeta m = Meta(1);
  m.key = BlockKey{};
  EXPECT_THAT(tier->ReserveSlot(m, 4096), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvtier
