#include "src/tiers/nvme/nvme_format.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "src/common/bytes.h"
#include "src/core/hash.h"

namespace kvtier::nvme {
namespace {

// "KVTNVMEV", "KVTSLOT1", "KVTSNAP1", "KVTREGN1" as little-endian u64.
constexpr uint64_t kSuperblockMagic = 0x56454D564E54564Bull;
constexpr uint64_t kRegionMagic = 0x314E474552545654ull;
constexpr uint64_t kSlotMagic = 0x31544F4C5354564Bull;
constexpr uint64_t kSnapshotMagic = 0x3150414E5354564Bull;

// Superblock fields.
constexpr size_t kSuperClassTable = 64;
constexpr size_t kSuperClassEntry = 24;
// Region fields (class count 0): they share the offsets of the class table.
constexpr size_t kSuperRegionBytes = 64;
constexpr size_t kSuperRegionCount = 72;
constexpr size_t kSuperRegionsOffset = 80;
constexpr size_t kSuperLadder = 88;
// The slot ladder's rule (SlotLadder); a volume records the rule it was made
// with so that a later change of the rule cannot misread it.
constexpr uint32_t kLadderRule = 1;
constexpr uint64_t kLadderFirstStep = kSectorBytes;
constexpr size_t kTrailerOffset = kSectorBytes - 8;  // xxh3-64 of [0, 4088)

// Slot record fields.
constexpr size_t kSlotRecordBody = 120;  // checksum at [120, 128)

uint64_t SectorChecksum(const std::byte* p) { return Xxh3_64({p, kTrailerOffset}); }

bool AllZero(absl::Span<const std::byte> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; });
}

}  // namespace

uint32_t VolumeGeometry::ClassOf(uint32_t slot) const {
  uint32_t c = 0;
  while (c + 1 < classes.size() && slot >= classes[c + 1].first_slot) ++c;
  return c;
}

uint64_t VolumeGeometry::SlotOffset(uint32_t slot) const {
  const SlotClassGeometry& g = classes[ClassOf(slot)];
  return g.region_offset + static_cast<uint64_t>(slot - g.first_slot) * g.slot_bytes;
}

bool operator==(const VolumeGeometry& a, const VolumeGeometry& b) {
  if (a.classes.size() != b.classes.size() || a.snapshot_offset != b.snapshot_offset ||
      a.snapshot_bytes != b.snapshot_bytes || a.volume_bytes != b.volume_bytes ||
      a.total_slots != b.total_slots || a.region_bytes != b.region_bytes ||
      a.region_count != b.region_count || a.regions_offset != b.regions_offset ||
      a.max_region_slots != b.max_region_slots) {
    return false;
  }
  for (size_t i = 0; i < a.classes.size(); ++i) {
    const SlotClassGeometry& x = a.classes[i];
    const SlotClassGeometry& y = b.classes[i];
    if (x.slot_bytes != y.slot_bytes || x.slot_count != y.slot_count ||
        x.region_offset != y.region_offset || x.first_slot != y.first_slot) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<VolumeGeometry> MakeGeometry(
    absl::Span<const std::pair<uint64_t, uint64_t>> data_bytes_and_counts) {
  if (data_bytes_and_counts.empty() || data_bytes_and_counts.size() > kMaxSlotClasses) {
    return absl::InvalidArgumentError(absl::StrCat("slot_classes: ", data_bytes_and_counts.size(),
                                                   " classes; 1 to ", kMaxSlotClasses,
                                                   " are supported"));
  }
  VolumeGeometry g;
  uint64_t total_slots = 0;
  for (size_t i = 0; i < data_bytes_and_counts.size(); ++i) {
    auto [data_bytes, count] = data_bytes_and_counts[i];
    if (data_bytes == 0 || data_bytes % kSectorBytes != 0) {
      return absl::InvalidArgumentError(absl::StrCat("slot_classes[", i, "]: data area of ",
                                                     data_bytes,
                                                     " bytes is not a positive multiple of 4096"));
    }
    if (i > 0 && data_bytes <= data_bytes_and_counts[i - 1].first) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot_classes[", i, "]: classes must be in ascending chunk size"));
    }
    if (count == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot_classes[", i, "]: capacity holds no slot"));
    }
    SlotClassGeometry c;
    c.slot_bytes = data_bytes + kSectorBytes;
    c.slot_count = count;
    c.first_slot = static_cast<uint32_t>(total_slots);
    total_slots += count;
    if (total_slots >= std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError("slot_classes: more than 2^32 - 1 slots in all");
    }
    g.classes.push_back(c);
  }
  g.total_slots = static_cast<uint32_t>(total_slots);
  g.snapshot_offset = kSectorBytes;
  g.snapshot_bytes = kSectorBytes + AlignUp(total_slots * kSnapshotRecordBytes, kSectorBytes);
  uint64_t offset = g.snapshot_offset + g.snapshot_bytes;
  for (SlotClassGeometry& c : g.classes) {
    c.region_offset = offset;
    offset += c.slot_bytes * c.slot_count;
  }
  g.volume_bytes = offset;
  return g;
}

namespace {

// Ladder steps up to `limit` data bytes: every 4 KiB up to 36 KiB, then
// eight steps per doubling, each one sector above 2^e * m / 8 (m = 9..16),
// so that the common chunk of a power-of-two payload plus its 64-byte header
// fits a step with one sector to spare.
std::vector<uint64_t> LadderUpTo(uint64_t limit) {
  std::vector<uint64_t> steps;
  for (uint64_t d = kLadderFirstStep; d <= 9 * kSectorBytes && d <= limit; d += kSectorBytes) {
    steps.push_back(d);
  }
  for (uint64_t base = 32 * 1024; base <= limit; base *= 2) {
    for (uint64_t m = 9; m <= 16; ++m) {
      const uint64_t d = base * m / 8 + kSectorBytes;
      if (d > limit) return steps;
      steps.push_back(d);
    }
  }
  return steps;
}

}  // namespace

std::vector<uint64_t> SlotLadder(uint64_t region_bytes) {
  return LadderUpTo(RegionMaxDataBytes(region_bytes));
}

uint64_t RegionMaxDataBytes(uint64_t region_bytes) {
  if (region_bytes < 2 * kSectorBytes) return 0;
  const uint64_t slot_limit = (region_bytes - kSectorBytes) / 4;
  if (slot_limit < kSectorBytes + kLadderFirstStep) return 0;
  std::vector<uint64_t> steps = LadderUpTo(slot_limit - kSectorBytes);
  return steps.empty() ? 0 : steps.back();
}

absl::StatusOr<VolumeGeometry> MakeRegionGeometry(uint64_t capacity_bytes, uint64_t region_bytes) {
  if (region_bytes < kMinRegionBytes || region_bytes > kMaxRegionBytes ||
      region_bytes % kMinRegionBytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("region_bytes: ", region_bytes,
                                                   " must be a multiple of 1 MiB from ",
                                                   kMinRegionBytes, " to ", kMaxRegionBytes));
  }
  VolumeGeometry g;
  g.region_bytes = region_bytes;
  g.max_region_slots = (region_bytes - kSectorBytes) / (kLadderFirstStep + kSectorBytes);
  auto snapshot_bytes = [&g](uint64_t regions) {
    return kSectorBytes + AlignUp(regions * kSnapshotRegionEntryBytes, kSectorBytes) +
           AlignUp(regions * g.max_region_slots * kSnapshotRecordBytes, kSectorBytes);
  };
  const uint64_t per_region =
      region_bytes + kSnapshotRegionEntryBytes + g.max_region_slots * kSnapshotRecordBytes;
  uint64_t n =
      capacity_bytes > 2 * kSectorBytes ? (capacity_bytes - 2 * kSectorBytes) / per_region : 0;
  while (n > 0 && kSectorBytes + snapshot_bytes(n) + n * region_bytes > capacity_bytes) --n;
  if (n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity_bytes: ", capacity_bytes, " bytes holds no region of ", region_bytes,
                     " bytes beside the superblock and snapshot region"));
  }
  g.region_count = n;
  g.snapshot_offset = kSectorBytes;
  g.snapshot_bytes = snapshot_bytes(n);
  g.regions_offset = g.snapshot_offset + g.snapshot_bytes;
  g.volume_bytes = g.regions_offset + n * region_bytes;
  // On-disk slot ids are commit-sector offsets in 4 KiB units.
  if (g.volume_bytes / kSectorBytes >= std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity_bytes: ", capacity_bytes, " is above the 16 TiB a volume can hold"));
  }
  return g;
}

void EncodeSuperblock(const Superblock& sb, absl::Span<std::byte> sector) {
  std::memset(sector.data(), 0, kSectorBytes);
  std::byte* p = sector.data();
  const VolumeGeometry& g = sb.geometry;
  StoreLE<uint64_t>(p + 0, kSuperblockMagic);
  StoreLE<uint32_t>(p + 8, kVolumeFormatVersion);
  StoreLE<uint32_t>(p + 12, static_cast<uint32_t>(g.classes.size()));
  StoreLE<uint64_t>(p + 16, sb.generation);
  StoreLE<uint64_t>(p + 24, g.volume_bytes);
  StoreLE<uint64_t>(p + 32, g.snapshot_offset);
  StoreLE<uint64_t>(p + 40, g.snapshot_bytes);
  if (g.regions()) {
    StoreLE<uint64_t>(p + kSuperRegionBytes, g.region_bytes);
    StoreLE<uint64_t>(p + kSuperRegionCount, g.region_count);
    StoreLE<uint64_t>(p + kSuperRegionsOffset, g.regions_offset);
    StoreLE<uint32_t>(p + kSuperLadder, kLadderRule);
  }
  for (size_t i = 0; i < g.classes.size(); ++i) {
    std::byte* e = p + kSuperClassTable + i * kSuperClassEntry;
    StoreLE<uint64_t>(e + 0, g.classes[i].slot_bytes);
    StoreLE<uint64_t>(e + 8, g.classes[i].slot_count);
    StoreLE<uint64_t>(e + 16, g.classes[i].region_offset);
  }
  StoreLE<uint64_t>(p + kTrailerOffset, SectorChecksum(p));
}

absl::StatusOr<Superblock> DecodeSuperblock(absl::Span<const std::byte> sector) {
  if (sector.size() < kSectorBytes) {
    return absl::DataLossError(absl::StrCat("superblock: ", sector.size(), " bytes, need 4096"));
  }
  const std::byte* p = sector.data();
  uint64_t magic = LoadLE<uint64_t>(p);
  if (magic != kSuperblockMagic) {
    return absl::DataLossError(absl::StrFormat("superblock: bad magic 0x%016x", magic));
  }
  uint64_t stored = LoadLE<uint64_t>(p + kTrailerOffset);
  if (stored != SectorChecksum(p)) return absl::DataLossError("superblock: checksum mismatch");
  uint32_t version = LoadLE<uint32_t>(p + 8);
  if (version != kVolumeFormatVersion) {
    return absl::DataLossError(absl::StrCat("superblock: unsupported format version ", version,
                                            " (this build reads ", kVolumeFormatVersion, ")"));
  }
  uint32_t count = LoadLE<uint32_t>(p + 12);
  if (count == 0) {
    const uint32_t ladder = LoadLE<uint32_t>(p + kSuperLadder);
    if (ladder != kLadderRule) {
      return absl::DataLossError(absl::StrCat("superblock: slot ladder rule ", ladder,
                                              " (this build knows ", kLadderRule, ")"));
    }
    const uint64_t region_bytes = LoadLE<uint64_t>(p + kSuperRegionBytes);
    const uint64_t volume_bytes = LoadLE<uint64_t>(p + 24);
    absl::StatusOr<VolumeGeometry> g = MakeRegionGeometry(volume_bytes, region_bytes);
    if (!g.ok()) {
      return absl::DataLossError(absl::StrCat("superblock: bad regions: ", g.status().message()));
    }
    bool same = g->volume_bytes == volume_bytes && LoadLE<uint64_t>(p + 32) == g->snapshot_offset &&
                LoadLE<uint64_t>(p + 40) == g->snapshot_bytes &&
                LoadLE<uint64_t>(p + kSuperRegionCount) == g->region_count &&
                LoadLE<uint64_t>(p + kSuperRegionsOffset) == g->regions_offset;
    if (!same) return absl::DataLossError("superblock: stored offsets do not match its regions");
    return Superblock{LoadLE<uint64_t>(p + 16), *std::move(g)};
  }
  if (count > kMaxSlotClasses) {
    return absl::DataLossError(absl::StrCat("superblock: class count ", count));
  }
  std::vector<std::pair<uint64_t, uint64_t>> classes;
  for (uint32_t i = 0; i < count; ++i) {
    const std::byte* e = p + kSuperClassTable + i * kSuperClassEntry;
    uint64_t slot_bytes = LoadLE<uint64_t>(e);
    if (slot_bytes <= kSectorBytes) {
      return absl::DataLossError(absl::StrCat("superblock: class ", i, " slot size ", slot_bytes));
    }
    classes.emplace_back(slot_bytes - kSectorBytes, LoadLE<uint64_t>(e + 8));
  }
  absl::StatusOr<VolumeGeometry> g = MakeGeometry(classes);
  if (!g.ok()) {
    return absl::DataLossError(absl::StrCat("superblock: bad class table: ", g.status().message()));
  }
  // The stored offsets must be the ones this build computes.
  bool same = LoadLE<uint64_t>(p + 24) == g->volume_bytes &&
              LoadLE<uint64_t>(p + 32) == g->snapshot_offset &&
              LoadLE<uint64_t>(p + 40) == g->snapshot_bytes;
  for (uint32_t i = 0; same && i < count; ++i) {
    same = LoadLE<uint64_t>(p + kSuperClassTable + i * kSuperClassEntry + 16) ==
           g->classes[i].region_offset;
  }
  if (!same) return absl::DataLossError("superblock: stored offsets do not match its class table");
  return Superblock{LoadLE<uint64_t>(p + 16), *std::move(g)};
}

uint64_t GeometryHash(const Superblock& superblock) {
  std::array<std::byte, kSectorBytes> sector;
  EncodeSuperblock(superblock, absl::MakeSpan(sector));
  return Xxh3_64(sector);
}

void EncodeRegionHeader(const RegionHeader& h, absl::Span<std::byte> sector) {
  std::memset(sector.data(), 0, kSectorBytes);
  std::byte* p = sector.data();
  StoreLE<uint64_t>(p + 0, kRegionMagic);
  StoreLE<uint32_t>(p + 8, kVolumeFormatVersion);
  StoreLE<uint32_t>(p + 12, h.region);
  StoreLE<uint64_t>(p + 16, h.generation);
  StoreLE<uint64_t>(p + 24, h.slot_data_bytes);
  StoreLE<uint64_t>(p + 32, h.slot_count);
  StoreLE<uint64_t>(p + kTrailerOffset, SectorChecksum(p));
}

RegionHeaderKind DecodeRegionHeader(absl::Span<const std::byte> sector, uint64_t generation,
                                    const VolumeGeometry& geometry, uint32_t region,
                                    RegionHeader* out, std::string* problem) {
  const std::byte* p = sector.data();
  auto damaged = [problem](std::string why) {
    *problem = std::move(why);
    return RegionHeaderKind::kDamaged;
  };
  if (sector.size() < kSectorBytes) return damaged("region header is short");
  if (AllZero(sector.first(kSectorBytes))) return RegionHeaderKind::kUnassigned;
  if (LoadLE<uint64_t>(p) != kRegionMagic) return damaged("region header has a bad magic");
  if (LoadLE<uint64_t>(p + kTrailerOffset) != SectorChecksum(p)) {
    return damaged("region header checksum mismatch");
  }
  if (LoadLE<uint32_t>(p + 8) != kVolumeFormatVersion) {
    return damaged(absl::StrCat("region header version ", LoadLE<uint32_t>(p + 8)));
  }
  RegionHeader h;
  h.region = LoadLE<uint32_t>(p + 12);
  h.generation = LoadLE<uint64_t>(p + 16);
  h.slot_data_bytes = LoadLE<uint64_t>(p + 24);
  h.slot_count = LoadLE<uint64_t>(p + 32);
  if (h.generation != generation) return RegionHeaderKind::kUnassigned;
  if (h.region != region) {
    return damaged(absl::StrCat("region header names region ", h.region, " but sits in ", region));
  }
  std::vector<uint64_t> ladder = SlotLadder(geometry.region_bytes);
  if (!std::binary_search(ladder.begin(), ladder.end(), h.slot_data_bytes) ||
      h.slot_count != (geometry.region_bytes - kSectorBytes) / (h.slot_data_bytes + kSectorBytes)) {
    return damaged(absl::StrCat("region header slot size ", h.slot_data_bytes, " x ", h.slot_count,
                                " is not a slot size of this volume"));
  }
  *out = h;
  return RegionHeaderKind::kAssigned;
}

void EncodeSlotRecord(const SlotRecord& r, absl::Span<std::byte> sector) {
  std::memset(sector.data(), 0, kSectorBytes);
  std::byte* p = sector.data();
  StoreLE<uint64_t>(p + 0, kSlotMagic);
  StoreLE<uint32_t>(p + 8, kVolumeFormatVersion);
  StoreLE<uint32_t>(p + 12, static_cast<uint32_t>(r.kind));
  StoreLE<uint64_t>(p + 16, r.generation);
  StoreLE<uint64_t>(p + 24, r.sequence);
  StoreLE<uint32_t>(p + 32, r.slot);
  if (r.kind == SlotRecordKind::kCommitted) {
    StoreLE<uint32_t>(p + 36, static_cast<uint32_t>(kChunkHeaderBytes + r.chunk.payload_length));
    StoreLE<uint64_t>(p + 40, r.parent.hi);
    StoreLE<uint64_t>(p + 48, r.parent.lo);
    std::memcpy(p + 56, r.chunk_header_bytes.data(), kChunkHeaderBytes);
  }
  StoreLE<uint64_t>(p + kSlotRecordBody, Xxh3_64({p, kSlotRecordBody}));
}

SlotRecord DecodeSlotRecord(absl::Span<const std::byte> sector, uint64_t generation,
                            uint32_t slot) {
  SlotRecord r;
  const std::byte* p = sector.data();
  auto damaged = [&r](std::string problem) {
    r.kind = SlotRecordKind::kDamaged;
    r.problem = std::move(problem);
    return r;
  };
  if (sector.size() < kSlotRecordBody + 8) return damaged("commit sector is short");
  if (AllZero(sector.first(kSlotRecordBody + 8))) return r;  // kEmpty
  if (LoadLE<uint64_t>(p) != kSlotMagic) return damaged("commit record has a bad magic");
  if (LoadLE<uint64_t>(p + kSlotRecordBody) != Xxh3_64({p, kSlotRecordBody})) {
    return damaged("commit record checksum mismatch");
  }
  if (LoadLE<uint32_t>(p + 8) != kVolumeFormatVersion) {
    return damaged(absl::StrCat("commit record version ", LoadLE<uint32_t>(p + 8)));
  }
  r.generation = LoadLE<uint64_t>(p + 16);
  r.sequence = LoadLE<uint64_t>(p + 24);
  r.slot = LoadLE<uint32_t>(p + 32);
  if (r.generation != generation) {
    r.kind = SlotRecordKind::kStale;
    return r;
  }
  if (r.slot != slot) {
    return damaged(absl::StrCat("commit record names slot ", r.slot, " but sits in slot ", slot));
  }
  uint32_t kind = LoadLE<uint32_t>(p + 12);
  if (kind == static_cast<uint32_t>(SlotRecordKind::kTombstone)) {
    r.kind = SlotRecordKind::kTombstone;
    return r;
  }
  if (kind != static_cast<uint32_t>(SlotRecordKind::kCommitted)) {
    return damaged(absl::StrCat("commit record state ", kind));
  }
  std::memcpy(r.chunk_header_bytes.data(), p + 56, kChunkHeaderBytes);
  absl::StatusOr<ChunkHeader> h = DecodeChunkHeader(r.chunk_header_bytes);
  if (!h.ok()) return damaged(std::string(h.status().message()));
  r.chunk = *h;
  uint32_t encoded = LoadLE<uint32_t>(p + 36);
  if (encoded != kChunkHeaderBytes + h->payload_length) {
    return damaged(absl::StrCat("commit record length ", encoded, " disagrees with its header"));
  }
  r.parent.hi = LoadLE<uint64_t>(p + 40);
  r.parent.lo = LoadLE<uint64_t>(p + 48);
  r.kind = SlotRecordKind::kCommitted;
  return r;
}

void EncodeSnapshotHeader(const SnapshotHeader& h, absl::Span<std::byte> sector) {
  std::memset(sector.data(), 0, kSectorBytes);
  std::byte* p = sector.data();
  StoreLE<uint64_t>(p + 0, kSnapshotMagic);
  StoreLE<uint32_t>(p + 8, kVolumeFormatVersion);
  StoreLE<uint64_t>(p + 16, h.generation);
  StoreLE<uint64_t>(p + 24, h.volume_bytes);
  StoreLE<uint64_t>(p + 32, h.geometry_hash);
  StoreLE<uint64_t>(p + 40, h.next_sequence);
  StoreLE<uint64_t>(p + 48, h.record_count);
  StoreLE<uint64_t>(p + 56, h.records_checksum);
  StoreLE<uint64_t>(p + 64, h.region_count);
  StoreLE<uint64_t>(p + kTrailerOffset, SectorChecksum(p));
}

absl::StatusOr<SnapshotHeader> DecodeSnapshotHeader(absl::Span<const std::byte> sector) {
  if (sector.size() < kSectorBytes) return absl::DataLossError("snapshot header is short");
  const std::byte* p = sector.data();
  if (AllZero(sector.first(kSectorBytes))) return absl::NotFoundError("no snapshot");
  if (LoadLE<uint64_t>(p) != kSnapshotMagic) {
    return absl::DataLossError("snapshot header has a bad magic");
  }
  if (LoadLE<uint64_t>(p + kTrailerOffset) != SectorChecksum(p)) {
    return absl::DataLossError("snapshot header checksum mismatch");
  }
  if (LoadLE<uint32_t>(p + 8) != kVolumeFormatVersion) {
    return absl::DataLossError(
        absl::StrCat("snapshot format version ", LoadLE<uint32_t>(p + 8), " is not supported"));
  }
  SnapshotHeader h;
  h.generation = LoadLE<uint64_t>(p + 16);
  h.volume_bytes = LoadLE<uint64_t>(p + 24);
  h.geometry_hash = LoadLE<uint64_t>(p + 32);
  h.next_sequence = LoadLE<uint64_t>(p + 40);
  h.record_count = LoadLE<uint64_t>(p + 48);
  h.records_checksum = LoadLE<uint64_t>(p + 56);
  h.region_count = LoadLE<uint64_t>(p + 64);
  return h;
}

void EncodeSnapshotRecord(const SnapshotRecord& r, std::byte* dst) {
  std::memset(dst, 0, kSnapshotRecordBytes);
  StoreLE<uint32_t>(dst + 0, r.slot);
  StoreLE<uint32_t>(dst + 4, static_cast<uint32_t>(r.kind));
  StoreLE<uint64_t>(dst + 8, r.sequence);
  StoreLE<uint64_t>(dst + 16, r.parent.hi);
  StoreLE<uint64_t>(dst + 24, r.parent.lo);
  std::memcpy(dst + 32, r.chunk_header_bytes.data(), kChunkHeaderBytes);
}

absl::StatusOr<SnapshotRecord> DecodeSnapshotRecord(const std::byte* src) {
  SnapshotRecord r;
  r.slot = LoadLE<uint32_t>(src + 0);
  uint32_t kind = LoadLE<uint32_t>(src + 4);
  if (kind != static_cast<uint32_t>(SnapshotRecordKind::kLive) &&
      kind != static_cast<uint32_t>(SnapshotRecordKind::kDirtyFree)) {
    return absl::DataLossError(absl::StrCat("snapshot record kind ", kind));
  }
  r.kind = static_cast<SnapshotRecordKind>(kind);
  r.sequence = LoadLE<uint64_t>(src + 8);
  r.parent.hi = LoadLE<uint64_t>(src + 16);
  r.parent.lo = LoadLE<uint64_t>(src + 24);
  std::memcpy(r.chunk_header_bytes.data(), src + 32, kChunkHeaderBytes);
  return r;
}

}  // namespace kvtier::nvme
