#include "src/tiers/nvme/nvme_format.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/core/hash.h"
#include "src/tiers/nvme/staging_pool.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::nvme {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

using Sector = std::array<std::byte, kSectorBytes>;

VolumeGeometry TwoClasses() {
  std::vector<std::pair<uint64_t, uint64_t>> classes = {{8192, 10}, {69632, 3}};
  absl::StatusOr<VolumeGeometry> g = MakeGeometry(classes);
  EXPECT_TRUE(g.ok()) << g.status();
  return *g;
}

TEST(NvmeFormat, GeometryLaysClassesOutAfterTheSnapshotRegion) {
  VolumeGeometry g = TwoClasses();
  EXPECT_EQ(g.total_slots, 13u);
  EXPECT_EQ(g.snapshot_offset, kSectorBytes);
  EXPECT_EQ(g.snapshot_bytes, kSectorBytes + 4096);  // 13 * 96 bytes fit one sector
  EXPECT_EQ(g.classes[0].region_offset, g.snapshot_offset + g.snapshot_bytes);
  EXPECT_EQ(g.classes[0].slot_bytes, 8192u + 4096u);
  EXPECT_EQ(g.classes[1].first_slot, 10u);
  EXPECT_EQ(g.classes[1].region_offset, g.classes[0].region_offset + 10 * (8192 + 4096));
  EXPECT_EQ(g.volume_bytes, g.classes[1].region_offset + 3 * (69632 + 4096));
  EXPECT_EQ(g.ClassOf(9), 0u);
  EXPECT_EQ(g.ClassOf(10), 1u);
  EXPECT_EQ(g.SlotOffset(11), g.classes[1].region_offset + 69632 + 4096);
}

TEST(NvmeFormat, GeometryRejectsBadClasses) {
  std::vector<std::pair<uint64_t, uint64_t>> unaligned = {{5000, 1}};
  EXPECT_THAT(MakeGeometry(unaligned),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slot_classes[0]")));
  std::vector<std::pair<uint64_t, uint64_t>> order = {{8192, 1}, {4096, 1}};
  EXPECT_THAT(MakeGeometry(order),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ascending")));
  std::vector<std::pair<uint64_t, uint64_t>> empty = {{8192, 0}};
  EXPECT_THAT(MakeGeometry(empty),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no slot")));
}

TEST(NvmeFormat, SlotLadderStepsAreAlignedAndAtMostAnEighthApart) {
  const uint64_t region = 64ull << 20;
  std::vector<uint64_t> ladder = SlotLadder(region);
  ASSERT_GT(ladder.size(), 10u);
  EXPECT_EQ(ladder.front(), kSectorBytes);
  for (size_t i = 1; i < ladder.size(); ++i) {
    EXPECT_EQ(ladder[i] % kSectorBytes, 0u) << i;
    EXPECT_GT(ladder[i], ladder[i - 1]) << i;
    // A chunk one byte above a step wastes at most 12.5% of its slot's data
    // area, or one 4 KiB sector where steps are that close.
    EXPECT_LE(ladder[i], std::max(ladder[i - 1] + kSectorBytes, ladder[i - 1] * 9 / 8)) << i;
  }
  // The largest step fits four times in a region after its header, and the
  // next would not.
  EXPECT_EQ(ladder.back(), RegionMaxDataBytes(region));
  EXPECT_LE(4 * (ladder.back() + kSectorBytes), region - kSectorBytes);
  const std::vector<uint64_t> longer = SlotLadder(2 * region);
  const uint64_t next = *std::upper_bound(longer.begin(), longer.end(), ladder.back());
  EXPECT_GT(4 * (next + kSectorBytes), region - kSectorBytes);
  // A power-of-two payload plus its 64-byte chunk header gets the step one
  // sector above it: its slot is written whole, with no gap.
  for (uint64_t payload : {64ull << 10, 256ull << 10, 1ull << 20, 4ull << 20}) {
    EXPECT_EQ(*std::lower_bound(ladder.begin(), ladder.end(), payload + 64), payload + kSectorBytes)
        << payload;
  }
}

TEST(NvmeFormat, RegionGeometryFitsTheCapacity) {
  const uint64_t region = 4ull << 20;
  ASSERT_OK_AND_ASSIGN(VolumeGeometry g, MakeRegionGeometry(100ull << 20, region));
  EXPECT_TRUE(g.regions());
  EXPECT_TRUE(g.classes.empty());
  EXPECT_EQ(g.snapshot_offset, kSectorBytes);
  EXPECT_EQ(g.max_region_slots, (region - kSectorBytes) / 8192);
  // The snapshot region holds a record for every slot the smallest size
  // could give, and the region table.
  EXPECT_GE(g.snapshot_bytes, kSectorBytes + g.region_count * 8 +
                                  g.region_count * g.max_region_slots * kSnapshotRecordBytes);
  EXPECT_EQ(g.regions_offset, g.snapshot_offset + g.snapshot_bytes);
  EXPECT_EQ(g.volume_bytes, g.regions_offset + g.region_count * region);
  EXPECT_LE(g.volume_bytes, 100ull << 20);
  EXPECT_GT(g.volume_bytes + region, 100ull << 20);  // no room for one more
  EXPECT_THAT(MakeRegionGeometry(100ull << 20, (4ull << 20) + 4096),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("region_bytes")));
  EXPECT_THAT(MakeRegionGeometry(1ull << 20, 4ull << 20),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("capacity_bytes")));
  EXPECT_THAT(MakeRegionGeometry(20ull << 40, 64ull << 20),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("16 TiB")));
}

TEST(NvmeFormat, RegionSuperblockAndHeadersRoundTrip) {
  ASSERT_OK_AND_ASSIGN(VolumeGeometry g, MakeRegionGeometry(64ull << 20, 4ull << 20));
  Superblock sb{77, g};
  Sector s{};
  EncodeSuperblock(sb, absl::MakeSpan(s));
  ASSERT_OK_AND_ASSIGN(Superblock back, DecodeSuperblock(s));
  EXPECT_EQ(back.generation, 77u);
  EXPECT_TRUE(back.geometry == g);
  // Not equal to a volume of explicit classes.
  EXPECT_FALSE(back.geometry == TwoClasses());

  const std::vector<uint64_t> ladder = SlotLadder(g.region_bytes);
  RegionHeader h;
  h.generation = 77;
  h.region = 3;
  h.slot_data_bytes = ladder[5];
  h.slot_count = (g.region_bytes - kSectorBytes) / (ladder[5] + kSectorBytes);
  EncodeRegionHeader(h, absl::MakeSpan(s));
  RegionHeader out;
  std::string problem;
  ASSERT_EQ(DecodeRegionHeader(s, 77, g, 3, &out, &problem), RegionHeaderKind::kAssigned)
      << problem;
  EXPECT_EQ(out.slot_data_bytes, ladder[5]);
  EXPECT_EQ(out.slot_count, h.slot_count);
  // Another generation: an old format's header, so the region is free.
  EXPECT_EQ(DecodeRegionHeader(s, 78, g, 3, &out, &problem), RegionHeaderKind::kUnassigned);
  // Misplaced, damaged, or a size that is not a ladder step.
  EXPECT_EQ(DecodeRegionHeader(s, 77, g, 4, &out, &problem), RegionHeaderKind::kDamaged);
  Sector bad = s;
  bad[30] ^= std::byte{1};
  EXPECT_EQ(DecodeRegionHeader(bad, 77, g, 3, &out, &problem), RegionHeaderKind::kDamaged);
  EXPECT_THAT(problem, HasSubstr("checksum"));
  h.slot_data_bytes = ladder[5] + 4096;
  EncodeRegionHeader(h, absl::MakeSpan(s));
  EXPECT_EQ(DecodeRegionHeader(s, 77, g, 3, &out, &problem), RegionHeaderKind::kDamaged);
  Sector zero{};
  EXPECT_EQ(DecodeRegionHeader(zero, 77, g, 3, &out, &problem), RegionHeaderKind::kUnassigned);
}

TEST(NvmeFormat, OlderFormatVersionsAreRefused) {
  Superblock sb{5, TwoClasses()};
  Sector s{};
  EncodeSuperblock(sb, absl::MakeSpan(s));
  // Rewrite it as a version 1 superblock with a valid checksum.
  const uint32_t v1 = 1;
  std::memcpy(s.data() + 8, &v1, 4);
  const uint64_t sum = Xxh3_64({s.data(), kSectorBytes - 8});
  std::memcpy(s.data() + kSectorBytes - 8, &sum, 8);
  EXPECT_THAT(DecodeSuperblock(s),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("unsupported format version 1")));
}

TEST(NvmeFormat, SuperblockRoundTripsAndDetectsDamage) {
  Superblock sb{0x1234567890ABCDEFull, TwoClasses()};
  Sector s;
  EncodeSuperblock(sb, absl::MakeSpan(s));
  ASSERT_OK_AND_ASSIGN(Superblock back, DecodeSuperblock(s));
  EXPECT_EQ(back.generation, sb.generation);
  EXPECT_TRUE(back.geometry == sb.geometry);
  for (size_t pos : {0ul, 12ul, 24ul, 70ul, 4000ul, 4090ul}) {
    Sector bad = s;
    bad[pos] ^= std::byte{0x10};
    EXPECT_THAT(DecodeSuperblock(bad), StatusIs(absl::StatusCode::kDataLoss)) << pos;
  }
  Sector zero{};
  EXPECT_THAT(DecodeSuperblock(zero), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("magic")));
}

ChunkHeader Header() {
  ChunkHeader h;
  h.namespace_id = 7;
  h.key = BlockKey{1, 2};
  h.layout_signature = 3;
  h.payload_length = 5000;
  h.payload_checksum = 0xFEED;
  h.num_tokens = 16;
  return h;
}

SlotRecord Committed(uint32_t slot) {
  SlotRecord r;
  r.kind = SlotRecordKind::kCommitted;
  r.generation = 99;
  r.sequence = 1234;
  r.slot = slot;
  r.parent = BlockKey{5, 6};
  r.chunk = Header();
  EncodeChunkHeader(r.chunk, r.chunk_header_bytes.data());
  return r;
}

TEST(NvmeFormat, SlotRecordsAreClassified) {
  Sector s;
  EncodeSlotRecord(Committed(4), absl::MakeSpan(s));
  SlotRecord r = DecodeSlotRecord(s, 99, 4);
  ASSERT_EQ(r.kind, SlotRecordKind::kCommitted) << r.problem;
  EXPECT_EQ(r.sequence, 1234u);
  EXPECT_EQ(r.parent, (BlockKey{5, 6}));
  EXPECT_EQ(r.chunk.key, (BlockKey{1, 2}));
  EXPECT_EQ(r.chunk.payload_length, 5000u);
  // Another volume format: stale, not damaged.
  EXPECT_EQ(DecodeSlotRecord(s, 100, 4).kind, SlotRecordKind::kStale);
  // Written to the wrong slot.
  EXPECT_EQ(DecodeSlotRecord(s, 99, 5).kind, SlotRecordKind::kDamaged);
  for (size_t pos = 0; pos < 128; pos += 7) {
    Sector bad = s;
    bad[pos] ^= std::byte{1};
    EXPECT_EQ(DecodeSlotRecord(bad, 99, 4).kind, SlotRecordKind::kDamaged) << pos;
  }
  Sector zero{};
  EXPECT_EQ(DecodeSlotRecord(zero, 99, 4).kind, SlotRecordKind::kEmpty);
  SlotRecord tomb;
  tomb.kind = SlotRecordKind::kTombstone;
  tomb.generation = 99;
  tomb.sequence = 2000;
  tomb.slot = 4;
  EncodeSlotRecord(tomb, absl::MakeSpan(s));
  r = DecodeSlotRecord(s, 99, 4);
  EXPECT_EQ(r.kind, SlotRecordKind::kTombstone);
  EXPECT_EQ(r.sequence, 2000u);
}

TEST(NvmeFormat, SnapshotHeaderAndRecordsRoundTrip) {
  SnapshotHeader h;
  h.generation = 1;
  h.volume_bytes = 2;
  h.geometry_hash = 3;
  h.next_sequence = 4;
  h.record_count = 5;
  h.records_checksum = 6;
  Sector s;
  EncodeSnapshotHeader(h, absl::MakeSpan(s));
  ASSERT_OK_AND_ASSIGN(SnapshotHeader back, DecodeSnapshotHeader(s));
  EXPECT_EQ(back.next_sequence, 4u);
  EXPECT_EQ(back.record_count, 5u);
  s[50] ^= std::byte{1};
  EXPECT_THAT(DecodeSnapshotHeader(s), StatusIs(absl::StatusCode::kDataLoss));
  Sector zero{};
  EXPECT_THAT(DecodeSnapshotHeader(zero), StatusIs(absl::StatusCode::kNotFound));

  SnapshotRecord rec;
  rec.kind = SnapshotRecordKind::kLive;
  rec.slot = 42;
  rec.sequence = 77;
  rec.parent = BlockKey{8, 9};
  EncodeChunkHeader(Header(), rec.chunk_header_bytes.data());
  std::array<std::byte, kSnapshotRecordBytes> bytes;
  EncodeSnapshotRecord(rec, bytes.data());
  ASSERT_OK_AND_ASSIGN(SnapshotRecord r2, DecodeSnapshotRecord(bytes.data()));
  EXPECT_EQ(r2.slot, 42u);
  EXPECT_EQ(r2.sequence, 77u);
  EXPECT_EQ(r2.parent, (BlockKey{8, 9}));
  EXPECT_EQ(r2.chunk_header_bytes, rec.chunk_header_bytes);
  bytes[4] = std::byte{9};
  EXPECT_THAT(DecodeSnapshotRecord(bytes.data()), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(NvmeStagingPool, AllocatesFirstFitAndCoalesces) {
  ASSERT_OK_AND_ASSIGN(auto pool, StagingPool::Create(16 * 4096));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->base()) % 4096, 0u);
  std::optional<uint64_t> a = pool->Allocate(4 * 4096);
  std::optional<uint64_t> b = pool->Allocate(8 * 4096);
  std::optional<uint64_t> c = pool->Allocate(4 * 4096);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, 0u);
  EXPECT_EQ(*b, 4u * 4096);
  EXPECT_EQ(*c, 12u * 4096);
  EXPECT_FALSE(pool->Allocate(4096).has_value());
  EXPECT_EQ(pool->free_bytes(), 0u);
  pool->Free(*a, 4 * 4096);
  pool->Free(*c, 4 * 4096);
  EXPECT_FALSE(pool->CanAllocate(5 * 4096));  // two separate 4-page holes
  pool->Free(*b, 8 * 4096);                   // joins both neighbours
  EXPECT_TRUE(pool->CanAllocate(16 * 4096));
  EXPECT_EQ(pool->free_bytes(), 16u * 4096);
  EXPECT_THAT(StagingPool::Create(1000), StatusIs(absl::StatusCode::kInvalidArgument));
}

// The pool starts on a huge-page boundary (so transparent huge pages can back
// it from its first byte), whatever its size, and every byte is writable.
TEST(NvmeStagingPool, StartsOnAHugePageBoundary) {
  for (uint64_t bytes : {uint64_t{4096}, uint64_t{3} << 20, (uint64_t{4} << 20) + 8192}) {
    ASSERT_OK_AND_ASSIGN(auto pool, StagingPool::Create(bytes));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->base()) % StagingPool::kHugePageBytes, 0u) << bytes;
    EXPECT_EQ(pool->size(), bytes);
    EXPECT_EQ(pool->free_bytes(), bytes);
    std::memset(pool->base(), 0xa5, bytes);
    EXPECT_EQ(pool->base()[bytes - 1], std::byte{0xa5});
    EXPECT_FALSE(pool->CanAllocate(bytes + 4096));  // the rounding is not handed out
  }
}

}  // namespace
}  // namespace kvtier::nvme
