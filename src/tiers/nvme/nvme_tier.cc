#include "src/tiers/nvme/nvme_tier.h"

#include <errno.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "src/common/bytes.h"
#include "src/common/status_macros.h"
#include "src/core/hash.h"

namespace kvtier {

using nvme::kSectorBytes;

namespace {

constexpr uint64_t kMaxChunkBytes = 1ull << 30;
constexpr uint64_t kMaxInflightBytes = 1ull << 30;
constexpr uint32_t kMaxQueueDepth = 4096;

// Completion tags that are not operations (operations are tagged with their
// address, which is never this small).
constexpr uint64_t kFlushTag = 1;
// Recovery scan: slots up to this size are read in runs of about
// kScanRunBytes; at most kScanBufferBytes are in flight.
constexpr uint64_t kScanRunSlotBytes = 16 << 10;
constexpr uint64_t kScanRunBytes = 1 << 20;
constexpr uint64_t kScanBufferBytes = 16 << 20;
constexpr uint64_t kWakeTag = 2;
// Leftover copies one slot may hold (see NvmeTier::leftovers_) before it is
// kept out of use: only saves into it that keep failing add more.
constexpr size_t kMaxLeftoverKeysPerSlot = 8;
// region_class_ values that are not a class.
constexpr int32_t kRegionFree = -1;
constexpr int32_t kRegionDamaged = -2;
// Snapshot region-table entry of a region whose header was damaged.
constexpr uint64_t kSnapshotRegionDamaged = ~0ull;

uint64_t RandomGeneration() {
  std::random_device rd;
  uint64_t g = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
               static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  return g == 0 ? 1 : g;
}

std::string KeyText(uint64_t ns, const BlockKey& key) {
  return absl::StrFormat("%s (namespace %016x)", key.ToHex(), ns);
}

// Status for an io_uring completion with a negative result or short count.
absl::Status IoStatus(absl::string_view what, uint64_t bytes, uint64_t offset,
                      const std::string& path, int32_t result) {
  std::string context =
      absl::StrCat("nvme: ", what, " of ", bytes, " bytes at offset ", offset, " in ", path);
  if (result < 0) {
    absl::Status s = ErrnoToStatus(-result, context);
    // An I/O error on the device is retryable from the caller's view.
    if (s.code() == absl::StatusCode::kInternal) return absl::UnavailableError(s.message());
    return s;
  }
  return absl::UnavailableError(absl::StrCat(context, ": short transfer of ", result, " bytes"));
}

// Stable across evictions and reinsertions of the same chunk; never 0.
uint64_t KeyFingerprint(uint64_t ns, const BlockKey& key) {
  uint64_t f = key.lo ^ (key.hi * 0x9E3779B97F4A7C15ull) ^ (ns * 0xC2B2AE3D27D4EB4Full);
  return f == 0 ? 1 : f;
}

std::string ClassesText(const nvme::VolumeGeometry& g) {
  if (g.regions()) {
    return absl::StrCat("on-demand regions (", g.region_count, " regions of ", g.region_bytes,
                        " bytes, ", g.volume_bytes, " bytes in all)");
  }
  std::vector<std::string> parts;
  for (const auto& c : g.classes) {
    parts.push_back(absl::StrCat(c.slot_count, " x ", c.data_bytes(), " bytes"));
  }
  return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
}

}  // namespace

// One chunk-level operation in flight. Owned by the tier from acceptance
// until its Finish*; io_uring completions carry its address as their tag.
struct NvmeTier::Op {
  OpKind kind = OpKind::kPut;
  Stage stage = Stage::kData;
  uint32_t slot = 0;
  NsKey id;
  ChunkHeader header;  // of the chunk being written or read
  uint64_t sequence = 0;
  uint64_t slot_offset = 0;  // of the slot's commit sector (reads)
  // "process" saves: commit sector and data area in one write.
  bool combined = false;
  uint64_t encoded_bytes = 0;
  uint64_t aligned_bytes = 0;  // encoded_bytes rounded up to 4 KiB
  // Staging extent: for writes [commit sector][data area], for staged reads
  // the data area alone.
  bool staged = false;
  uint64_t staging_offset = 0;
  uint64_t staging_bytes = 0;
  uint64_t budget_bytes = 0;  // counted in inflight_bytes_
  std::byte* read_buf = nullptr;
  absl::Span<std::byte> out;
  int32_t read_result = 0;
  absl::Status status;
  bool io_error = false;
  uint64_t put_id = 0;
  std::vector<PutCallback> put_callbacks;
  GetCallback get_callback;
  PutCallback remove_callback;
};

absl::Status NvmeTierOptions::Validate() const {
  if (path.empty()) return absl::InvalidArgumentError("path: must name a folder or block device");
  if (durability != "process" && durability != "power") {
    return absl::InvalidArgumentError(
        absl::StrCat("durability: '", durability, "' is not \"process\" or \"power\""));
  }
  uint64_t largest_slot = 0;
  if (slot_classes.empty()) {
    if (capacity_bytes == 0) {
      return absl::InvalidArgumentError(
          "capacity_bytes: required (the volume's size) when slot_classes is empty");
    }
    KVTIER_ASSIGN_OR_RETURN(nvme::VolumeGeometry g,
                            nvme::MakeRegionGeometry(capacity_bytes, region_bytes));
    largest_slot = nvme::RegionMaxDataBytes(g.region_bytes) + kSectorBytes;
  } else if (capacity_bytes != 0) {
    return absl::InvalidArgumentError(
        "capacity_bytes: must be 0 with explicit slot_classes (each class gives its own "
        "capacity)");
  }
  if (slot_classes.size() > nvme::kMaxSlotClasses) {
    return absl::InvalidArgumentError(absl::StrCat("slot_classes: ", slot_classes.size(),
                                                   " classes; at most ", nvme::kMaxSlotClasses));
  }
  for (size_t i = 0; i < slot_classes.size(); ++i) {
    const NvmeSlotClass& c = slot_classes[i];
    if (c.max_chunk_bytes <= kChunkHeaderBytes || c.max_chunk_bytes > kMaxChunkBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot_classes[", i, "].max_chunk_bytes: ", c.max_chunk_bytes,
                       " is out of range (", kChunkHeaderBytes + 1, " to ", kMaxChunkBytes, ")"));
    }
    if (i > 0 && c.max_chunk_bytes <= slot_classes[i - 1].max_chunk_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slot_classes[", i, "].max_chunk_bytes: classes must be in ascending order"));
    }
    if (i > 0 && AlignUp(c.max_chunk_bytes, kSectorBytes) ==
                     AlignUp(slot_classes[i - 1].max_chunk_bytes, kSectorBytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot_classes[", i,
                       "].max_chunk_bytes: rounds to the same 4 KiB slot "
                       "size as slot_classes[",
                       i - 1, "]"));
    }
    uint64_t slot_bytes = AlignUp(c.max_chunk_bytes, kSectorBytes) + kSectorBytes;
    if (c.capacity_bytes < slot_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot_classes[", i, "].capacity_bytes: ", c.capacity_bytes,
                       " bytes holds no slot of ", slot_bytes, " bytes"));
    }
    largest_slot = std::max(largest_slot, slot_bytes);
  }
  if (io_mode != "direct" && io_mode != "buffered") {
    return absl::InvalidArgumentError(
        absl::StrCat("io_mode: '", io_mode, "' is not \"direct\" or \"buffered\""));
  }
  if (queue_depth == 0 || queue_depth > kMaxQueueDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue_depth: ", queue_depth, " is out of range (1 to ", kMaxQueueDepth, ")"));
  }
  if (max_inflight_bytes % kSectorBytes != 0 || max_inflight_bytes < largest_slot ||
      max_inflight_bytes > kMaxInflightBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_inflight_bytes: ", max_inflight_bytes,
                     " must be a multiple of 4096 between the largest slot (", largest_slot,
                     ") and ", kMaxInflightBytes));
  }
  if (clean_slots < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("clean_slots: ", clean_slots, " must be -1 (automatic) or at least 0"));
  }
  return NewEvictionPolicy(eviction_policy).status();
}

NvmeTier::NvmeTier(const NvmeTierOptions& options)
    : options_(options),
      env_(options.env != nullptr ? options.env : Env::Default()),
      direct_(options.io_mode == "direct"),
      flush_writes_(options.durability == "power") {}

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::Create(const NvmeTierOptions& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<NvmeTier> tier(new NvmeTier(options));
  KVTIER_RETURN_IF_ERROR(tier->Open());
  return tier;
}

NvmeTier::~NvmeTier() { Close().IgnoreError(); }

absl::Status NvmeTier::Open() {
  if (options_.slot_classes.empty()) {
    KVTIER_ASSIGN_OR_RETURN(superblock_.geometry, nvme::MakeRegionGeometry(options_.capacity_bytes,
                                                                           options_.region_bytes));
    class_data_bytes_ = nvme::SlotLadder(options_.region_bytes);
  } else {
    std::vector<std::pair<uint64_t, uint64_t>> classes;
    for (const NvmeSlotClass& c : options_.slot_classes) {
      uint64_t data = AlignUp(c.max_chunk_bytes, kSectorBytes);
      classes.emplace_back(data, c.capacity_bytes / (data + kSectorBytes));
      class_data_bytes_.push_back(data);
    }
    KVTIER_ASSIGN_OR_RETURN(superblock_.geometry, nvme::MakeGeometry(classes));
  }
  KVTIER_RETURN_IF_ERROR(OpenVolume());

  AsyncIoOptions io_options;
  io_options.depth = options_.queue_depth;
  absl::StatusOr<std::unique_ptr<AsyncIo>> io = env_->NewAsyncIo(io_options);
  if (!io.ok()) {
    return absl::Status(io.status().code(),
                        absl::StrCat("nvme: cannot set up io_uring: ", io.status().message()));
  }
  io_ = *std::move(io);
  KVTIER_ASSIGN_OR_RETURN(pool_, nvme::StagingPool::Create(options_.max_inflight_bytes));
  if (options_.register_buffers) {
    absl::Span<std::byte> whole(pool_->base(), pool_->size());
    fixed_buffers_ = io_->RegisterBuffers({&whole, 1}).ok();
  }

  const nvme::VolumeGeometry& g = superblock_.geometry;
  {
    absl::MutexLock lock(&mu_);
    slots_.clear();
    classes_.clear();
    for (uint32_t c = 0; c < class_data_bytes_.size(); ++c) {
      ClassState cs;
      KVTIER_ASSIGN_OR_RETURN(cs.policy, NewEvictionPolicy(options_.eviction_policy));
      classes_.push_back(std::move(cs));
    }
    for (uint32_t c = 0; c < g.classes.size(); ++c) {
      AddSlots(c, g.classes[c].region_offset, g.classes[c].slot_count);
    }
    region_class_.assign(g.region_count, kRegionFree);
    region_first_slot_.assign(g.region_count, 0);
  }
  absl::Time start = absl::Now();
  KVTIER_RETURN_IF_ERROR(Recover());
  open_seconds_ = absl::ToDoubleSeconds(absl::Now() - start);
  completion_thread_ = std::thread([this] { CompletionLoop(); });
  opened_ = true;
  return absl::OkStatus();
}

absl::Status NvmeTier::OpenVolume() {
  const std::string& path = options_.path;
  absl::StatusOr<PathInfo> info = env_->GetPathInfo(path);
  if (!info.ok()) return info.status();
  bool device = false;
  switch (info->kind) {
    case PathKind::kMissing:
      return ErrnoToStatus(ENOENT, absl::StrCat("path: ", path));
    case PathKind::kDirectory:
      volume_path_ = absl::StrCat(path, path.back() == '/' ? "" : "/", kNvmeVolumeFileName);
      break;
    case PathKind::kBlockDevice:
      volume_path_ = path;
      device = true;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("path: ", path, " is neither a folder nor a block device"));
  }

  bool created = false;
  if (!device) {
    KVTIER_ASSIGN_OR_RETURN(PathInfo vinfo, env_->GetPathInfo(volume_path_));
    created = vinfo.kind == PathKind::kMissing;
  }
  FileOpenOptions fo;
  fo.create = !device;
  fo.direct = direct_;
  fo.lock = true;
  absl::StatusOr<std::unique_ptr<File>> file = env_->OpenFile(volume_path_, fo);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(options_.lock_wait_ms);
  while (absl::IsFailedPrecondition(file.status()) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    file = env_->OpenFile(volume_path_, fo);
  }
  if (!file.ok()) {
    if (created) env_->DeleteFile(volume_path_).IgnoreError();
    if (direct_ && file.status().code() == absl::StatusCode::kInvalidArgument) {
      return absl::InvalidArgumentError(
          absl::StrCat("io_mode: the file system holding ", volume_path_, " refused O_DIRECT (",
                       file.status().message(), "); set io_mode to \"buffered\""));
    }
    return file.status();
  }
  file_ = *std::move(file);
  const nvme::VolumeGeometry& g = superblock_.geometry;

  KVTIER_ASSIGN_OR_RETURN(uint64_t size, file_->Size());
  if (device && size < g.volume_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(g.regions() ? "capacity_bytes" : "slot_classes",
                                                   ": the volume needs ", g.volume_bytes,
                                                   " bytes but ", volume_path_, " holds ", size));
  }
  AlignedBuffer sector(kSectorBytes);
  absl::Status read = size >= kSectorBytes && !created
                          ? file_->ReadAt(0, sector.span())
                          : absl::DataLossError("shorter than a superblock");
  // A file of kvtier's that is new, empty, or whose superblock sector is all
  // zeros (a first start that stopped between allocating the file and
  // writing its superblock: nothing was stored) is formatted.
  const bool blank =
      !device && (created || size == 0 ||
                  (read.ok() && std::all_of(sector.span().begin(), sector.span().end(),
                                            [](std::byte b) { return b == std::byte{0}; })));
  if (blank) {
    absl::Status s = FormatVolume();
    if (!s.ok()) {
      file_.reset();
      if (created) env_->DeleteFile(volume_path_).IgnoreError();
      return s;
    }
    return env_->SyncDirectory(path);
  }
  absl::StatusOr<nvme::Superblock> sb =
      read.ok() ? nvme::DecodeSuperblock(sector.span()) : absl::StatusOr<nvme::Superblock>(read);
  if (!sb.ok()) {
    if (device && options_.format_device) return FormatVolume();
    return absl::FailedPreconditionError(absl::StrCat(
        "path: ", volume_path_, " does not hold a kvtier NVMe volume (", sb.status().message(),
        device ? "); set format_device to format it, destroying its contents"
               : "); delete the file to start over"));
  }
  if (!(sb->geometry == g)) {
    const char* field = sb->geometry.regions() != g.regions() ? "slot_classes"
                        : g.regions()                         ? "capacity_bytes, region_bytes"
                                                              : "slot_classes";
    const char* same = sb->geometry.regions()
                           ? "empty slot_classes and the same capacity_bytes and region_bytes"
                           : "the same explicit slot_classes";
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": ", volume_path_, " holds a volume of ",
        sb->geometry.regions() ? "" : "slot classes ", ClassesText(sb->geometry),
        " but the options ask for ", g.regions() ? "" : "slot classes ", ClassesText(g),
        "; open it with ", same, device ? "" : ", or delete the file to start over"));
  }
  if (size < g.volume_bytes) {
    return absl::FailedPreconditionError(absl::StrCat("path: ", volume_path_, " is truncated (",
                                                      size, " of ", g.volume_bytes, " bytes)"));
  }
  superblock_.generation = sb->generation;
  return absl::OkStatus();
}

absl::Status NvmeTier::FormatVolume() {
  const nvme::VolumeGeometry& g = superblock_.geometry;
  if (!file_->is_block_device()) {
    absl::Status s = file_->Allocate(g.volume_bytes);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("nvme: cannot create the ", g.volume_bytes,
                                                 "-byte volume: ", s.message()));
    }
  }
  superblock_.generation = RandomGeneration();
  AlignedBuffer sectors(2 * kSectorBytes);
  nvme::EncodeSuperblock(superblock_, sectors.span().subspan(0, kSectorBytes));
  // The snapshot header sector follows the superblock and stays zero (no
  // snapshot). Slot records need no clearing: the new generation makes any
  // old record stale.
  KVTIER_RETURN_IF_ERROR(file_->WriteAt(0, sectors.span()));
  KVTIER_RETURN_IF_ERROR(file_->Sync());
  fresh_volume_ = true;
  return absl::OkStatus();
}

uint32_t NvmeTier::AddSlots(uint32_t cls, uint64_t offset, uint64_t count) {
  const uint32_t first = static_cast<uint32_t>(slots_.size());
  const uint64_t slot_bytes = class_data_bytes_[cls] + kSectorBytes;
  for (uint64_t i = 0; i < count; ++i) {
    Slot s;
    s.offset = offset + i * slot_bytes;
    s.cls = static_cast<uint16_t>(cls);
    slots_.push_back(s);
  }
  classes_[cls].slots += count;
  UpdateReserve(cls);
  return first;
}

void NvmeTier::UpdateReserve(uint32_t cls) {
  ClassState& c = classes_[cls];
  // "process" saves need no clean slot: they rewrite a slot's record and data
  // in one write.
  if (!flush_writes_) {
    c.reserve = 0;
    return;
  }
  c.reserve = options_.clean_slots >= 0 ? std::min<uint64_t>(options_.clean_slots, c.slots / 2)
                                        : std::min<uint64_t>(options_.queue_depth, c.slots / 16);
}

void NvmeTier::AssignRegion(uint32_t region, uint32_t cls) {
  const nvme::VolumeGeometry& g = superblock_.geometry;
  const uint64_t count = (g.region_bytes - kSectorBytes) / (class_data_bytes_[cls] + kSectorBytes);
  region_class_[region] = static_cast<int32_t>(cls);
  region_first_slot_[region] = AddSlots(cls, g.RegionOffset(region) + kSectorBytes, count);
}

uint32_t NvmeTier::DiskSlotId(uint32_t slot) const {
  if (!superblock_.geometry.regions()) return slot;
  return static_cast<uint32_t>(slots_[slot].offset / kSectorBytes);
}

std::optional<uint32_t> NvmeTier::SlotOfDiskId(uint32_t disk_id) const {
  const nvme::VolumeGeometry& g = superblock_.geometry;
  if (!g.regions()) {
    if (disk_id >= slots_.size()) return std::nullopt;
    return disk_id;
  }
  const uint64_t offset = static_cast<uint64_t>(disk_id) * kSectorBytes;
  if (offset < g.regions_offset) return std::nullopt;
  const uint64_t region = (offset - g.regions_offset) / g.region_bytes;
  if (region >= g.region_count || region_class_[region] < 0) return std::nullopt;
  const uint64_t within = offset - g.RegionOffset(region);
  const uint64_t slot_bytes = class_data_bytes_[region_class_[region]] + kSectorBytes;
  if (within < kSectorBytes || (within - kSectorBytes) % slot_bytes != 0) return std::nullopt;
  const uint64_t index = (within - kSectorBytes) / slot_bytes;
  if (index >= (g.region_bytes - kSectorBytes) / slot_bytes) return std::nullopt;
  return static_cast<uint32_t>(region_first_slot_[region] + index);
}

absl::Status NvmeTier::Recover() {
  absl::MutexLock lock(&mu_);
  if (fresh_volume_) {
    open_source_ = "new";
    for (uint32_t s = 0; s < slots_.size(); ++s) classes_[slots_[s].cls].free_clean.push_back(s);
    for (uint32_t r = 0; r < region_class_.size(); ++r) free_regions_.push_back(r);
    return absl::OkStatus();
  }
  std::string rejected;
  absl::Status loaded = LoadSnapshot(&rejected);
  if (loaded.ok()) {
    open_source_ = "snapshot";
  } else {
    snapshot_rejected_ = rejected;
    // A ring that ReadAll gave up on still holds reads whose completions a
    // scan would take for its own: fail the open instead.
    if (ring_abandoned_) {
      return absl::Status(loaded.code(), absl::StrCat("nvme: ", volume_path_,
                                                      ": the snapshot was not used: ", rejected));
    }
    KVTIER_RETURN_IF_ERROR(Scan());
    open_source_ = "scan";
  }
  for (uint32_t r = 0; r < region_class_.size(); ++r) {
    if (region_class_[r] == kRegionFree) free_regions_.push_back(r);
  }
  return InvalidateSnapshot();
}

absl::Status NvmeTier::LoadSnapshot(std::string* rejected) {
  const nvme::VolumeGeometry& g = superblock_.geometry;
  AlignedBuffer sector(kSectorBytes);
  auto reject = [rejected](const std::string& why) {
    *rejected = why;
    return absl::DataLossError(why);
  };
  if (absl::Status read = file_->ReadAt(g.snapshot_offset, sector.span()); !read.ok()) {
    return reject(absl::StrCat("cannot read the snapshot header: ", read.message()));
  }
  absl::StatusOr<nvme::SnapshotHeader> h = nvme::DecodeSnapshotHeader(sector.span());
  if (!h.ok()) {
    if (absl::IsNotFound(h.status())) return h.status();  // none: nothing to report
    return reject(std::string(h.status().message()));
  }
  if (h->generation != superblock_.generation) return reject("snapshot of another volume format");
  if (h->volume_bytes != g.volume_bytes || h->geometry_hash != nvme::GeometryHash(superblock_) ||
      h->region_count != g.region_count) {
    return reject("snapshot of another volume geometry");
  }
  const uint64_t max_slots = g.regions() ? g.region_count * g.max_region_slots : g.total_slots;
  if (h->record_count > max_slots) {
    return reject(
        absl::StrCat("snapshot lists ", h->record_count, " records for ", max_slots, " slots"));
  }
  const uint64_t table = AlignUp(h->region_count * nvme::kSnapshotRegionEntryBytes, kSectorBytes);
  const uint64_t bytes = table + h->record_count * nvme::kSnapshotRecordBytes;
  AlignedBuffer records(std::max<uint64_t>(AlignUp(bytes, kSectorBytes), kSectorBytes));
  if (bytes > 0) {
    absl::Status read = file_->ReadAt(g.snapshot_offset + kSectorBytes,
                                      records.span().subspan(0, AlignUp(bytes, kSectorBytes)));
    if (!read.ok()) {
      return reject(absl::StrCat("cannot read the snapshot records: ", read.message()));
    }
  }
  if (Xxh3_64(records.span().subspan(0, bytes)) != h->records_checksum) {
    return reject("snapshot records checksum mismatch");
  }
  // Regions first: slot ids depend on them.
  std::vector<int32_t> region_class(g.region_count, kRegionFree);
  for (uint64_t r = 0; r < g.region_count; ++r) {
    const uint64_t data = LoadLE<uint64_t>(records.data() + r * nvme::kSnapshotRegionEntryBytes);
    if (data == 0) continue;
    if (data == kSnapshotRegionDamaged) {
      region_class[r] = kRegionDamaged;
      continue;
    }
    auto it = std::lower_bound(class_data_bytes_.begin(), class_data_bytes_.end(), data);
    if (it == class_data_bytes_.end() || *it != data) {
      return reject(absl::StrCat("snapshot gives region ", r, " slots of ", data, " bytes"));
    }
    region_class[r] = static_cast<int32_t>(it - class_data_bytes_.begin());
  }
  for (uint32_t r = 0; r < g.region_count; ++r) {
    if (region_class[r] >= 0) {
      AssignRegion(r, static_cast<uint32_t>(region_class[r]));
    } else if (region_class[r] == kRegionDamaged) {
      region_class_[r] = kRegionDamaged;
      ++damaged_regions_;
    }
  }
  auto undo_regions = [this, &g]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!g.regions()) return;
    slots_.clear();
    for (ClassState& c : classes_) c.slots = 0;
    region_class_.assign(g.region_count, kRegionFree);
    damaged_regions_ = 0;
  };
  std::vector<std::pair<uint32_t, nvme::SnapshotRecord>> decoded;
  decoded.reserve(h->record_count);
  std::vector<bool> seen(slots_.size(), false);
  absl::flat_hash_map<NsKey, uint32_t> keys;
  for (uint64_t i = 0; i < h->record_count; ++i) {
    absl::StatusOr<nvme::SnapshotRecord> r =
        nvme::DecodeSnapshotRecord(records.data() + table + i * nvme::kSnapshotRecordBytes);
    if (!r.ok()) {
      undo_regions();
      return reject(std::string(r.status().message()));
    }
    std::optional<uint32_t> slot = SlotOfDiskId(r->slot);
    if (!slot.has_value() || seen[*slot]) {
      undo_regions();
      return reject(absl::StrCat("snapshot record ", i, " names slot ", r->slot));
    }
    seen[*slot] = true;
    if (r->kind == nvme::SnapshotRecordKind::kLive) {
      absl::StatusOr<ChunkHeader> ch = DecodeChunkHeader(r->chunk_header_bytes);
      if (!ch.ok()) {
        undo_regions();
        return reject(std::string(ch.status().message()));
      }
      if (kChunkHeaderBytes + ch->payload_length > class_data_bytes_[slots_[*slot].cls]) {
        undo_regions();
        return reject(absl::StrCat("snapshot record ", i, " is larger than its slot"));
      }
      if (!keys.emplace(NsKey{ch->namespace_id, ch->key}, *slot).second) {
        undo_regions();
        return reject(absl::StrCat("snapshot lists key ", ch->key.ToHex(), " twice"));
      }
    }
    decoded.emplace_back(*slot, *r);
  }
  // A free slot whose commit sector may still hold a record: read which
  // chunk it names, so that a Remove of that chunk covers it (leftovers_).
  // The snapshot does not say, and a slot may have had several candidates.
  // A sector that cannot be read does not fail the open (a scan would read
  // it too, and fail): see `unreadable` below.
  std::vector<uint32_t> dirty;
  std::vector<std::pair<uint64_t, uint64_t>> dirty_sectors;
  std::vector<uint32_t> dirty_ids;
  for (const auto& [slot, r] : decoded) {
    if (r.kind != nvme::SnapshotRecordKind::kDirtyFree) continue;
    dirty.push_back(slot);
    dirty_sectors.emplace_back(slots_[slot].offset, kSectorBytes);
    dirty_ids.push_back(DiskSlotId(slot));
  }
  std::vector<std::pair<uint32_t, NsKey>> leftovers;
  std::vector<size_t> failed_reads;
  if (!dirty.empty()) {
    absl::Status read = ReadAll(
        dirty_sectors,
        [&](size_t i, const std::byte* bytes) {
          nvme::SlotRecord rec =
              nvme::DecodeSlotRecord({bytes, kSectorBytes}, superblock_.generation, dirty_ids[i]);
          if (rec.kind == nvme::SlotRecordKind::kCommitted) {
            leftovers.emplace_back(dirty[i], NsKey{rec.chunk.namespace_id, rec.chunk.key});
          }
        },
        &failed_reads);
    if (!read.ok()) {  // the ring failed, not a read: Recover fails the open
      undo_regions();
      *rejected =
          absl::StrCat("cannot read the commit sectors of its free slots: ", read.message());
      return read;
    }
  }
  std::vector<bool> unreadable(slots_.size(), false);
  for (size_t i : failed_reads) unreadable[dirty[i]] = true;
  // Valid: build the index from it.
  for (const auto& [slot, r] : decoded) {
    Slot& s = slots_[slot];
    s.disk_dirty = true;
    if (r.kind == nvme::SnapshotRecordKind::kDirtyFree) continue;
    ChunkHeader ch = *DecodeChunkHeader(r.chunk_header_bytes);
    s.state = SlotState::kLive;
    s.sequence = r.sequence;
    s.id = NsKey{ch.namespace_id, ch.key};
    s.parent = r.parent;
    s.header = ch;
    index_[s.id] = slot;
  }
  for (uint32_t slot = 0; slot < slots_.size(); ++slot) {
    Slot& s = slots_[slot];
    if (s.state == SlotState::kLive) {
      LinkLive(slot);
      ++recovered_chunks_;
    } else if (!unreadable[slot]) {
      FreeSlot(slot);
    }
  }
  for (const auto& [slot, id] : leftovers) NoteLeftover(slot, id);
  next_sequence_ = h->next_sequence;
  // An unreadable commit sector of a free slot may name any chunk, which no
  // Remove would then cover. Its record is replaced by a tombstone now (the
  // snapshot says the slot holds no live chunk, so nothing is lost): the
  // slot is then clean, and free. If that write or its flush fails too, the
  // slot is withheld: never handed out, and listed again as needing a
  // tombstone by the next snapshot, so the next open tries again. Until
  // then a Remove cannot cover the chunk its record may name, which only a
  // scan that reads the sector back could resurrect (the sector then failed
  // a read and a write here; a scan that cannot read it fails the open).
  std::vector<uint32_t> retire;
  for (size_t i : failed_reads) retire.push_back(dirty[i]);
  if (!retire.empty()) {
    read_errors_ += retire.size();
    AlignedBuffer tomb(kSectorBytes);
    std::vector<bool> written(retire.size(), false);
    bool any = false;
    for (size_t i = 0; i < retire.size(); ++i) {
      nvme::SlotRecord rec;
      rec.kind = nvme::SlotRecordKind::kTombstone;
      rec.generation = superblock_.generation;
      rec.sequence = next_sequence_++;
      rec.slot = DiskSlotId(retire[i]);
      nvme::EncodeSlotRecord(rec, tomb.span());
      written[i] = file_->WriteAt(slots_[retire[i]].offset, tomb.span()).ok();
      any = any || written[i];
    }
    const bool synced = any && file_->Sync().ok();
    for (size_t i = 0; i < retire.size(); ++i) {
      Slot& s = slots_[retire[i]];
      if (synced && written[i]) {
        s.disk_dirty = false;
        ++tombstones_;
        FreeSlot(retire[i]);
      } else {
        ++write_errors_;
        Withhold(retire[i]);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status NvmeTier::ReadAll(absl::Span<const std::pair<uint64_t, uint64_t>> jobs,
                               absl::FunctionRef<void(size_t, const std::byte*)> on_read,
                               std::vector<size_t>* failed_jobs) {
  uint64_t max_len = kSectorBytes;
  for (const auto& j : jobs) max_len = std::max(max_len, j.second);
  const uint32_t window = std::min<uint32_t>(
      io_->depth(), static_cast<uint32_t>(std::max<uint64_t>(1, kScanBufferBytes / max_len)));
  AlignedBuffer buffer(static_cast<size_t>(window) * max_len);
  // When the ring itself fails (Submit or Reap), which reads the kernel
  // still holds is unknown, so none can be waited for: the buffer is leaked
  // on purpose rather than freed under them (the open fails; at most
  // kScanBufferBytes, only when io_uring breaks). Their completions stay
  // in the ring, so it is not used again (ring_abandoned_).
  auto abandon = [this, &buffer](absl::Status s) {
    static_cast<void>(new AlignedBuffer(std::move(buffer)));
    ring_abandoned_ = true;
    return s;
  };
  std::vector<uint32_t> free_bufs(window);
  for (uint32_t i = 0; i < window; ++i) free_bufs[i] = i;
  std::vector<size_t> job_of_buf(window);
  std::vector<IoCompletion> done(window);
  size_t next = 0;
  uint32_t inflight = 0;
  // The first failed read. It stops new submissions, but the loop reaps on
  // until no read is in flight: the kernel writes into `buffer` until each
  // one completes.
  absl::Status failed;
  while ((failed.ok() && next < jobs.size()) || inflight > 0) {
    std::vector<IoRequest> reqs;
    while (failed.ok() && next < jobs.size() && !free_bufs.empty()) {
      uint32_t b = free_bufs.back();
      free_bufs.pop_back();
      job_of_buf[b] = next;
      IoRequest r;
      r.opcode = IoOpcode::kRead;
      r.file = file_.get();
      r.offset = jobs[next].first;
      r.buf = buffer.data() + static_cast<size_t>(b) * max_len;
      r.len = static_cast<uint32_t>(jobs[next].second);
      r.tag = b;
      reqs.push_back(r);
      ++next;
    }
    if (!reqs.empty()) {
      absl::Status submitted = io_->Submit(reqs);
      if (!submitted.ok()) return abandon(submitted);
      inflight += static_cast<uint32_t>(reqs.size());
    }
    absl::StatusOr<size_t> got = io_->Reap(absl::MakeSpan(done), absl::InfiniteDuration());
    if (!got.ok()) return abandon(got.status());
    for (size_t k = 0; k < *got; ++k) {
      const uint32_t b = static_cast<uint32_t>(done[k].tag);
      const auto& j = jobs[job_of_buf[b]];
      if (!failed.ok()) {
        // Draining after an error: the bytes are not used.
      } else if (done[k].result != static_cast<int32_t>(j.second)) {
        if (failed_jobs != nullptr) {
          failed_jobs->push_back(job_of_buf[b]);
        } else {
          failed = IoStatus("recovery read", j.second, j.first, volume_path_, done[k].result);
        }
      } else {
        on_read(job_of_buf[b], buffer.data() + static_cast<size_t>(b) * max_len);
      }
      free_bufs.push_back(b);
      --inflight;
    }
  }
  return failed;
}

absl::Status NvmeTier::Scan() {
  const nvme::VolumeGeometry& g = superblock_.geometry;
  // On-demand regions: their headers say which slot size each one holds.
  if (g.regions()) {
    std::vector<std::pair<uint64_t, uint64_t>> headers;
    for (uint64_t r = 0; r < g.region_count; ++r) {
      headers.emplace_back(g.RegionOffset(r), kSectorBytes);
    }
    std::vector<int32_t> region_class(g.region_count, kRegionFree);
    KVTIER_RETURN_IF_ERROR(ReadAll(headers, [&](size_t r, const std::byte* bytes) {
      nvme::RegionHeader h;
      std::string problem;
      nvme::RegionHeaderKind kind = nvme::DecodeRegionHeader(
          {bytes, kSectorBytes}, superblock_.generation, g, static_cast<uint32_t>(r), &h, &problem);
      if (kind == nvme::RegionHeaderKind::kDamaged) {
        region_class[r] = kRegionDamaged;
      } else if (kind == nvme::RegionHeaderKind::kAssigned) {
        region_class[r] =
            static_cast<int32_t>(std::lower_bound(class_data_bytes_.begin(),
                                                  class_data_bytes_.end(), h.slot_data_bytes) -
                                 class_data_bytes_.begin());
      }
    }));
    for (uint32_t r = 0; r < g.region_count; ++r) {
      if (region_class[r] >= 0) {
        AssignRegion(r, static_cast<uint32_t>(region_class[r]));
      } else if (region_class[r] == kRegionDamaged) {
        // Left unused until the volume is formatted again: its slots'
        // size is unknown.
        region_class_[r] = kRegionDamaged;
        ++damaged_regions_;
      }
    }
  }
  // Runs of slots: one per class, or one per assigned region.
  std::vector<SlotRun> runs;
  for (uint32_t c = 0; c < g.classes.size(); ++c) {
    runs.push_back(SlotRun{g.classes[c].region_offset, g.classes[c].slot_bytes,
                           g.classes[c].slot_count, g.classes[c].first_slot});
  }
  for (uint32_t r = 0; r < region_class_.size(); ++r) {
    if (region_class_[r] < 0) continue;
    const uint64_t slot_bytes = class_data_bytes_[region_class_[r]] + kSectorBytes;
    runs.push_back(SlotRun{g.RegionOffset(r) + kSectorBytes, slot_bytes,
                           (g.region_bytes - kSectorBytes) / slot_bytes, region_first_slot_[r]});
  }
  // Read every commit sector. Small slots are read in runs of about 1 MiB
  // (fewer, larger requests: more bytes, far fewer I/Os); large ones one
  // 4 KiB sector each.
  struct Job {
    uint32_t first_slot;
    uint32_t slots;
    uint64_t stride;  // bytes between commit sectors in the buffer
  };
  std::vector<Job> jobs;
  std::vector<std::pair<uint64_t, uint64_t>> reads;
  for (const SlotRun& run : runs) {
    const bool batch = run.slot_bytes <= kScanRunSlotBytes;
    const uint64_t per_job = batch ? std::max<uint64_t>(1, kScanRunBytes / run.slot_bytes) : 1;
    for (uint64_t i = 0; i < run.count; i += per_job) {
      const uint64_t n = std::min<uint64_t>(per_job, run.count - i);
      jobs.push_back(
          Job{static_cast<uint32_t>(run.first_slot + i), static_cast<uint32_t>(n), run.slot_bytes});
      reads.emplace_back(run.offset + i * run.slot_bytes,
                         batch ? (n - 1) * run.slot_bytes + kSectorBytes : kSectorBytes);
    }
  }
  std::vector<nvme::SlotRecord> records(slots_.size());
  KVTIER_RETURN_IF_ERROR(ReadAll(reads, [&](size_t k, const std::byte* base) {
    const Job& j = jobs[k];
    for (uint32_t i = 0; i < j.slots; ++i) {
      const uint32_t slot = j.first_slot + i;
      records[slot] = nvme::DecodeSlotRecord({base + i * j.stride, kSectorBytes},
                                             superblock_.generation, DiskSlotId(slot));
    }
  }));
  uint64_t max_sequence = 0;
  for (uint32_t slot = 0; slot < slots_.size(); ++slot) {
    nvme::SlotRecord& r = records[slot];
    Slot& s = slots_[slot];
    if (r.kind == nvme::SlotRecordKind::kCommitted || r.kind == nvme::SlotRecordKind::kTombstone) {
      max_sequence = std::max(max_sequence, r.sequence);
    }
    if (r.kind == nvme::SlotRecordKind::kCommitted &&
        kChunkHeaderBytes + r.chunk.payload_length > class_data_bytes_[s.cls]) {
      r.kind = nvme::SlotRecordKind::kDamaged;
    }
    if (r.kind == nvme::SlotRecordKind::kDamaged) ++damaged_records_;
    if (r.kind != nvme::SlotRecordKind::kCommitted) continue;
    s.disk_dirty = true;
    NsKey id{r.chunk.namespace_id, r.chunk.key};
    auto [it, inserted] = index_.emplace(id, slot);
    if (!inserted) {
      // The same chunk in two slots (saved again after its first slot was
      // left without being overwritten: a failed read or save): the later
      // write wins, and the other stays a leftover copy that a Remove must
      // cover too.
      uint32_t other = it->second;
      if (slots_[other].sequence > r.sequence) {
        s.id = id;
        NoteLeftover(slot, id);
        continue;
      }
      slots_[other].state = SlotState::kFree;
      NoteLeftover(other, id);
      it->second = slot;
    }
    s.state = SlotState::kLive;
    s.sequence = r.sequence;
    s.id = id;
    s.parent = r.parent;
    s.header = r.chunk;
  }
  for (uint32_t slot = 0; slot < slots_.size(); ++slot) {
    if (slots_[slot].state == SlotState::kLive) {
      LinkLive(slot);
      ++recovered_chunks_;
    } else {
      FreeSlot(slot);
    }
  }
  next_sequence_ = max_sequence + 1;
  return absl::OkStatus();
}

absl::Status NvmeTier::InvalidateSnapshot() {
  const nvme::VolumeGeometry& g = superblock_.geometry;
  AlignedBuffer sector(kSectorBytes);
  KVTIER_RETURN_IF_ERROR(file_->ReadAt(g.snapshot_offset, sector.span()));
  bool zero = std::all_of(sector.data(), sector.data() + kSectorBytes,
                          [](std::byte b) { return b == std::byte{0}; });
  if (zero) return absl::OkStatus();
  std::memset(sector.data(), 0, kSectorBytes);
  KVTIER_RETURN_IF_ERROR(file_->WriteAt(g.snapshot_offset, sector.span()));
  return file_->Sync();
}

absl::Status NvmeTier::WriteSnapshot() {
  const nvme::VolumeGeometry& g = superblock_.geometry;
  std::vector<nvme::SnapshotRecord> records;
  std::vector<uint64_t> region_table;
  uint64_t next_sequence;
  {
    absl::MutexLock lock(&mu_);
    for (int32_t c : region_class_) {
      region_table.push_back(c >= 0                ? class_data_bytes_[c]
                             : c == kRegionDamaged ? kSnapshotRegionDamaged
                                                   : 0);
    }
    for (uint32_t slot = 0; slot < slots_.size(); ++slot) {
      const Slot& s = slots_[slot];
      nvme::SnapshotRecord r;
      r.slot = DiskSlotId(slot);
      if (s.state == SlotState::kLive) {
        r.kind = nvme::SnapshotRecordKind::kLive;
        r.sequence = s.sequence;
        r.parent = s.parent;
        EncodeChunkHeader(s.header, r.chunk_header_bytes.data());
      } else if (s.disk_dirty) {
        r.kind = nvme::SnapshotRecordKind::kDirtyFree;
      } else {
        continue;
      }
      records.push_back(r);
    }
    next_sequence = next_sequence_;
  }
  const uint64_t table =
      AlignUp(region_table.size() * nvme::kSnapshotRegionEntryBytes, kSectorBytes);
  uint64_t bytes = table + records.size() * nvme::kSnapshotRecordBytes;
  AlignedBuffer buffer(std::max<uint64_t>(AlignUp(bytes, kSectorBytes), kSectorBytes));
  std::memset(buffer.data(), 0, buffer.size());
  for (size_t r = 0; r < region_table.size(); ++r) {
    StoreLE<uint64_t>(buffer.data() + r * nvme::kSnapshotRegionEntryBytes, region_table[r]);
  }
  for (size_t i = 0; i < records.size(); ++i) {
    nvme::EncodeSnapshotRecord(records[i], buffer.data() + table + i * nvme::kSnapshotRecordBytes);
  }
  if (bytes > 0) {
    KVTIER_RETURN_IF_ERROR(file_->WriteAt(g.snapshot_offset + kSectorBytes,
                                          buffer.span().subspan(0, AlignUp(bytes, kSectorBytes))));
    KVTIER_RETURN_IF_ERROR(file_->Sync());
  }
  nvme::SnapshotHeader h;
  h.generation = superblock_.generation;
  h.volume_bytes = g.volume_bytes;
  h.geometry_hash = nvme::GeometryHash(superblock_);
  h.next_sequence = next_sequence;
  h.record_count = records.size();
  h.region_count = region_table.size();
  h.records_checksum = Xxh3_64(buffer.span().subspan(0, bytes));
  AlignedBuffer sector(kSectorBytes);
  nvme::EncodeSnapshotHeader(h, sector.span());
  KVTIER_RETURN_IF_ERROR(file_->WriteAt(g.snapshot_offset, sector.span()));
  return file_->Sync();
}

absl::Status NvmeTier::Close() {
  absl::MutexLock close_lock(&close_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return close_status_;
    if (std::this_thread::get_id() == completion_thread_id_.load()) {
      return absl::FailedPreconditionError("nvme: Close called from a completion callback");
    }
    closing_ = true;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ops_ == 0; };
    mu_.Await(absl::Condition(&idle));
    stop_ = true;
    if (completion_thread_.joinable()) {
      IoRequest wake;
      wake.opcode = IoOpcode::kNop;
      wake.tag = kWakeTag;
      if (!SubmitNow(wake).ok()) Enqueue(wake);
    }
  }
  if (completion_thread_.joinable()) completion_thread_.join();
  absl::Status status;
  // Only after a complete open: a failed one may have stopped before the
  // index was rebuilt (a snapshot of it would lose every chunk on the
  // volume), or at a volume that is not ours (another geometry or version,
  // a device without a superblock), which must be left as it was.
  if (opened_ && options_.write_snapshot) status = WriteSnapshot();
  absl::MutexLock lock(&mu_);
  io_.reset();
  file_.reset();
  closed_ = true;
  close_status_ = status;
  return status;
}

// ---- submission --------------------------------------------------------------

IoRequest NvmeTier::WriteRequest(Op* op, uint64_t offset, std::byte* buf, uint64_t len) const {
  IoRequest r;
  r.opcode = IoOpcode::kWrite;
  r.file = file_.get();
  r.offset = offset;
  r.buf = buf;
  r.len = static_cast<uint32_t>(len);
  r.buf_index = fixed_buffers_ ? 0 : -1;
  r.tag = reinterpret_cast<uint64_t>(op);
  return r;
}

absl::Status NvmeTier::SubmitNow(const IoRequest& request) {
  if (!pending_.empty() || outstanding_ >= io_->depth()) {
    pending_.push_back(request);
    return absl::OkStatus();
  }
  KVTIER_RETURN_IF_ERROR(io_->Submit({&request, 1}));
  ++outstanding_;
  return absl::OkStatus();
}

void NvmeTier::Enqueue(const IoRequest& request) { pending_.push_back(request); }

void NvmeTier::DrainPending() {
  while (!pending_.empty() && outstanding_ < io_->depth()) {
    size_t n = std::min<size_t>(pending_.size(), io_->depth() - outstanding_);
    std::vector<IoRequest> batch(pending_.begin(), pending_.begin() + n);
    pending_.erase(pending_.begin(), pending_.begin() + n);
    absl::Status s = io_->Submit(batch);
    if (s.ok()) {
      outstanding_ += static_cast<uint32_t>(n);
      continue;
    }
    // The kernel refused the batch: fail what it carried.
    for (const IoRequest& r : batch) {
      if (r.tag == kWakeTag) continue;
      if (r.tag == kFlushTag) {
        flush_inflight_ = false;
        std::vector<Op*> group = std::move(flush_group_);
        flush_group_.clear();
        for (Op* op : group) FailOp(op, s);
        continue;
      }
      // NOLINTNEXTLINE(performance-no-int-to-ptr): the tag is io_uring user data.
      FailOp(reinterpret_cast<Op*>(r.tag), s);
    }
  }
}

void NvmeTier::MaybeStartFlush() {
  if (flush_inflight_ || awaiting_flush_.empty()) return;
  flush_group_ = std::move(awaiting_flush_);
  awaiting_flush_.clear();
  flush_inflight_ = true;
  ++flushes_;
  IoRequest r;
  r.opcode = IoOpcode::kDataSync;
  r.file = file_.get();
  r.tag = kFlushTag;
  Enqueue(r);
}

void NvmeTier::Defer(Deferred fn) {
  deferred_.push_back(std::move(fn));
  // With requests in the ring the completion thread wakes by itself;
  // otherwise a no-op request wakes it.
  if (outstanding_ == 0 && pending_.empty()) {
    IoRequest wake;
    wake.opcode = IoOpcode::kNop;
    wake.tag = kWakeTag;
    if (!SubmitNow(wake).ok()) Enqueue(wake);
  }
}

// ---- slots and eviction ------------------------------------------------------

std::optional<uint32_t> NvmeTier::ClassFor(uint64_t encoded_bytes) const {
  auto it = std::lower_bound(class_data_bytes_.begin(), class_data_bytes_.end(), encoded_bytes);
  if (it == class_data_bytes_.end()) return std::nullopt;
  return static_cast<uint32_t>(it - class_data_bytes_.begin());
}

absl::Status NvmeTier::OpenRegion(uint32_t cls) {
  const nvme::VolumeGeometry& g = superblock_.geometry;
  const uint32_t region = free_regions_.front();
  free_regions_.pop_front();
  classes_[cls].opening = true;
  ++live_ops_;  // keeps Close from closing the volume under the write
  nvme::RegionHeader h;
  h.generation = superblock_.generation;
  h.region = region;
  h.slot_data_bytes = class_data_bytes_[cls];
  h.slot_count = (g.region_bytes - kSectorBytes) / (class_data_bytes_[cls] + kSectorBytes);
  AlignedBuffer sector(kSectorBytes);
  nvme::EncodeRegionHeader(h, sector.span());
  // The header must be durable before any slot of the region is written (in
  // both durability modes): a slot record is only trusted inside a region
  // whose header says how the region is cut.
  mu_.Unlock();
  absl::Status s = file_->WriteAt(g.RegionOffset(region), sector.span());
  if (s.ok()) s = file_->Sync();
  mu_.Lock();
  classes_[cls].opening = false;
  --live_ops_;
  ++flushes_;
  if (!s.ok()) {
    ++write_errors_;
    free_regions_.push_front(region);
    return absl::Status(s.code(), absl::StrCat("nvme: cannot assign region ", region, " of ",
                                               volume_path_, ": ", s.message()));
  }
  AssignRegion(region, cls);
  for (uint32_t i = 0; i < h.slot_count; ++i) {
    FreeSlot(region_first_slot_[region] + i);
  }
  return absl::OkStatus();
}

bool NvmeTier::HasRoom(uint64_t bytes, bool staged) const {
  if (inflight_bytes_ + bytes > options_.max_inflight_bytes) return false;
  return !staged || pool_->CanAllocate(bytes);
}

std::optional<uint32_t> NvmeTier::AcquireSlot(uint32_t cls) {
  ClassState& c = classes_[cls];
  if (!c.free_clean.empty()) {
    uint32_t s = c.free_clean.front();
    c.free_clean.pop_front();
    return s;
  }
  if (!c.free_dirty.empty()) {
    uint32_t s = c.free_dirty.front();
    c.free_dirty.pop_front();
    return s;
  }
  std::optional<EntryId> victim = c.policy->PickVictim([](EntryId) { return true; });
  if (!victim.has_value()) return std::nullopt;
  ++evictions_;
  UnlinkLive(*victim);
  // Its record stays until the save overwrites it (or for good, if the save
  // fails first).
  NoteLeftover(*victim, slots_[*victim].id);
  if (options_.on_evict) options_.on_evict(slots_[*victim].id.ns, slots_[*victim].id.key);
  slots_[*victim].state = SlotState::kFree;
  return *victim;
}

absl::Status NvmeTier::StartTombstone(uint32_t slot, OpKind kind, PutCallback done) {
  Slot& s = slots_[slot];
  s.state = SlotState::kRemoving;
  Op* op = new Op;
  op->kind = kind;
  op->stage = Stage::kTombstone;
  op->slot = slot;
  op->id = s.id;
  op->staged = true;
  op->staging_offset = *pool_->Allocate(kSectorBytes);
  op->staging_bytes = kSectorBytes;
  op->budget_bytes = kSectorBytes;
  op->remove_callback = std::move(done);
  inflight_bytes_ += kSectorBytes;
  ++live_ops_;
  if (kind == OpKind::kClean) ++classes_[s.cls].cleaning;
  std::byte* base = pool_->base() + op->staging_offset;
  nvme::SlotRecord tomb;
  tomb.kind = nvme::SlotRecordKind::kTombstone;
  tomb.generation = superblock_.generation;
  tomb.sequence = next_sequence_++;
  tomb.slot = DiskSlotId(slot);
  nvme::EncodeSlotRecord(tomb, {base, kSectorBytes});
  absl::Status submitted = SubmitNow(WriteRequest(op, s.offset, base, kSectorBytes));
  if (!submitted.ok()) {
    // The caller hears the error directly; the slot stays dirty.
    op->remove_callback = nullptr;
    FinishRemove(op, submitted);
  }
  return submitted;
}

void NvmeTier::RefillClean(uint32_t cls) {
  ClassState& c = classes_[cls];
  while (c.free_clean.size() + c.cleaning < c.reserve && HasRoom(kSectorBytes, true)) {
    uint32_t slot;
    if (!c.free_dirty.empty()) {
      slot = c.free_dirty.front();
      c.free_dirty.pop_front();
    } else {
      // While a region is free, the next save opens it instead.
      if (!free_regions_.empty()) return;
      std::optional<EntryId> victim = c.policy->PickVictim([](EntryId) { return true; });
      if (!victim.has_value()) return;
      ++evictions_;
      UnlinkLive(*victim);
      NoteLeftover(*victim, slots_[*victim].id);  // until its tombstone completes
      if (options_.on_evict) options_.on_evict(slots_[*victim].id.ns, slots_[*victim].id.key);
      slot = *victim;
    }
    if (!StartTombstone(slot, OpKind::kClean, nullptr).ok()) return;
  }
}

void NvmeTier::LinkLive(uint32_t slot) {
  Slot& s = slots_[slot];
  ClassState& c = classes_[s.cls];
  ++c.live;
  uint32_t depth = 0;
  if (!s.parent.IsZero()) {
    auto pit = index_.find(NsKey{s.id.ns, s.parent});
    if (pit != index_.end() && slots_[pit->second].state == SlotState::kLive) {
      depth = slots_[pit->second].depth + 1;
    }
  }
  s.depth = depth;
  c.policy->OnInsert(slot, EntryTraits{depth, class_data_bytes_[s.cls] + kSectorBytes,
                                       KeyFingerprint(s.id.ns, s.id.key)});
  if (!s.parent.IsZero()) {
    NsKey parent{s.id.ns, s.parent};
    if (++children_[parent] == 1) {
      auto it = index_.find(parent);
      if (it != index_.end()) UpdateEvictable(it->second);
    }
  }
  UpdateEvictable(slot);
}

void NvmeTier::UnlinkLive(uint32_t slot) {
  Slot& s = slots_[slot];
  ClassState& c = classes_[s.cls];
  --c.live;
  c.policy->OnErase(slot);
  auto it = index_.find(s.id);
  if (it != index_.end() && it->second == slot) index_.erase(it);
  if (!s.parent.IsZero()) {
    NsKey parent{s.id.ns, s.parent};
    auto cit = children_.find(parent);
    if (cit != children_.end() && --cit->second == 0) {
      children_.erase(cit);
      auto pit = index_.find(parent);
      if (pit != index_.end()) UpdateEvictable(pit->second);
    }
  }
}

void NvmeTier::UpdateEvictable(uint32_t slot) {
  const Slot& s = slots_[slot];
  if (s.state != SlotState::kLive) return;
  bool evictable = s.readers == 0 && !children_.contains(s.id);
  classes_[s.cls].policy->SetEvictable(slot, evictable);
}

void NvmeTier::FreeSlot(uint32_t slot) {
  Slot& s = slots_[slot];
  if (s.disk_dirty) {
    auto it = leftover_keys_.find(slot);
    if (it != leftover_keys_.end() && it->second.size() >= kMaxLeftoverKeysPerSlot) {
      // Saves into it keep failing: rather than remember one more chunk per
      // failed save, keep it out of use until a Remove of one of them
      // tombstones it (ForgetLeftovers then clears the list).
      Withhold(slot);
      return;
    }
  }
  s.state = SlotState::kFree;
  s.writer = nullptr;
  s.readers = 0;
  ClassState& c = classes_[s.cls];
  (s.disk_dirty ? c.free_dirty : c.free_clean).push_back(slot);
}

void NvmeTier::Withhold(uint32_t slot) {
  Slot& s = slots_[slot];
  s.state = SlotState::kFree;
  s.writer = nullptr;
  s.readers = 0;
  if (!s.withheld) {
    s.withheld = true;
    ++withheld_slots_;
  }
}

void NvmeTier::DropChunk(uint32_t slot) {
  Slot& s = slots_[slot];
  UnlinkLive(slot);
  // Dropped, not overwritten: its commit record stays on disk.
  NoteLeftover(slot, s.id);
  if (s.readers > 0) {
    s.state = SlotState::kDraining;
  } else {
    FreeSlot(slot);
  }
}

// Why leftover copies are tracked rather than resolved by sequence numbers
// at recovery: a Remove's tombstone carries no key and lives in one slot,
// which a later save may overwrite while an older copy of the chunk still
// sits in another slot; no order of records on disk would then say that the
// chunk was removed. So the tier remembers every slot that may still hold a
// record of a chunk not in it, and Remove tombstones those slots too. The
// format is unchanged.
void NvmeTier::NoteLeftover(uint32_t slot, const NsKey& id) {
  std::vector<NsKey>& keys = leftover_keys_[slot];
  if (std::find(keys.begin(), keys.end(), id) != keys.end()) return;
  keys.push_back(id);
  ++leftover_copies_;
  leftovers_[id].push_back(slot);
}

void NvmeTier::ForgetLeftovers(uint32_t slot) {
  if (leftover_keys_.empty()) return;
  auto it = leftover_keys_.find(slot);
  if (it == leftover_keys_.end()) return;
  for (const NsKey& id : it->second) {
    auto lit = leftovers_.find(id);
    if (lit == leftovers_.end()) continue;
    std::vector<uint32_t>& held = lit->second;
    held.erase(std::remove(held.begin(), held.end(), slot), held.end());
    if (held.empty()) leftovers_.erase(lit);
  }
  leftover_copies_ -= it->second.size();
  leftover_keys_.erase(it);
}

void NvmeTier::TakeFree(uint32_t slot) {
  if (slots_[slot].withheld) {
    slots_[slot].withheld = false;
    --withheld_slots_;
    return;
  }
  ClassState& c = classes_[slots_[slot].cls];
  for (std::deque<uint32_t>* list : {&c.free_dirty, &c.free_clean}) {
    auto it = std::find(list->begin(), list->end(), slot);
    if (it != list->end()) {
      list->erase(it);
      return;
    }
  }
}

// ---- Put ---------------------------------------------------------------------

absl::Status NvmeTier::CheckNotCallback(absl::string_view method) const {
  if (std::this_thread::get_id() == completion_thread_id_.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("nvme: ", method, " called from a completion callback; use the async form"));
  }
  return absl::OkStatus();
}

absl::Status NvmeTier::PutAsync(const ChunkMeta& meta, absl::Span<const std::byte> encoded,
                                PutCallback done) {
  return StartPut(meta, encoded, std::move(done), /*wait_for_room=*/false);
}

std::future<absl::Status> NvmeTier::PutAsync(const ChunkMeta& meta,
                                             absl::Span<const std::byte> encoded) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> future = promise->get_future();
  absl::Status s = PutAsync(meta, encoded,
                            [promise](const absl::Status& st) mutable { promise->set_value(st); });
  if (!s.ok()) promise->set_value(s);
  return future;
}

absl::Status NvmeTier::Put(const ChunkMeta& meta, absl::Span<const std::byte> encoded) {
  KVTIER_RETURN_IF_ERROR(CheckNotCallback("Put"));
  std::promise<absl::Status> promise;
  std::future<absl::Status> future = promise.get_future();
  KVTIER_RETURN_IF_ERROR(StartPut(
      meta, encoded, [&promise](const absl::Status& st) { promise.set_value(st); },
      /*wait_for_room=*/true));
  return future.get();
}

absl::Status NvmeTier::StartPut(const ChunkMeta& meta, absl::Span<const std::byte> encoded,
                                PutCallback done, bool wait_for_room) {
  if (meta.key.IsZero()) return absl::InvalidArgumentError("meta.key: must not be zero");
  absl::StatusOr<ChunkHeader> header = DecodeChunkHeader(encoded);
  if (!header.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("encoded: ", header.status().message()));
  }
  if (encoded.size() != kChunkHeaderBytes + header->payload_length) {
    return absl::InvalidArgumentError(absl::StrCat("encoded: ", encoded.size(),
                                                   " bytes, but its header announces ",
                                                   kChunkHeaderBytes + header->payload_length));
  }
  if (header->namespace_id != meta.namespace_id || header->key != meta.key ||
      header->layout_signature != meta.layout_signature || header->num_tokens != meta.num_tokens) {
    return absl::InvalidArgumentError(
        "meta: namespace_id, key, layout_signature or num_tokens differs from the encoded "
        "chunk's header");
  }
  std::optional<uint32_t> cls = ClassFor(encoded.size());
  if (!cls.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("encoded: ", encoded.size(),
                                                   " bytes is larger than the largest slot class (",
                                                   class_data_bytes_.back(), " bytes)"));
  }
  const uint64_t aligned = AlignUp(encoded.size(), kSectorBytes);
  const uint64_t need = kSectorBytes + aligned;
  const NsKey id{meta.namespace_id, meta.key};

  Op* op = nullptr;
  {
    absl::MutexLock lock(&mu_);
    for (;;) {
      if (closing_) return absl::FailedPreconditionError("nvme: the tier is closed");
      auto it = index_.find(id);
      if (it != index_.end()) {
        Slot& s = slots_[it->second];
        if (s.state == SlotState::kWriting) {
          s.writer->put_callbacks.push_back(std::move(done));
        } else {
          classes_[s.cls].policy->OnAccess(it->second);
          Defer([done = std::move(done)]() mutable { std::move(done)(absl::OkStatus()); });
        }
        return absl::OkStatus();
      }
      if (HasRoom(need, true)) {
        ClassState& c = classes_[*cls];
        if (superblock_.geometry.regions() && c.free_clean.empty() && c.free_dirty.empty() &&
            (c.opening || !free_regions_.empty())) {
          // Give the slot size a new region rather than evict while one is free.
          if (c.opening) {
            auto opened = [&c, this]()
                              ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closing_ || !c.opening; };
            mu_.Await(absl::Condition(&opened));
            continue;
          }
          KVTIER_RETURN_IF_ERROR(OpenRegion(*cls));
          continue;
        }
        break;
      }
      if (!wait_for_room) {
        ++busy_rejections_;
        return absl::UnavailableError(absl::StrCat("nvme: ", inflight_bytes_, " of ",
                                                   options_.max_inflight_bytes,
                                                   " in-flight bytes are taken; retry later"));
      }
      auto room = [this, need]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return closing_ || HasRoom(need, true);
      };
      mu_.Await(absl::Condition(&room));
    }
    std::optional<uint32_t> slot = AcquireSlot(*cls);
    if (!slot.has_value()) {
      ++save_rejections_;
      return absl::ResourceExhaustedError(absl::StrCat(
          "nvme: no free or evictable slot of ", class_data_bytes_[*cls], " bytes (",
          classes_[*cls].slots, " slots, all being read or written or parents of resident chunks",
          superblock_.geometry.regions() ? "; no region is free, and regions keep their slot size"
                                         : "",
          ")"));
    }
    op = new Op;
    op->kind = OpKind::kPut;
    op->slot = *slot;
    op->id = id;
    op->header = *header;
    op->encoded_bytes = encoded.size();
    op->aligned_bytes = aligned;
    op->staged = true;
    op->staging_offset = *pool_->Allocate(need);
    op->staging_bytes = need;
    op->budget_bytes = need;
    op->put_callbacks.push_back(std::move(done));
    op->put_id = ++put_counter_;
    inflight_puts_.insert(op->put_id);
    inflight_bytes_ += need;
    ++live_ops_;
    Slot& s = slots_[*slot];
    s.state = SlotState::kWriting;
    s.writer = op;
    s.id = id;
    s.parent = meta.parent;
    s.header = *header;
    s.readers = 0;
    index_[id] = *slot;
    RefillClean(*cls);
  }

  // Copy into the staging extent outside the lock, checking the payload.
  std::byte* base = pool_->base() + op->staging_offset;
  std::byte* data = base + kSectorBytes;
  std::memcpy(data, encoded.data(), kChunkHeaderBytes);
  uint64_t checksum = CopyWithChecksum(header->checksum_type, encoded.subspan(kChunkHeaderBytes),
                                       data + kChunkHeaderBytes);
  std::memset(data + encoded.size(), 0, aligned - encoded.size());

  absl::MutexLock lock(&mu_);
  absl::Status bad;
  if (checksum != header->payload_checksum) {
    bad = absl::InvalidArgumentError(
        absl::StrFormat("encoded: payload checksum %016x does not match the header's %016x",
                        checksum, header->payload_checksum));
  } else {
    Slot& s = slots_[op->slot];
    if (!flush_writes_) {
      // "process": the commit record and the data area in one write, to a
      // clean or dirty slot alike (see the header comment).
      nvme::SlotRecord rec;
      rec.kind = nvme::SlotRecordKind::kCommitted;
      rec.generation = superblock_.generation;
      rec.sequence = next_sequence_++;
      rec.slot = DiskSlotId(op->slot);
      rec.parent = s.parent;
      rec.chunk = op->header;
      std::memcpy(rec.chunk_header_bytes.data(), data, kChunkHeaderBytes);
      nvme::EncodeSlotRecord(rec, {base, kSectorBytes});
      op->sequence = rec.sequence;
      op->stage = Stage::kCommit;
      op->combined = true;
      s.disk_dirty = true;
      bad = SubmitNow(WriteRequest(op, s.offset, base, kSectorBytes + aligned));
    } else if (s.disk_dirty) {
      op->stage = Stage::kTombstone;
      nvme::SlotRecord tomb;
      tomb.kind = nvme::SlotRecordKind::kTombstone;
      tomb.generation = superblock_.generation;
      tomb.sequence = next_sequence_++;
      tomb.slot = DiskSlotId(op->slot);
      nvme::EncodeSlotRecord(tomb, {base, kSectorBytes});
      bad = SubmitNow(WriteRequest(op, s.offset, base, kSectorBytes));
    } else {
      op->stage = Stage::kData;
      bad = SubmitNow(WriteRequest(op, s.offset + kSectorBytes, data, aligned));
    }
  }
  if (bad.ok()) return absl::OkStatus();
  // Rejected after all: the caller hears it from the return value, any Put
  // that joined meanwhile from its callback.
  op->put_callbacks.erase(op->put_callbacks.begin());
  FinishPut(op, bad);
  return bad;
}

void NvmeTier::AdvanceAfterFlush(Op* op) {
  if (op->kind == OpKind::kFlush) {
    FinishRemove(op, absl::OkStatus());
    return;
  }
  Slot& s = slots_[op->slot];
  const uint64_t slot_offset = s.offset;
  std::byte* base = op->staged ? pool_->base() + op->staging_offset : nullptr;
  switch (op->stage) {
    case Stage::kTombstone:
      s.disk_dirty = false;
      ForgetLeftovers(op->slot);
      ++tombstones_;
      if (op->kind != OpKind::kPut) {
        FinishRemove(op, absl::OkStatus());
        return;
      }
      op->stage = Stage::kData;
      Enqueue(WriteRequest(op, slot_offset + kSectorBytes, base + kSectorBytes, op->aligned_bytes));
      return;
    case Stage::kData: {
      nvme::SlotRecord rec;
      rec.kind = nvme::SlotRecordKind::kCommitted;
      rec.generation = superblock_.generation;
      rec.sequence = next_sequence_++;
      rec.slot = DiskSlotId(op->slot);
      rec.parent = s.parent;
      rec.chunk = op->header;
      std::memcpy(rec.chunk_header_bytes.data(), base + kSectorBytes, kChunkHeaderBytes);
      op->sequence = rec.sequence;
      nvme::EncodeSlotRecord(rec, {base, kSectorBytes});
      op->stage = Stage::kCommit;
      // From here on the commit sector may hold this record.
      s.disk_dirty = true;
      Enqueue(WriteRequest(op, slot_offset, base, kSectorBytes));
      return;
    }
    case Stage::kCommit:
      FinishPut(op, absl::OkStatus());
      return;
    case Stage::kRead:
      return;
  }
}

void NvmeTier::FinishPut(Op* op, const absl::Status& status) {
  Slot& s = slots_[op->slot];
  if (status.ok()) {
    s.state = SlotState::kLive;
    s.writer = nullptr;
    s.sequence = op->sequence;
    ForgetLeftovers(op->slot);  // its commit record replaced any other
    LinkLive(op->slot);
    ++saves_;
    bytes_written_ += op->header.payload_length;
  } else {
    if (op->io_error) ++write_errors_;
    // disk_dirty already says whether the commit sector may hold a record:
    // a failed data write leaves it clean, a failed commit leaves it dirty.
    auto it = index_.find(op->id);
    if (it != index_.end() && it->second == op->slot) index_.erase(it);
    // A failed commit write may have left this chunk's record.
    if (op->stage == Stage::kCommit) NoteLeftover(op->slot, op->id);
  }
  for (PutCallback& cb : op->put_callbacks) {
    Defer([cb = std::move(cb), status]() mutable { std::move(cb)(status); });
  }
  inflight_puts_.erase(op->put_id);
  const uint32_t slot = op->slot;
  const bool retire = !status.ok() && op->combined;
  ReleaseOp(op);
  if (status.ok()) return;
  // A failed combined write may have left its record over partial data:
  // replace it with a tombstone before the slot is reused. Without room for
  // it the slot stays dirty, and reads still refuse the damaged bytes.
  if (retire && HasRoom(kSectorBytes, true) && StartTombstone(slot, OpKind::kClean, nullptr).ok()) {
    return;
  }
  if (slots_[slot].state == SlotState::kWriting) FreeSlot(slot);
}

void NvmeTier::ReleaseOp(Op* op) {
  if (op->staged) pool_->Free(op->staging_offset, op->staging_bytes);
  inflight_bytes_ -= op->budget_bytes;
  --live_ops_;
  delete op;
}

void NvmeTier::FailOp(Op* op, absl::Status status) {
  switch (op->kind) {
    case OpKind::kPut:
      FinishPut(op, status);
      return;
    case OpKind::kRemove:
    case OpKind::kClean:
    case OpKind::kFlush:
      FinishRemove(op, status);
      return;
    case OpKind::kGet:
      op->status = std::move(status);
      op->io_error = true;
      FinishGet(op);
      return;
  }
}

// ---- Get ---------------------------------------------------------------------

absl::Status NvmeTier::GetAsync(uint64_t namespace_id, const BlockKey& key,
                                absl::Span<std::byte> out, GetCallback done) {
  return StartGet(namespace_id, key, out, std::move(done), /*wait_for_room=*/false);
}

std::future<absl::StatusOr<size_t>> NvmeTier::GetAsync(uint64_t namespace_id, const BlockKey& key,
                                                       absl::Span<std::byte> out) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<size_t>>>();
  std::future<absl::StatusOr<size_t>> future = promise->get_future();
  absl::Status s = GetAsync(namespace_id, key, out, [promise](absl::StatusOr<size_t> r) mutable {
    promise->set_value(std::move(r));
  });
  if (!s.ok()) promise->set_value(s);
  return future;
}

absl::StatusOr<size_t> NvmeTier::Get(uint64_t namespace_id, const BlockKey& key,
                                     absl::Span<std::byte> out) {
  KVTIER_RETURN_IF_ERROR(CheckNotCallback("Get"));
  std::promise<absl::StatusOr<size_t>> promise;
  auto future = promise.get_future();
  KVTIER_RETURN_IF_ERROR(StartGet(
      namespace_id, key, out,
      [&promise](absl::StatusOr<size_t> r) { promise.set_value(std::move(r)); },
      /*wait_for_room=*/true));
  return future.get();
}

absl::Status NvmeTier::StartGet(uint64_t namespace_id, const BlockKey& key,
                                absl::Span<std::byte> out, GetCallback done, bool wait_for_room) {
  const NsKey id{namespace_id, key};
  absl::MutexLock lock(&mu_);
  for (;;) {
    if (closing_) return absl::FailedPreconditionError("nvme: the tier is closed");
    auto it = index_.find(id);
    if (it == index_.end() || slots_[it->second].state != SlotState::kLive) {
      ++misses_;
      return absl::NotFoundError(
          absl::StrCat("nvme: chunk ", KeyText(namespace_id, key), " is not in this tier"));
    }
    const uint32_t slot = it->second;
    Slot& s = slots_[slot];
    const uint64_t encoded = kChunkHeaderBytes + s.header.payload_length;
    if (out.size() < encoded) {
      return absl::InvalidArgumentError(
          absl::StrCat("out: ", out.size(), " bytes cannot hold the ", encoded, "-byte chunk"));
    }
    const uint64_t aligned = AlignUp(encoded, kSectorBytes);
    const bool direct = !options_.stage_reads &&
                        reinterpret_cast<uintptr_t>(out.data()) % kSectorBytes == 0 &&
                        out.size() >= aligned;
    if (!HasRoom(aligned, !direct)) {
      if (!wait_for_room) {
        ++busy_rejections_;
        return absl::UnavailableError(absl::StrCat("nvme: ", inflight_bytes_, " of ",
                                                   options_.max_inflight_bytes,
                                                   " in-flight bytes are taken; retry later"));
      }
      auto room = [this, aligned, direct]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return closing_ || HasRoom(aligned, !direct);
      };
      mu_.Await(absl::Condition(&room));
      continue;  // the chunk may have left meanwhile
    }
    Op* op = new Op;
    op->kind = OpKind::kGet;
    op->stage = Stage::kRead;
    op->slot = slot;
    op->id = id;
    op->header = s.header;
    op->sequence = s.sequence;
    op->slot_offset = s.offset;
    op->encoded_bytes = encoded;
    op->aligned_bytes = aligned;
    op->out = out;
    op->budget_bytes = aligned;
    if (direct) {
      ++direct_reads_;
      op->read_buf = out.data();
    } else {
      ++staged_reads_;
      op->staged = true;
      op->staging_offset = *pool_->Allocate(aligned);
      op->staging_bytes = aligned;
      op->read_buf = pool_->base() + op->staging_offset;
    }
    op->get_callback = std::move(done);
    inflight_bytes_ += aligned;
    ++live_ops_;
    if (s.readers++ == 0) ++pinned_slots_;
    classes_[s.cls].policy->OnAccess(slot);
    UpdateEvictable(slot);

    IoRequest r;
    r.opcode = IoOpcode::kRead;
    r.file = file_.get();
    r.offset = s.offset + kSectorBytes;
    r.buf = op->read_buf;
    r.len = static_cast<uint32_t>(aligned);
    r.buf_index = (op->staged && fixed_buffers_) ? 0 : -1;
    r.tag = reinterpret_cast<uint64_t>(op);
    absl::Status submitted = SubmitNow(r);
    if (!submitted.ok()) {
      // Undo: nothing was read and the caller hears the error directly.
      if (--s.readers == 0) --pinned_slots_;
      UpdateEvictable(slot);
      ReleaseOp(op);
      return submitted;
    }
    return absl::OkStatus();
  }
}

absl::Status NvmeTier::VerifyRead(Op* op) {
  if (op->read_result != static_cast<int32_t>(op->aligned_bytes)) {
    op->io_error = true;
    return IoStatus("read", op->aligned_bytes, op->slot_offset + kSectorBytes, volume_path_,
                    op->read_result);
  }
  absl::Span<const std::byte> bytes(op->read_buf, op->encoded_bytes);
  ChunkExpectation expect;
  expect.namespace_id = op->id.ns;
  expect.key = op->id.key;
  expect.layout_signature = op->header.layout_signature;
  expect.verify_payload_checksum = false;  // checked below, fused with the copy
  absl::StatusOr<DecodedChunk> chunk = DecodeChunk(bytes, expect);
  if (!chunk.ok()) {
    return absl::DataLossError(absl::StrCat("nvme: slot ", op->slot, " of ", volume_path_, ": ",
                                            chunk.status().message()));
  }
  const ChunkHeader& h = chunk->header;
  if (h.payload_length != op->header.payload_length ||
      h.payload_checksum != op->header.payload_checksum ||
      h.checksum_type != op->header.checksum_type || h.num_tokens != op->header.num_tokens) {
    return absl::DataLossError(absl::StrCat("nvme: slot ", op->slot, " of ", volume_path_,
                                            ": the chunk header differs from its commit record"));
  }
  uint64_t checksum;
  if (op->staged) {
    std::memcpy(op->out.data(), bytes.data(), kChunkHeaderBytes);
    checksum =
        CopyWithChecksum(h.checksum_type, chunk->payload, op->out.data() + kChunkHeaderBytes);
  } else {
    checksum = PayloadChecksum(h.checksum_type, chunk->payload);
  }
  if (checksum != h.payload_checksum) {
    return absl::DataLossError(absl::StrFormat(
        "nvme: slot %u of %s: chunk %s payload checksum mismatch (stored %016x, computed %016x)",
        op->slot, volume_path_, op->id.key.ToHex(), h.payload_checksum, checksum));
  }
  return absl::OkStatus();
}

void NvmeTier::FinishGet(Op* op) {
  Slot& s = slots_[op->slot];
  if (--s.readers == 0) --pinned_slots_;
  const absl::Status& st = op->status;
  const bool same_chunk = s.state == SlotState::kLive && s.sequence == op->sequence;
  if (st.ok()) {
    ++hits_;
    bytes_read_ += op->header.payload_length;
  } else {
    ++misses_;
    if (op->io_error) {
      ++read_errors_;
    } else {
      ++corrupt_chunks_;
    }
    if (same_chunk) DropChunk(op->slot);
  }
  if (s.readers == 0 && s.state == SlotState::kDraining) FreeSlot(op->slot);
  if (s.state == SlotState::kLive) UpdateEvictable(op->slot);
  absl::StatusOr<size_t> result =
      st.ok() ? absl::StatusOr<size_t>(op->encoded_bytes) : absl::StatusOr<size_t>(st);
  Defer([cb = std::move(op->get_callback), result = std::move(result)]() mutable {
    std::move(cb)(std::move(result));
  });
  ReleaseOp(op);
}

// ---- Remove ------------------------------------------------------------------

absl::Status NvmeTier::Remove(uint64_t namespace_id, const BlockKey& key) {
  KVTIER_RETURN_IF_ERROR(CheckNotCallback("Remove"));
  const NsKey id{namespace_id, key};
  // One tombstone at a time, each flushed before the next: first over every
  // leftover copy of the chunk (see leftovers_), then over the chunk itself.
  // The chunk's own tombstone is the last: it starts only once no leftover
  // copy is left (a slot whose commit sector was being written was waited
  // for), and the index is not looked at again after it. A Put of the same
  // key accepted meanwhile saves a new chunk, after this Remove: it stays
  // (and so would leftover copies of it).
  for (;;) {
    std::promise<absl::Status> promise;
    std::future<absl::Status> future = promise.get_future();
    bool live = false;
    {
      absl::MutexLock lock(&mu_);
      uint32_t slot;
      for (;;) {
        if (closing_) return absl::FailedPreconditionError("nvme: the tier is closed");
        // A slot whose commit sector is being written (a save, a tombstone)
        // is waited for: that write decides whether it still holds a copy.
        std::optional<uint32_t> copy;
        std::optional<uint32_t> busy;
        if (auto lit = leftovers_.find(id); lit != leftovers_.end()) {
          for (uint32_t l : lit->second) {
            const SlotState state = slots_[l].state;
            if (state == SlotState::kFree || state == SlotState::kDraining) {
              copy = l;
              break;
            }
            if (state == SlotState::kWriting || state == SlotState::kRemoving) busy = l;
          }
        }
        auto it = index_.find(id);
        if (!copy.has_value() && !busy.has_value() && it != index_.end() &&
            slots_[it->second].state == SlotState::kWriting) {
          busy = it->second;
        }
        if (!copy.has_value() && busy.has_value()) {
          const uint32_t b = *busy;
          auto settled = [this, b]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return closing_ || (slots_[b].state != SlotState::kWriting &&
                                slots_[b].state != SlotState::kRemoving);
          };
          mu_.Await(absl::Condition(&settled));
          continue;
        }
        if (!copy.has_value() && it == index_.end()) {
          return absl::NotFoundError(
              absl::StrCat("nvme: chunk ", KeyText(namespace_id, key), " is not in this tier"));
        }
        if (!HasRoom(kSectorBytes, true)) {
          auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return closing_ || HasRoom(kSectorBytes, true);
          };
          mu_.Await(absl::Condition(&room));
          continue;
        }
        live = !copy.has_value();
        slot = live ? it->second : *copy;
        break;
      }
      if (live) {
        UnlinkLive(slot);
        ++removes_;
        // Out of the index, its record on disk: a leftover copy until the
        // tombstone completes (and for good if it fails).
        NoteLeftover(slot, id);
      } else if (slots_[slot].state == SlotState::kFree) {
        TakeFree(slot);
      }
      KVTIER_RETURN_IF_ERROR(StartTombstone(
          slot, OpKind::kRemove, [&promise](const absl::Status& st) { promise.set_value(st); }));
    }
    KVTIER_RETURN_IF_ERROR(future.get());
    if (live) return absl::OkStatus();
  }
}

void NvmeTier::FinishRemove(Op* op, const absl::Status& status) {
  if (op->kind == OpKind::kFlush) {  // no slot: only the caller to answer
    if (!status.ok()) ++write_errors_;
    Defer([cb = std::move(op->remove_callback), status]() mutable { std::move(cb)(status); });
    ReleaseOp(op);
    return;
  }
  Slot& s = slots_[op->slot];
  if (!status.ok() && op->io_error) ++write_errors_;
  if (op->kind == OpKind::kClean) --classes_[s.cls].cleaning;
  if (s.readers > 0) {
    s.state = SlotState::kDraining;
  } else {
    FreeSlot(op->slot);
  }
  if (op->remove_callback) {
    Defer([cb = std::move(op->remove_callback), status]() mutable { std::move(cb)(status); });
  }
  ReleaseOp(op);
}

// ---- completion thread -------------------------------------------------------

void NvmeTier::Dispatch(const IoCompletion& c, std::vector<Op*>& reads) {
  if (c.tag == kWakeTag) return;
  if (c.tag == kFlushTag) {
    flush_inflight_ = false;
    std::vector<Op*> group = std::move(flush_group_);
    flush_group_.clear();
    absl::Status s;
    if (c.result < 0) {
      s = IoStatus("fdatasync", 0, 0, volume_path_, c.result);
    }
    for (Op* op : group) {
      if (s.ok()) {
        AdvanceAfterFlush(op);
      } else {
        op->io_error = true;
        FailOp(op, s);
      }
    }
    return;
  }
  // NOLINTNEXTLINE(performance-no-int-to-ptr): the tag is io_uring user data.
  Op* op = reinterpret_cast<Op*>(c.tag);
  if (op->stage == Stage::kRead) {
    op->read_result = c.result;
    reads.push_back(op);
    return;
  }
  const uint64_t len = op->combined                ? kSectorBytes + op->aligned_bytes
                       : op->stage == Stage::kData ? op->aligned_bytes
                                                   : kSectorBytes;
  if (c.result != static_cast<int32_t>(len)) {
    uint64_t offset = slots_[op->slot].offset + (op->stage == Stage::kData ? kSectorBytes : 0);
    op->io_error = true;
    FailOp(op, IoStatus("write", len, offset, volume_path_, c.result));
    return;
  }
  // "process": the next step may start as soon as this write completed (the
  // kernel finishes it even if the process dies). Remove always flushes.
  if (!flush_writes_ && op->kind != OpKind::kRemove) {
    AdvanceAfterFlush(op);
    return;
  }
  awaiting_flush_.push_back(op);
}

void NvmeTier::CompletionLoop() {
  completion_thread_id_.store(std::this_thread::get_id());
  std::vector<IoCompletion> batch(io_->depth());
  for (;;) {
    // The timeout only bounds how long a lost wake-up could stall the loop.
    absl::StatusOr<size_t> n = io_->Reap(absl::MakeSpan(batch), absl::Milliseconds(100));
    if (!n.ok()) {
      std::fprintf(stderr, "kvtier nvme: %s\n", std::string(n.status().message()).c_str());
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      n = size_t{0};
    }
    std::vector<Op*> reads;
    {
      absl::MutexLock lock(&mu_);
      outstanding_ -= static_cast<uint32_t>(*n);
      for (size_t i = 0; i < *n; ++i) Dispatch(batch[i], reads);
      MaybeStartFlush();
      DrainPending();
    }
    if (!reads.empty()) {
      for (Op* op : reads) op->status = VerifyRead(op);
      absl::MutexLock lock(&mu_);
      for (Op* op : reads) FinishGet(op);
    }
    std::vector<Deferred> ready;
    bool exit;
    {
      absl::MutexLock lock(&mu_);
      ready.swap(deferred_);
      exit = stop_ && live_ops_ == 0 && outstanding_ == 0 && pending_.empty();
    }
    for (Deferred& fn : ready) std::move(fn)();
    if (exit) break;
  }
  completion_thread_id_.store(std::thread::id());
}

// ---- queries -----------------------------------------------------------------

bool NvmeTier::Contains(uint64_t namespace_id, const BlockKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(NsKey{namespace_id, key});
  return it != index_.end() && slots_[it->second].state == SlotState::kLive;
}

std::vector<BlockKey> NvmeTier::KeysOf(uint64_t namespace_id) const {
  std::vector<BlockKey> keys;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, slot] : index_) {
    if (id.ns == namespace_id && slots_[slot].state == SlotState::kLive) keys.push_back(id.key);
  }
  // Chunks with a leftover copy whose key is not listed above yet: a Remove
  // of each tombstones its copies (see Remove).
  for (const auto& [id, held] : leftovers_) {
    if (id.ns != namespace_id) continue;
    auto it = index_.find(id);
    if (it == index_.end() || slots_[it->second].state != SlotState::kLive) keys.push_back(id.key);
  }
  return keys;
}

bool NvmeTier::CouldExist(uint64_t namespace_id, const BlockKey& key) const {
  absl::MutexLock lock(&mu_);
  return index_.contains(NsKey{namespace_id, key});
}

absl::StatusOr<NvmeChunkInfo> NvmeTier::Describe(uint64_t namespace_id, const BlockKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(NsKey{namespace_id, key});
  if (it == index_.end() || slots_[it->second].state != SlotState::kLive) {
    return absl::NotFoundError(
        absl::StrCat("nvme: chunk ", KeyText(namespace_id, key), " is not in this tier"));
  }
  const Slot& s = slots_[it->second];
  NvmeChunkInfo info;
  info.meta.namespace_id = namespace_id;
  info.meta.key = key;
  info.meta.parent = s.parent;
  info.meta.layout_signature = s.header.layout_signature;
  info.meta.num_tokens = s.header.num_tokens;
  info.encoded_bytes = kChunkHeaderBytes + s.header.payload_length;
  info.direct_bytes = AlignUp(info.encoded_bytes, kSectorBytes);
  info.volume_offset = s.offset;
  return info;
}

absl::Status NvmeTier::Flush() {
  KVTIER_RETURN_IF_ERROR(CheckNotCallback("Flush"));
  absl::MutexLock lock(&mu_);
  const uint64_t target = put_counter_;
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return inflight_puts_.empty() || *inflight_puts_.begin() > target;
  };
  mu_.Await(absl::Condition(&done));
  if (flush_writes_ || closing_) return absl::OkStatus();
  // "process": make what completed so far survive a power loss too, with a
  // flush through the ring (shared with any other flush waiting).
  std::promise<absl::Status> promise;
  std::future<absl::Status> future = promise.get_future();
  Op* op = new Op;
  op->kind = OpKind::kFlush;
  op->remove_callback = [&promise](const absl::Status& st) { promise.set_value(st); };
  ++live_ops_;
  awaiting_flush_.push_back(op);
  MaybeStartFlush();
  DrainPending();
  mu_.Unlock();
  absl::Status s = future.get();
  mu_.Lock();
  return s;
}

TierCapabilities NvmeTier::Capabilities() const {
  TierCapabilities c;
  c.persistent = true;
  c.shared = false;
  c.zero_copy = false;
  c.max_chunk_bytes = class_data_bytes_.back();
  return c;
}

TierStats NvmeTier::Stats() const {
  absl::MutexLock lock(&mu_);
  const nvme::VolumeGeometry& g = superblock_.geometry;
  TierStats t;
  t.tier = Tier::kNvme;
  for (uint32_t c = 0; c < classes_.size(); ++c) {
    const uint64_t slot_bytes = class_data_bytes_[c] + kSectorBytes;
    if (!g.regions()) t.capacity_bytes += slot_bytes * classes_[c].slots;
    t.used_bytes += slot_bytes * classes_[c].live;
    t.chunks += classes_[c].live;
  }
  if (g.regions()) t.capacity_bytes = g.region_count * g.region_bytes;
  t.pinned_chunks = pinned_slots_;
  t.hits = hits_;
  t.misses = misses_;
  t.saves = saves_;
  t.save_rejections = save_rejections_;
  t.evictions = evictions_;
  t.bytes_written = bytes_written_;
  t.bytes_read = bytes_read_;
  t.corrupt_chunks = corrupt_chunks_;
  return t;
}

NvmeTierStats NvmeTier::DetailedStats() const {
  NvmeTierStats d;
  d.tier = Stats();
  d.io_mode = options_.io_mode;
  d.durability = options_.durability;
  d.layout = superblock_.geometry.regions() ? "regions" : "classes";
  d.regions = superblock_.geometry.region_count;
  d.fixed_buffers = fixed_buffers_;
  d.queue_depth = options_.queue_depth;
  d.volume_path = volume_path_;
  d.open_source = open_source_;
  d.snapshot_rejected = snapshot_rejected_;
  d.open_seconds = open_seconds_;
  d.recovered_chunks = recovered_chunks_;
  d.damaged_records = damaged_records_;
  d.max_inflight_bytes = options_.max_inflight_bytes;
  absl::MutexLock lock(&mu_);
  d.inflight_bytes = inflight_bytes_;
  d.busy_rejections = busy_rejections_;
  d.staged_reads = staged_reads_;
  d.direct_reads = direct_reads_;
  d.write_errors = write_errors_;
  d.read_errors = read_errors_;
  d.flushes = flushes_;
  d.tombstones = tombstones_;
  d.removes = removes_;
  d.leftover_copies = leftover_copies_;
  d.withheld_slots = withheld_slots_;
  d.damaged_regions = damaged_regions_;
  for (int32_t c : region_class_) d.regions_assigned += c >= 0 ? 1 : 0;
  for (uint32_t c = 0; c < classes_.size(); ++c) {
    if (classes_[c].slots > 0) d.slot_sizes.push_back(class_data_bytes_[c]);
  }
  return d;
}

}  // namespace kvtier
