// T3: chunks in Azure Blob Storage, shared by every node that can reach the
// account.
//
// Object names are <prefix>/<namespace id, 16 hex digits>/<key, 32 hex
// digits>, so any node finds a chunk from its namespace and key alone, and
// namespaces never share an object. Objects hold the sealed chunk (the
// 64-byte header of src/core/chunk_format.h, then the payload) and the
// parent key in the metadata "kvtier_parent"; a download is verified
// (namespace, key, layout, payload checksum) before anything is served, and
// a mismatch is a counted miss.
//
// Writes are write-behind: Enqueue copies the chunk into a bounded queue
// (queue_chunks, queue_bytes) that upload_workers threads drain; a full queue
// skips the write (counted). The tier remembers which chunks this node
// uploaded (the local record, bounded by max_record_chunks, least recently
// used forgotten first); Lookup consults it, and probes Blob for the rest when
// `probe`. With capacity_bytes, the record also bounds the bytes this node
// keeps in Blob: what it forgets is deleted (Blob as a bounded cache).
//
// Faults. The HTTP client retries 429/5xx/connection errors with backoff
// within each request's deadline. When a request still fails for want of an
// answer (Unavailable, DeadlineExceeded), the tier turns degraded: it logs
// one line, reads and probes answer "not here" at once and writes are
// skipped (counted), so the cache serves DRAM and NVMe only. A background
// thread tries the endpoint every recheck_ms and clears the state (logging
// again) when it answers; so does any successful request.
//
// Thread-safety: every method may be called from any number of threads.
#ifndef KVTIER_SRC_TIERS_BLOB_BLOB_TIER_H_
#define KVTIER_SRC_TIERS_BLOB_BLOB_TIER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "src/tiers/blob/blob_client.h"
#include "src/tiers/tier.h"

namespace kvtier {

// Receives the tier's log lines (degraded, recovered). Must be thread-safe.
using BlobLogFn = std::function<void(const std::string& line)>;

// A chunk read from Blob and verified.
struct BlobChunk {
  ChunkMeta meta;
  std::vector<std::byte> encoded;  // header + payload
  absl::Span<const std::byte> payload() const { return absl::MakeConstSpan(encoded).subspan(64); }
};

// Counters of the tier (monotonic unless marked as gauges).
struct BlobTierStats {
  bool degraded = false;  // gauge
  uint64_t degraded_events = 0;
  uint64_t uploaded = 0;
  uint64_t upload_failures = 0;
  uint64_t already_stored = 0;  // enqueues of chunks the record has
  uint64_t skipped_queue_full = 0;
  uint64_t skipped_degraded = 0;
  uint64_t queued = 0;           // gauge
  uint64_t queued_bytes = 0;     // gauge
  uint64_t recorded = 0;         // gauge: chunks in the local record
  uint64_t fetched = 0;          // chunks downloaded and verified
  uint64_t fetch_misses = 0;     // not there, unreachable or out of time
  uint64_t corrupt = 0;          // downloads that failed verification
  uint64_t deadline_misses = 0;  // reads or probes cut short by the deadline
  uint64_t probes = 0;
  uint64_t probe_hits = 0;
  uint64_t bytes_uploaded = 0;             // encoded chunk bytes
  uint64_t bytes_downloaded = 0;           // encoded chunk bytes
  uint64_t namespace_objects_deleted = 0;  // objects deleted by RemoveNamespace
  uint64_t recorded_bytes = 0;             // gauge: object bytes of the local record
  uint64_t capacity_deletions = 0;         // objects forgotten past capacity_bytes, deletion queued
  uint64_t skipped_deleting = 0;           // uploads skipped: the object's deletion is pending
  BlobClientStats http;
};

class BlobTier {
 public:
  // Validates `options`, builds the client and creates the container.
  // PermissionDenied (naming the account) when the credentials are refused;
  // an endpoint that does not answer starts the tier degraded.
  static absl::StatusOr<std::unique_ptr<BlobTier>> Create(const BlobCacheOptions& options,
                                                          BlobLogFn log = nullptr);
  // Close().
  ~BlobTier();

  // The object name of a chunk.
  std::string ObjectName(uint64_t namespace_id, const BlockKey& key) const;

  // Queues an upload of a sealed chunk (copied). False when skipped: the
  // record has it (which counts as a use of it), a deletion of its object
  // is pending, the queue is full, or the tier is degraded or closed.
  bool Enqueue(const ChunkMeta& meta, absl::Span<const std::byte> sealed);
  // Encodes `payload` as a sealed chunk of `meta` and queues it.
  bool EnqueuePayload(const ChunkMeta& meta, absl::Span<const std::byte> payload);

  // Whether this node uploaded the chunk (the local record).
  bool Recorded(uint64_t namespace_id, const BlockKey& key) const;

  // How many leading keys of `keys` Blob holds: the local record, then (when
  // `probe`) Get Blob Properties for the rest, sent together and waited for
  // until `deadline`. 0 at once when degraded.
  size_t MatchPrefix(uint64_t namespace_id, absl::Span<const BlockKey> keys, bool probe,
                     absl::Time deadline);

  // Downloads and verifies a chunk: parallel ranged GETs of get_range_bytes.
  // NotFound when Blob does not hold it, when it fails verification
  // (counted as corrupt), when the tier is degraded, or when `deadline`
  // passes first; InvalidArgument when its payload exceeds `max_payload`.
  absl::StatusOr<BlobChunk> Fetch(uint64_t namespace_id, const BlockKey& key,
                                  uint64_t layout_signature, uint64_t max_payload,
                                  absl::Time deadline);

  // Removes this node's copy of a chunk: a queued upload of it is dropped,
  // one in flight is deleted (and not recorded) when it finishes, and a
  // recorded chunk is forgotten and its deletion queued. True when any of
  // the three applied; false when this node has no upload of the chunk.
  bool Remove(uint64_t namespace_id, const BlockKey& key);
  // Forgets every chunk of the namespace this node uploaded, drops its
  // queued uploads, has its uploads in flight deleted (not recorded) when
  // they finish, and queues the deletion of every object under
  // `<prefix>/<namespace id hex>/`, whichever node wrote it (List Blobs page
  // by page, then Delete Blob each, for at most ten write_deadline_ms; what
  // is left then stays, logged with its count). Returns how many chunks the
  // record had. A namespace removed here is gone for every node that shares
  // the container.
  size_t RemoveNamespace(uint64_t namespace_id);

  // Waits until the queue is empty and no upload or deletion is in flight.
  void Flush();
  // Uploads and deletes what is queued for at most write_deadline_ms (a
  // request in flight, a namespace deletion included, is cut short then),
  // then stops the workers. Later enqueues are skipped. Safe to call twice.
  void Close();

  bool degraded() const { return degraded_.load(std::memory_order_relaxed); }
  BlobTierStats Stats() const;
  const BlobCacheOptions& options() const { return options_; }
  BlobClient& client() { return *client_; }

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
  struct Job {
    bool remove = false;
    bool remove_namespace = false;  // with remove: every object of meta.namespace_id
    ChunkMeta meta;
    std::vector<std::byte> bytes;
  };

  // What a worker is doing, for Remove and RemoveNamespace to find.
  struct Running {
    bool upload = false;  // an upload (not a deletion) is in flight
    NsKey key;
    bool removed = false;  // removed meanwhile: delete it when it finishes
  };

  BlobTier(const BlobCacheOptions& options, BlobLogFn log);
  void WorkerLoop(size_t worker);
  void MonitorLoop();
  // Notes a request's outcome: failures for want of an answer degrade the
  // tier; any success clears it.
  void Note(const absl::Status& status);
  // The deadline of a write request started now: `writes` x
  // write_deadline_ms (a listing page of 1000 names is given several), cut
  // to `limit` and to Close's deadline. `*cut` tells whether it was cut, so
  // that running out of a self-imposed time is not taken for an endpoint
  // that does not answer.
  absl::Time WriteDeadline(absl::Time limit, bool* cut, int writes = 1) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Deletes an object (a worker's job) and notes the outcome.
  void DeleteObject(const std::string& name);
  // Records an upload of `bytes`; what that takes past max_record_chunks or
  // capacity_bytes is forgotten, least recently used first, and with
  // capacity_bytes its deletion queued.
  void Record(uint64_t ns, const BlockKey& key, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_)
      ABSL_LOCKS_EXCLUDED(record_mu_);
  // Whether the record has the chunk; if so it becomes the most recently used.
  bool TouchRecord(uint64_t ns, const BlockKey& key) ABSL_LOCKS_EXCLUDED(record_mu_);
  // Erases a chunk from the record; false when it was not there.
  bool EraseRecord(const NsKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(record_mu_);
  void Forget(uint64_t ns, const BlockKey& key);
  // Whether a deletion of the chunk's object (or of its namespace) is queued
  // or in flight: an upload that finishes meanwhile is not recorded.
  bool DeletionPending(const NsKey& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues the deletion of a chunk's object.
  void QueueDeletion(const NsKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A deletion of the chunk's object (or of the namespace's) ended or was dropped.
  void EndDeletion(const NsKey& key, bool whole_namespace) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the queued uploads that `drop` picks; true when it picked one.
  bool DropQueuedUploads(absl::FunctionRef<bool(const Job&)> drop)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lists and deletes every object of the namespace (a worker's job) until
  // `limit` or Close's deadline.
  void DeleteNamespaceObjects(uint64_t namespace_id, absl::Time limit);

  const BlobCacheOptions options_;
  BlobLogFn log_;
  std::unique_ptr<BlobClient> client_;
  std::atomic<bool> degraded_{false};
  std::atomic<uint64_t> degraded_events_{0};

  mutable absl::Mutex mu_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t queued_deletions_ ABSL_GUARDED_BY(mu_) = 0;  // of queue_: not bounded by queue_chunks
  uint32_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Running> running_ ABSL_GUARDED_BY(mu_);  // one per worker
  // Deletions queued or in flight, by chunk and by namespace.
  absl::flat_hash_map<NsKey, uint32_t> deleting_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, uint32_t> deleting_namespaces_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Requests end by then once Close has begun.
  absl::Time close_by_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::vector<std::thread> workers_;
  std::thread monitor_;

  // Lock order: mu_, then record_mu_.
  mutable absl::Mutex record_mu_;
  // The record: chunk -> its place in record_order_ (least recently used
  // first) and its object's size.
  struct RecordEntry {
    std::list<NsKey>::iterator order;
    uint64_t bytes = 0;
  };
  absl::flat_hash_map<NsKey, RecordEntry> record_ ABSL_GUARDED_BY(record_mu_);
  std::list<NsKey> record_order_ ABSL_GUARDED_BY(record_mu_);
  uint64_t record_bytes_ ABSL_GUARDED_BY(record_mu_) = 0;

  std::atomic<uint64_t> uploaded_{0}, upload_failures_{0}, already_stored_{0},
      skipped_queue_full_{0}, skipped_degraded_{0}, fetched_{0}, fetch_misses_{0}, corrupt_{0},
      deadline_misses_{0}, probes_{0}, probe_hits_{0}, bytes_uploaded_{0}, bytes_downloaded_{0},
      namespace_objects_deleted_{0}, capacity_deletions_{0}, skipped_deleting_{0};
};

}  // namespace kvtier

#endif  // KVTIER_SRC_TIERS_BLOB_BLOB_TIER_H_
