// On-disk format of the NVMe tier (T2): the volume superblock, the per-slot
// commit record and the index snapshot. docs/nvme-format.md describes the
// same bytes, the commit protocol and recovery.
//
// A volume is one file (in the configured folder) or one block device:
//
//   [superblock: 4 KiB][snapshot region][class 0 slots][class 1 slots]...
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
inline constexpr uint32_t kVolumeFormatVersion = 1;
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
  std::vector<SlotClassGeometry> classes;
  uint64_t snapshot_offset = 0;
  uint64_t snapshot_bytes = 0;
  uint64_t volume_bytes = 0;
  uint32_t total_slots = 0;

  // Class of a global slot id. REQUIRES: slot < total_slots.
  uint32_t ClassOf(uint32_t slot) const;
  // Offset of the slot's commit sector; its data area follows it.
  uint64_t SlotOffset(uint32_t slot) const;

  friend bool operator==(const VolumeGeometry& a, const VolumeGeometry& b);
};

// Lays out a volume for classes given as (data area bytes, slot count) in
// ascending data size. InvalidArgument when a class is empty, unaligned or
// out of order, or the volume needs more than 2^32 - 1 slots.
absl::StatusOr<VolumeGeometry> MakeGeometry(
    absl::Span<const std::pair<uint64_t, uint64_t>> data_bytes_and_counts);

struct Superblock {
  uint64_t generation = 0;  // random at format; slot records of another
                            // generation are ignored
  VolumeGeometry geometry;
};

// Writes the 4 KiB superblock into `sector`. REQUIRES: sector.size() == 4096.
void EncodeSuperblock(const Superblock& superblock, absl::Span<std::byte> sector);
// DataLoss naming the field when the sector is not an intact superblock.
absl::StatusOr<Superblock> DecodeSuperblock(absl::Span<const std::byte> sector);

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
  uint64_t records_checksum = 0;  // xxh3-64 of record_count * 96 record bytes
};

enum class SnapshotRecordKind : uint32_t {
  kLive = 1,       // a committed chunk
  kDirtyFree = 2,  // free slot whose commit sector may still hold a record
};

struct SnapshotRecord {
  SnapshotRecordKind kind = SnapshotRecordKind::kLive;
  uint32_t slot = 0;
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
