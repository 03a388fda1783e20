// On-disk format of the NVMe tier (T2): the volume superblock, the per-slot
// commit record and the index snapshot. docs/nvme-format.md describes the
// same bytes, the commit protocol and recovery.
//
// A volume is one file (in the configured folder) or one block device, laid
// out in one of two ways, fixed at format:
//
//   explicit classes:  [superblock: 4 KiB][snapshot region][class 0 slots]...
//   on-demand regions: [superblock: 4 KiB][snapshot region][region 0][region 1]...
//
// A region is [region header: 4 KiB][slots of one size]; its slot size is
// chosen (from SlotLadder) when a save first needs it, and the header is
// durable before any of its slots is written.
//
// A slot is [commit sector: 4 KiB][data area: the encoded chunk (64-byte
// chunk header + payload), zero-padded to 4 KiB]. All integers are
// little-endian; every structure ends in an xxh3-64 of the bytes before it.
//
// Thread-safety: pure functions and value types.
#ifndef KVTIER_SRC_TIERS_NVME_NVME_FORMAT_H_
#define KVTIER_SRC_TIERS_NVME_NVME_FORMAT_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvtier/keys.h"
#include "src/core/chunk_format.h"

namespace kvtier::nvme {

// Unit of alignment and of the superblock, commit record and snapshot header.
inline constexpr uint64_t kSectorBytes = 4096;
inline constexpr uint32_t kMaxSlotClasses = 32;
// Version 2 added on-demand regions and region-relative slot ids; version 1
// volumes are refused (see docs/nvme-format.md).
inline constexpr uint32_t kVolumeFormatVersion = 2;
// Bytes of one snapshot region-table entry (the region's slot data bytes).
inline constexpr uint64_t kSnapshotRegionEntryBytes = 8;
// Region sizes accepted for on-demand regions.
inline constexpr uint64_t kMinRegionBytes = 1ull << 20;
inline constexpr uint64_t kMaxRegionBytes = 1ull << 30;
// Bytes of one snapshot record.
inline constexpr uint64_t kSnapshotRecordBytes = 96;

struct SlotClassGeometry {
  uint64_t slot_bytes = 0;  // commit sector + data area
  uint64_t slot_count = 0;
  uint64_t region_offset = 0;  // bytes from the start of the volume
  uint32_t first_slot = 0;     // global id of the class's first slot

  // Largest encoded chunk a slot holds.
  uint64_t data_bytes() const { return slot_bytes - kSectorBytes; }
};

struct VolumeGeometry {
  // Explicit classes; empty for a volume of on-demand regions.
  std::vector<SlotClassGeometry> classes;
  uint64_t snapshot_offset = 0;
  uint64_t snapshot_bytes = 0;
  uint64_t volume_bytes = 0;
  uint32_t total_slots = 0;  // explicit classes: slots in all classes
  // On-demand regions (region_bytes == 0 for explicit classes).
  uint64_t region_bytes = 0;
  uint64_t region_count = 0;
  uint64_t regions_offset = 0;    // offset of region 0
  uint64_t max_region_slots = 0;  // slots of the smallest ladder size in a region

  bool regions() const { return region_bytes != 0; }
  uint64_t RegionOffset(uint64_t region) const { return regions_offset + region * region_bytes; }
  // Class of a global slot id. REQUIRES: explicit classes, slot < total_slots.
  uint32_t ClassOf(uint32_t slot) const;
  // Offset of the slot's commit sector; its data area follows it.
  // REQUIRES: explicit classes.
  uint64_t SlotOffset(uint32_t slot) const;

  friend bool operator==(const VolumeGeometry& a, const VolumeGeometry& b);
};

// Lays out a volume for classes given as (data area bytes, slot count) in
// ascending data size. InvalidArgument when a class is empty, unaligned or
// out of order, or the volume needs more than 2^32 - 1 slots.
absl::StatusOr<VolumeGeometry> MakeGeometry(
    absl::Span<const std::pair<uint64_t, uint64_t>> data_bytes_and_counts);

// Slot data-area sizes of on-demand regions, ascending, 4 KiB-aligned: every
// 4 KiB up to 36 KiB, then 2^e * m / 8 + 4 KiB for m = 9..16 (each step at
// most 12.5% above the one before, and a power-of-two payload plus its
// chunk header fits the step one sector above it), up to the largest that
// RegionMaxDataBytes allows.
std::vector<uint64_t> SlotLadder(uint64_t region_bytes);
// Largest data area an on-demand region of `region_bytes` offers: the
// largest ladder step whose slot (data + 4 KiB commit sector) fits four times
// into the region after its 4 KiB header.
uint64_t RegionMaxDataBytes(uint64_t region_bytes);
// Lays out a volume of on-demand regions in at most `capacity_bytes`.
// InvalidArgument (naming region_bytes or capacity_bytes) when region_bytes
// is not a multiple of 1 MiB in [1 MiB, 1 GiB], or the capacity holds no
// region, or a slot would need an id of 32 bits or more.
absl::StatusOr<VolumeGeometry> MakeRegionGeometry(uint64_t capacity_bytes, uint64_t region_bytes);

struct Superblock {
  uint64_t generation = 0;  // random at format; slot records of another
                            // generation are ignored
  VolumeGeometry geometry;
};

// Writes the 4 KiB superblock into `sector`. REQUIRES: sector.size() == 4096.
void EncodeSuperblock(const Superblock& superblock, absl::Span<std::byte> sector);
// DataLoss naming the field when the sector is not an intact superblock.
absl::StatusOr<Superblock> DecodeSuperblock(absl::Span<const std::byte> sector);

// The 4 KiB header at the start of an on-demand region.
struct RegionHeader {
  uint64_t generation = 0;
  uint32_t region = 0;           // its own index: catches misdirected writes
  uint64_t slot_data_bytes = 0;  // a SlotLadder step
  uint64_t slot_count = 0;
};

enum class RegionHeaderKind : uint8_t {
  kUnassigned = 0,  // zero, or from an earlier format of the volume
  kAssigned = 1,
  kDamaged = 2,
};

void EncodeRegionHeader(const RegionHeader& header, absl::Span<std::byte> sector);
// Classifies the first sector of region `region` of `geometry` in a volume of
// `generation`. For kDamaged, *problem says why.
RegionHeaderKind DecodeRegionHeader(absl::Span<const std::byte> sector, uint64_t generation,
                                    const VolumeGeometry& geometry, uint32_t region,
                                    RegionHeader* out, std::string* problem);

// What a commit sector says about its slot.
enum class SlotRecordKind : uint8_t {
  kEmpty = 0,      // never written (all zero)
  kCommitted = 1,  // holds a durable chunk
  kTombstone = 2,  // freed; its old chunk must not come back
  kStale = 3,      // intact but from an earlier format of the volume
  kDamaged = 4,    // checksum, magic or field mismatch
};

struct SlotRecord {
  SlotRecordKind kind = SlotRecordKind::kEmpty;
  uint64_t generation = 0;
  uint64_t sequence = 0;  // global write order; the larger wins on duplicates
  // The slot's on-disk id: its index for explicit classes, its commit
  // sector's offset in 4 KiB units for on-demand regions.
  uint32_t slot = 0;
  BlockKey parent;
  ChunkHeader chunk;  // decoded copy of the chunk header in the data area
  std::array<std::byte, kChunkHeaderBytes> chunk_header_bytes{};
  std::string problem;  // why a record is kDamaged
};

// Writes a commit or tombstone record into `sector` (4096 bytes; bytes
// after the record are zeroed). For kTombstone only generation, sequence and
// slot are used.
void EncodeSlotRecord(const SlotRecord& record, absl::Span<std::byte> sector);
// Classifies a commit sector of `slot` in a volume of `generation`.
SlotRecord DecodeSlotRecord(absl::Span<const std::byte> sector, uint64_t generation, uint32_t slot);

struct SnapshotHeader {
  uint64_t generation = 0;
  uint64_t volume_bytes = 0;
  uint64_t geometry_hash = 0;  // GeometryHash of the superblock it belongs to
  uint64_t next_sequence = 0;
  uint64_t record_count = 0;
  // xxh3-64 of the region table (padded to 4 KiB; none for explicit classes)
  // followed by record_count * 96 record bytes.
  uint64_t records_checksum = 0;
  uint64_t region_count = 0;  // entries in the region table
};

enum class SnapshotRecordKind : uint32_t {
  kLive = 1,       // a committed chunk
  kDirtyFree = 2,  // free slot whose commit sector may still hold a record
};

struct SnapshotRecord {
  SnapshotRecordKind kind = SnapshotRecordKind::kLive;
  uint32_t slot = 0;  // on-disk slot id, as in SlotRecord::slot
  uint64_t sequence = 0;
  BlockKey parent;
  std::array<std::byte, kChunkHeaderBytes> chunk_header_bytes{};
};

// xxh3-64 of the encoded superblock: binds a snapshot to one volume layout.
uint64_t GeometryHash(const Superblock& superblock);

void EncodeSnapshotHeader(const SnapshotHeader& header, absl::Span<std::byte> sector);
// NotFound when the sector is zero (no snapshot); DataLoss when damaged.
absl::StatusOr<SnapshotHeader> DecodeSnapshotHeader(absl::Span<const std::byte> sector);

// 96 bytes each.
void EncodeSnapshotRecord(const SnapshotRecord& record, std::byte* dst);
absl::StatusOr<SnapshotRecord> DecodeSnapshotRecord(const std::byte* src);

}  // namespace kvtier::nvme

#endif  // KVTIER_SRC_TIERS_NVME_NVME_FORMAT_H_
