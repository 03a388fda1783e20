#include "src/tiers/nvme/nvme_format.h"

#include <array>
#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
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

}  // namespace
}  // namespace kvtier::nvme
