// NvmeTier: tier T2, chunks in fixed-size slots on local NVMe.
//
// The tier keeps one volume: a preallocated file FOLDER/kvtier-nvme.dat in a
// configured folder, or a whole block device. A chunk lives in a slot of the
// smallest size that holds it. The slot sizes come either from explicit
// slot_classes (one fixed region per class, sized up front), or, when
// slot_classes is empty, on demand: the volume (capacity_bytes) is cut into
// regions of region_bytes, and a region is given to one slot size (a step of
// a geometric ladder: 4 KiB-aligned, at most 12.5% apart) the first time a
// save needs that size. Its region header is written and flushed before any
// of its slots is used; a region never changes its slot size afterwards, so
// once no region is free a save evicts within its own slot size. I/O runs on
// io_uring (liburing), with O_DIRECT by default and the staging memory
// registered as fixed buffers. docs/nvme-format.md describes the bytes on
// disk.
//
// Durability (option `durability`).
//  * "power": a save writes the slot's data area, flushes (fdatasync, shared
//    by every write that completed before it: group commit), writes the
//    slot's commit record and flushes again; only then is it acknowledged.
//    Before a slot that held a chunk is rewritten its commit record is
//    replaced by a tombstone and flushed (each class keeps a few free slots
//    tombstoned ahead of need, see clean_slots, so most saves skip that
//    step). A power loss at any moment leaves each slot with its old chunk
//    intact, empty, or with the new chunk intact; nothing acknowledged is
//    lost.
//  * "process" (default): a save is one write of the slot's commit record
//    and data area together, acknowledged when it completed; no flush, no
//    tombstone first. The kernel finishes every write it accepted even when
//    the process is killed and cancels whole the ones it has not started,
//    so after a kill -9 each slot holds its old record over its old bytes
//    or the new record over the new bytes, and nothing acknowledged is lost.
//    After a power loss, unflushed writes may be missing or land in part, in
//    any order: recent saves may be lost, and a commit record may describe
//    a data area holding other bytes (the old record over new bytes, or the
//    new record over old or partial bytes). Such a chunk is never served:
//    the record carries a copy of the chunk header (namespace, key, length,
//    payload checksum), every read checks the data area against it and the
//    payload checksum, and a mismatch is a DataLoss miss that drops the
//    chunk. A stale record cannot validate new bytes, which would have to
//    be the same chunk. A save whose write failed has its record replaced by
//    a tombstone before the slot is reused. Flush() makes every save
//    acknowledged before it power-safe.
// In both modes Remove writes its tombstone and flushes before returning,
// so a removed chunk stays removed across any crash, and a region header is
// flushed before any slot of its region is written.
//
// Recovery. Opening the volume rebuilds the index from the snapshot written
// by the last clean Close when it is valid (version, volume generation and
// geometry, checksum), and otherwise by reading every region header and
// every slot's commit record. The snapshot is invalidated on disk before the
// tier accepts work, so a crash after an open never trusts it.
//
// Integrity. Every read checks the chunk header against the commit record
// and the payload checksum; a chunk that fails is dropped, counted in
// TierStats::corrupt_chunks, and reported as DataLoss (callers treat it as a
// miss).
//
// Eviction. A Put into a full slot size evicts a chain tail of that size (a
// chunk with no resident child in this tier), in the eviction policy's order
// (least recently used first with "lru"); a chunk being read or written is
// never evicted or reused. ResourceExhausted when nothing of that size is
// evictable (with on-demand regions: and no region is free).
//
// Asynchronous use. PutAsync and GetAsync never wait for the disk, except
// that a PutAsync that opens a new region waits for its 4 KiB header write
// and flush (once per region): they either reject the call at once (the
// returned Status; the callback is then never called), or accept it and call
// the callback exactly once, later, on the tier's completion thread. At most
// max_inflight_bytes are in flight; beyond that async calls fail with
// Unavailable (the synchronous Tier methods wait for room instead). Callbacks
// must be short and must not call the synchronous methods (Put, Get, Remove,
// Flush, Close), which fail with FailedPrecondition from that thread; they
// may call PutAsync and GetAsync.
//
// Thread-safety: every method may be called from any number of threads.
#ifndef KVTIER_SRC_TIERS_NVME_NVME_TIER_H_
#define KVTIER_SRC_TIERS_NVME_NVME_TIER_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "kvtier/keys.h"
#include "src/common/env.h"
#include "src/core/chunk_format.h"
#include "src/core/eviction.h"
#include "src/tiers/nvme/nvme_format.h"
#include "src/tiers/nvme/staging_pool.h"
#include "src/tiers/tier.h"

namespace kvtier {

// One slot size class.
struct NvmeSlotClass {
  // Largest encoded chunk (64-byte header + payload) a slot holds, in bytes.
  // Each slot takes this rounded up to 4 KiB plus a 4 KiB commit sector.
  uint64_t max_chunk_bytes = 0;
  // Bytes of the volume given to the class, rounded down to whole slots.
  uint64_t capacity_bytes = 0;
};

// The volume's file name inside a folder path.
inline constexpr char kNvmeVolumeFileName[] = "kvtier-nvme.dat";

struct NvmeTierOptions {
  // A folder (the volume is FOLDER/kvtier-nvme.dat, created and preallocated
  // on first use) or a block device used whole from offset 0.
  std::string path;
  // Slot classes in ascending max_chunk_bytes (0 to 32 classes). Empty:
  // slot sizes are chosen on demand, per region (capacity_bytes,
  // region_bytes).
  std::vector<NvmeSlotClass> slot_classes;
  // Bytes of the volume when slot_classes is empty (rounded down to whole
  // regions after the superblock and snapshot region); must be 0 with
  // explicit slot_classes. At most 16 TiB.
  uint64_t capacity_bytes = 0;
  // Bytes per region when slot_classes is empty: a multiple of 1 MiB, from
  // 1 MiB to 1 GiB. The largest chunk accepted is the largest slot size of
  // which four fit in a region (just under a quarter of it).
  uint64_t region_bytes = 64ull << 20;
  // When a Put is acknowledged: "process" (its write completed: survives a
  // killed process, not a power loss) or "power" (its writes flushed:
  // survives a power loss). Not stored in the volume: either mode opens any
  // volume. See the comment at the top of this file.
  std::string durability = "process";
  // "direct" (O_DIRECT, bypassing the page cache) or "buffered" (for file
  // systems that refuse O_DIRECT).
  std::string io_mode = "direct";
  // io_uring entries: reads, writes and flushes in flight at once (1..4096).
  uint32_t queue_depth = 32;
  // Bytes of staging memory for in-flight reads and writes: a multiple of
  // 4096, at least the largest slot, at most 1 GiB. Async calls beyond it
  // fail with Unavailable.
  uint64_t max_inflight_bytes = 64ull << 20;
  // Register the staging memory with io_uring (fixed buffers); when the
  // kernel refuses, plain buffers are used and DetailedStats says so.
  bool register_buffers = true;
  // Read every chunk into the staging memory (huge pages: one request per
  // read) and copy it out while checking its checksum, instead of reading
  // straight into the caller's buffer when that is sector-aligned. Direct
  // reads save the copy but cost one device segment per 4 KiB page of the
  // caller's buffer, which splits reads of scattered pages.
  bool stage_reads = true;
  // Write an index snapshot at Close so the next open skips the slot scan.
  bool write_snapshot = true;
  // Format a block device that holds no kvtier volume (destroys its
  // contents). Folders are always formatted when the volume file is new.
  bool format_device = false;
  // Eviction among chain tails (a name NewEvictionPolicy knows; "lru").
  std::string eviction_policy = "lru";
  // Milliseconds Create waits for the volume's lock held by another process.
  // The lock of a process that died lingers until the kernel has drained
  // its in-flight io_uring requests.
  uint32_t lock_wait_ms = 5000;
  // Free slots per class whose commit record is invalidated ahead of need, so
  // a save into a full tier skips the tombstone step (the tier evicts this
  // many chunks early). -1 picks min(queue_depth, slots in the class / 16).
  // Used with durability "power" only ("process" saves need no clean slot).
  int32_t clean_slots = -1;
  // Files and I/O; nullptr means Env::Default(). Not owned; must outlive the
  // tier.
  Env* env = nullptr;
  // Told (namespace id, key) of each chunk the tier evicts to make room.
  // Called with the tier's lock held: it must only queue and return.
  std::function<void(uint64_t namespace_id, const BlockKey& key)> on_evict;

  absl::Status Validate() const;
};

// NVMe-specific counters beside the common TierStats.
struct NvmeTierStats {
  TierStats tier;
  std::string io_mode;               // "direct" or "buffered"
  std::string durability;            // "process" or "power"
  std::string layout;                // "classes" (explicit slot_classes) or "regions" (on demand)
  uint64_t regions = 0;              // regions in the volume (on-demand layout)
  uint64_t regions_assigned = 0;     // regions given to a slot size
  uint64_t damaged_regions = 0;      // region headers that failed their checks at open (unused)
  std::vector<uint64_t> slot_sizes;  // data bytes of each slot size in use
  bool fixed_buffers = false;        // staging memory registered with io_uring
  uint32_t queue_depth = 0;
  std::string volume_path;        // the file or block device
  std::string open_source;        // how the index was built: "new", "snapshot" or "scan"
  std::string snapshot_rejected;  // why a snapshot present at open was not used
  double open_seconds = 0;        // time spent rebuilding the index at open
  uint64_t recovered_chunks = 0;  // chunks found at open
  uint64_t damaged_records = 0;   // commit records that failed their checks at open
  uint64_t inflight_bytes = 0;    // gauge: staging bytes held by operations
  uint64_t max_inflight_bytes = 0;
  uint64_t busy_rejections = 0;  // async calls answered Unavailable (no room in flight)
  uint64_t staged_reads = 0;     // reads through the staging memory, copied out
  uint64_t direct_reads = 0;     // reads straight into the caller's buffer
  uint64_t write_errors = 0;     // writes or flushes that failed (the Put failed)
  uint64_t read_errors = 0;      // reads that failed with an I/O error
  uint64_t flushes = 0;          // fdatasync calls
  uint64_t tombstones = 0;       // commit records invalidated (reuse, Remove)
  uint64_t removes = 0;          // chunks removed by Remove
  // Gauge: (slot, chunk) pairs whose commit record a Remove of that chunk
  // must still tombstone (leftover copies; see Remove).
  uint64_t leftover_copies = 0;
  // Gauge: free slots kept out of use until a tombstone replaces their
  // record: too many leftover copies in one slot, or a commit sector that
  // could neither be read nor tombstoned at open.
  uint64_t withheld_slots = 0;
};

// What the tier knows about one resident chunk.
struct NvmeChunkInfo {
  ChunkMeta meta;
  uint64_t encoded_bytes = 0;  // header + payload: the smallest buffer GetAsync takes
  uint64_t direct_bytes = 0;   // encoded_bytes rounded up to 4 KiB: a 4 KiB-aligned
                               // buffer this large is filled without a staging copy
  uint64_t volume_offset = 0;  // where its slot starts in the volume (diagnostics)
};

class NvmeTier final : public StorageTier {
 public:
  using PutCallback = absl::AnyInvocable<void(absl::Status) &&>;
  using GetCallback = absl::AnyInvocable<void(absl::StatusOr<size_t>) &&>;

  // Opens (creating or formatting when new) the volume at options.path and
  // rebuilds the index. Errors name the path and carry the system's text:
  // InvalidArgument for bad options (naming the field; "io_mode" when the
  // file system refuses O_DIRECT), NotFound for a missing folder,
  // PermissionDenied for a read-only one, ResourceExhausted when the file
  // system cannot hold the volume, FailedPrecondition for a volume of another
  // geometry, a device without a volume (and format_device false), or a
  // volume in use by another process.
  static absl::StatusOr<std::unique_ptr<NvmeTier>> Create(const NvmeTierOptions& options);

  // Close(), ignoring its status.
  ~NvmeTier() override;

  NvmeTier(const NvmeTier&) = delete;
  NvmeTier& operator=(const NvmeTier&) = delete;

  // Stores `encoded` (a chunk from EncodeChunk whose header matches `meta`).
  // The bytes are copied before PutAsync returns. `done` gets OK once the
  // chunk is durable (as `durability` says) and readable, or the error that
  // stopped it. A save that opens a new region (on-demand layout) first
  // writes and flushes the region's header. A key
  // already stored or being stored is not written again: `done` gets the
  // outcome of the existing copy.
  // Rejections (done is not called): InvalidArgument (bad chunk, meta
  // mismatch, larger than every slot size), Unavailable (max_inflight_bytes
  // in flight), ResourceExhausted (slot size full, nothing evictable, no free
  // region), an I/O error writing a new region's header,
  // FailedPrecondition (closed).
  absl::Status PutAsync(const ChunkMeta& meta, absl::Span<const std::byte> encoded,
                        PutCallback done);
  // PutAsync with a future: ready with the rejection or the outcome.
  std::future<absl::Status> PutAsync(const ChunkMeta& meta, absl::Span<const std::byte> encoded);

  // Reads the encoded chunk into `out` and checks it. `out` must stay valid
  // until `done` runs; with stage_reads off and a 4 KiB-aligned `out` of at
  // least direct_bytes (see Describe) the device writes into it directly. `done` gets the
  // encoded size, DataLoss when the stored bytes failed a check (the chunk is
  // dropped), or Unavailable for an I/O error (the chunk is dropped).
  // Rejections (done is not called): NotFound (not stored, or still being
  // written), InvalidArgument (out smaller than the chunk), Unavailable (no
  // room in flight), FailedPrecondition (closed).
  absl::Status GetAsync(uint64_t namespace_id, const BlockKey& key, absl::Span<std::byte> out,
                        GetCallback done);
  std::future<absl::StatusOr<size_t>> GetAsync(uint64_t namespace_id, const BlockKey& key,
                                               absl::Span<std::byte> out);

  // True when the chunk is stored and readable now (cheap: an index lookup).
  bool Contains(uint64_t namespace_id, const BlockKey& key) const;
  // Keys of the readable chunks of one namespace, and of its chunks that are
  // not readable but may still have a committed record on disk (a leftover
  // copy: the chunk was dropped after a failed read or save, or evicted for
  // a save still in flight); each key once. For removing a namespace:
  // calling Remove on every key returned makes all of them stay removed
  // after a crash (Remove answers NotFound for the unreadable ones, having
  // tombstoned their records). A snapshot: chunks saved after it are not
  // listed.
  std::vector<BlockKey> KeysOf(uint64_t namespace_id) const;
  // Meta and sizes of a stored chunk; NotFound otherwise.
  absl::StatusOr<NvmeChunkInfo> Describe(uint64_t namespace_id, const BlockKey& key) const;

  // Waits for every operation in flight, writes the index snapshot (when
  // write_snapshot, and only after an open that completed) and closes the
  // volume. Later calls fail with
  // FailedPrecondition. Returns the snapshot's write error, if any; safe to
  // call twice.
  absl::Status Close();

  NvmeTierStats DetailedStats() const;

  // StorageTier. Put and Get wait on the asynchronous path (and, unlike PutAsync and
  // GetAsync, wait for room in flight instead of failing with Unavailable).
  std::string_view Name() const override { return "nvme"; }
  TierCapabilities Capabilities() const override;
  absl::Status Put(const ChunkMeta& meta, absl::Span<const std::byte> encoded) override;
  absl::StatusOr<size_t> Get(uint64_t namespace_id, const BlockKey& key,
                             absl::Span<std::byte> out) override;
  bool CouldExist(uint64_t namespace_id, const BlockKey& key) const override;
  // Removes the chunk and makes the removal durable (its commit record is
  // replaced by a tombstone) before returning; waits for a Put of the same
  // key in flight. Every other slot whose commit record may still name the
  // chunk (left by a read that failed and dropped it, an eviction, or a
  // failed save) is tombstoned first, so no older copy comes back after a
  // crash either. NotFound when absent (older copies are still tombstoned).
  // The chunk's own slot goes last, and its tombstone ends the call: a Put
  // of the same key arriving meanwhile is a new chunk and stays. An I/O
  // error fails the call; a retry tombstones what is left (and says
  // NotFound when the failed call had already taken the chunk out).
  absl::Status Remove(uint64_t namespace_id, const BlockKey& key) override;
  // Waits until every Put accepted before the call has completed. With
  // durability "power" completed Puts are already durable; with "process" it
  // then flushes the volume (fdatasync), so they survive a power loss too.
  absl::Status Flush() override;
  TierStats Stats() const override;

 private:
  struct NsKey {
    uint64_t ns = 0;
    BlockKey key;
    friend bool operator==(const NsKey& a, const NsKey& b) {
      return a.ns == b.ns && a.key == b.key;
    }
    template <typename H>
    friend H AbslHashValue(H h, const NsKey& k) {
      return H::combine(std::move(h), k.ns, k.key);
    }
  };

  struct Op;  // one Put, Get or Remove in flight (nvme_tier.cc)

  enum class SlotState : uint8_t {
    kFree,      // on a free list
    kWriting,   // owned by a Put; in the index but not readable
    kLive,      // committed: in the index and readable
    kRemoving,  // out of the index; its tombstone is being written
    kDraining,  // out of the index; waits for its readers before going free
  };

  struct Slot {
    uint64_t offset = 0;  // of its commit sector in the volume
    SlotState state = SlotState::kFree;
    bool disk_dirty = false;  // its commit sector may hold a valid record
    uint16_t cls = 0;
    uint32_t readers = 0;
    uint32_t depth = 0;  // resident ancestors in this tier when it went live
    uint64_t sequence = 0;
    NsKey id;
    BlockKey parent;
    ChunkHeader header;
    Op* writer = nullptr;  // the Put owning a kWriting slot
    // kFree but on no free list: kept out of use until a tombstone to it
    // succeeds (see FreeSlot, LoadSnapshot).
    bool withheld = false;
  };

  // kClean: a tombstone written ahead of need (see clean_slots). kFlush: a
  // Flush() waiting for a flush of the volume ("process" durability).
  enum class OpKind : uint8_t { kPut, kGet, kRemove, kClean, kFlush };
  enum class Stage : uint8_t { kTombstone, kData, kCommit, kRead };

  struct ClassState {
    std::deque<uint32_t> free_clean;  // free slots without a valid record on disk
    std::deque<uint32_t> free_dirty;  // free slots that need a tombstone first
    std::unique_ptr<EvictionPolicy> policy;
    uint64_t live = 0;
    uint64_t reserve = 0;   // clean free slots to keep ready
    uint64_t cleaning = 0;  // kClean operations in flight
    uint64_t slots = 0;     // slots of this size in the volume
    bool opening = false;   // a region is being assigned to this size
  };

  // Slots laid out one after another: a class, or a region.
  struct SlotRun {
    uint64_t offset = 0;      // commit sector of the first slot
    uint64_t slot_bytes = 0;  // commit sector + data area
    uint64_t count = 0;
    uint32_t first_slot = 0;  // in-memory id of the first slot
  };

  using Deferred = absl::AnyInvocable<void() &&>;

  explicit NvmeTier(const NvmeTierOptions& options);

  absl::Status Open();
  absl::Status OpenVolume();
  absl::Status FormatVolume();
  absl::Status Recover();
  absl::Status LoadSnapshot(std::string* rejected);
  absl::Status Scan();
  // Reads each of `jobs` (offset, length) through io_uring, a window at a
  // time, and calls on_read(i, bytes) for each jobs[i] read in full. A read
  // that fails fails the call (no new read starts), or, when `failed_jobs`
  // is set, has its index appended to *failed_jobs while the others go on. Returns
  // only once every read it submitted has completed (so none lands in freed
  // memory), except when the ring itself fails (Submit or Reap): then the
  // reads' buffer is leaked, ring_abandoned_ is set and the error returned;
  // the ring must not be used again (the open fails).
  absl::Status ReadAll(absl::Span<const std::pair<uint64_t, uint64_t>> jobs,
                       absl::FunctionRef<void(size_t, const std::byte*)> on_read,
                       std::vector<size_t>* failed_jobs = nullptr);
  absl::Status InvalidateSnapshot();
  absl::Status WriteSnapshot();

  absl::Status StartPut(const ChunkMeta& meta, absl::Span<const std::byte> encoded,
                        PutCallback done, bool wait_for_room);
  absl::Status StartGet(uint64_t namespace_id, const BlockKey& key, absl::Span<std::byte> out,
                        GetCallback done, bool wait_for_room);
  absl::Status CheckNotCallback(absl::string_view method) const;

  void CompletionLoop();
  void Dispatch(const IoCompletion& c, std::vector<Op*>& reads) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status VerifyRead(Op* op);
  void AdvanceAfterFlush(Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishPut(Op* op, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishGet(Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishRemove(Op* op, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailOp(Op* op, absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseOp(Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status SubmitNow(const IoRequest& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Enqueue(const IoRequest& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DrainPending() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeStartFlush() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Defer(Deferred fn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  IoRequest WriteRequest(Op* op, uint64_t offset, std::byte* buf, uint64_t len) const;

  bool HasRoom(uint64_t bytes, bool staged) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<uint32_t> AcquireSlot(uint32_t cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RefillClean(uint32_t cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status StartTombstone(uint32_t slot, OpKind kind, PutCallback done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LinkLive(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnlinkLive(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateEvictable(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropChunk(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Leftover copies (see leftovers_). NoteLeftover: `slot`'s commit sector
  // may hold a committed record of `id`. ForgetLeftovers: a tombstone or a
  // new commit record written there completed, replacing any such record.
  void NoteLeftover(uint32_t slot, const NsKey& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ForgetLeftovers(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes a free slot off its free list, or out of the withheld ones.
  void TakeFree(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the slot free and puts it on a free list, unless it holds
  // kMaxLeftoverKeysPerSlot leftover copies: then it is withheld (kept out
  // of use) until a Remove's tombstone to it succeeds.
  void FreeSlot(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Withhold(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<uint32_t> ClassFor(uint64_t encoded_bytes) const;
  // Appends `count` free slots (not yet on a free list) of class `cls`.
  uint32_t AddSlots(uint32_t cls, uint64_t offset, uint64_t count)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives a free region to class `cls` (region layout): writes and flushes
  // its header with mu_ released, then adds its slots as free and clean.
  absl::Status OpenRegion(uint32_t cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AssignRegion(uint32_t region, uint32_t cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateReserve(uint32_t cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // On-disk slot id (commit records, snapshot) of an in-memory slot, and back.
  uint32_t DiskSlotId(uint32_t slot) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<uint32_t> SlotOfDiskId(uint32_t disk_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const NvmeTierOptions options_;
  Env* const env_;
  const bool direct_;
  const bool flush_writes_;  // durability "power"
  // Data bytes of each slot class (explicit classes, or the ladder); set at
  // open.
  std::vector<uint64_t> class_data_bytes_;
  std::string volume_path_;
  std::unique_ptr<File> file_;
  nvme::Superblock superblock_;
  bool fresh_volume_ = false;
  std::unique_ptr<AsyncIo> io_;
  std::unique_ptr<nvme::StagingPool> pool_;
  bool fixed_buffers_ = false;
  std::thread completion_thread_;
  std::atomic<std::thread::id> completion_thread_id_{};
  // Set as the last step of a successful Open. Close touches the volume
  // (the snapshot) only when it is set: a failed open may have stopped
  // before the index was rebuilt, or at a volume that is not this tier's.
  bool opened_ = false;
  // Set at open when ReadAll gave up on the ring with reads still in it:
  // their completions would be taken for those of a later ReadAll, so the
  // open fails instead of scanning.
  bool ring_abandoned_ = false;

  // Set at open, read-only afterwards.
  std::string open_source_;
  std::string snapshot_rejected_;
  double open_seconds_ = 0;
  uint64_t recovered_chunks_ = 0;
  uint64_t damaged_records_ = 0;

  mutable absl::Mutex mu_;
  // A deque: slots are appended when a region is assigned, and references
  // to existing slots stay valid.
  std::deque<Slot> slots_ ABSL_GUARDED_BY(mu_);
  // Region layout: per region its class, kRegionFree or kRegionDamaged, and
  // its first slot; the free regions in ascending order.
  std::vector<int32_t> region_class_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> region_first_slot_ ABSL_GUARDED_BY(mu_);
  std::deque<uint32_t> free_regions_ ABSL_GUARDED_BY(mu_);
  uint64_t damaged_regions_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<ClassState> classes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<NsKey, uint32_t> index_ ABSL_GUARDED_BY(mu_);
  // Live chunks per (namespace, parent key): a chunk with an entry here has
  // resident children and is not evictable.
  absl::flat_hash_map<NsKey, uint32_t> children_ ABSL_GUARDED_BY(mu_);
  // Leftover copies: slots whose commit sector may still hold a committed
  // record of a chunk that is no longer in them (the chunk was dropped after
  // a failed read, evicted for a save that has not overwritten the record
  // yet or failed to, or removed by a tombstone not yet written or failed;
  // or a failed save may have left its own record), by key; and the keys by
  // slot. A scan after a crash
  // would bring such a record back, so Remove tombstones these slots as
  // well. An entry goes when a tombstone or a new commit record written
  // there completes. Few and short-lived: failures, or evictions in flight.
  // At most kMaxLeftoverKeysPerSlot keys per slot: a slot that reaches it
  // (saves into it keep failing) is withheld, so none is added (FreeSlot).
  absl::flat_hash_map<NsKey, std::vector<uint32_t>> leftovers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, std::vector<NsKey>> leftover_keys_ ABSL_GUARDED_BY(mu_);
  uint64_t leftover_copies_ ABSL_GUARDED_BY(mu_) = 0;  // entries of leftover_keys_'s lists
  uint64_t withheld_slots_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t inflight_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;  // requests in the ring
  std::deque<IoRequest> pending_ ABSL_GUARDED_BY(mu_);
  std::vector<Op*> awaiting_flush_ ABSL_GUARDED_BY(mu_);
  std::vector<Op*> flush_group_ ABSL_GUARDED_BY(mu_);
  bool flush_inflight_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Deferred> deferred_ ABSL_GUARDED_BY(mu_);
  uint64_t live_ops_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pinned_slots_ ABSL_GUARDED_BY(mu_) = 0;  // slots with readers
  uint64_t put_counter_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<uint64_t> inflight_puts_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status close_status_ ABSL_GUARDED_BY(mu_);
  absl::Mutex close_mu_;  // serializes Close

  // Counters (guarded by mu_).
  uint64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t saves_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t save_rejections_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_written_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_read_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t corrupt_chunks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t busy_rejections_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t staged_reads_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t direct_reads_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t write_errors_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t read_errors_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t flushes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t tombstones_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t removes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier

#endif  // KVTIER_SRC_TIERS_NVME_NVME_TIER_H_
