#include "src/tiers/blob/blob_tier.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "src/common/status_macros.h"
#include "src/core/chunk_format.h"

namespace kvtier {

namespace {

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("blob.", field, ": ", what));
}

BlobClientOptions ToClientOptions(const BlobCacheOptions& o) {
  BlobClientOptions c;
  c.endpoint = o.endpoint;
  c.account = o.account;
  c.container = o.container;
  c.shared_key = o.shared_key;
  c.sas = o.sas;
  c.single_put_max_bytes = o.single_put_max_bytes;
  c.block_bytes = o.block_bytes;
  c.max_connections = o.max_connections;
  c.connect_timeout_ms = o.connect_timeout_ms;
  c.request_timeout_ms = o.request_timeout_ms;
  c.max_attempts = o.max_attempts;
  c.backoff_initial_ms = o.backoff_initial_ms;
  c.backoff_max_ms = o.backoff_max_ms;
  return c;
}

constexpr char kParentMeta[] = "kvtier_parent";
// The largest object a download accepts (a chunk fits one DRAM slab).
constexpr uint64_t kMaxObjectBytes = 4ull << 30;

// Write deadlines one page of a namespace listing is given.
constexpr int kListingWrites = 4;

bool ParseHexKey(const std::string& hex, BlockKey* key) {
  if (hex.size() != 32) return false;
  uint64_t parts[2] = {0, 0};
  for (size_t i = 0; i < 32; ++i) {
    const char c = hex[i];
    uint64_t v = 0;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else {
      return false;
    }
    parts[i / 16] = parts[i / 16] << 4 | v;
  }
  key->hi = parts[0];
  key->lo = parts[1];
  return true;
}

}  // namespace

absl::Status BlobCacheOptions::Validate() const {
  if (endpoint.empty()) return Invalid("endpoint", "must not be empty when the Blob tier is on");
  if (prefix.empty() || prefix.front() == '/' || prefix.back() == '/') {
    return Invalid("prefix", absl::StrCat("'", prefix,
                                          "' must be non-empty without a leading or "
                                          "trailing '/'"));
  }
  if (policy != "on_demotion" && policy != "always" && policy != "never") {
    return Invalid("policy", absl::StrCat("'", policy, "' is not on_demotion, always or never"));
  }
  if (queue_chunks < 1) return Invalid("queue_chunks", "must be positive");
  if (queue_bytes < (1ull << 20)) {
    return Invalid("queue_bytes", absl::StrCat(queue_bytes, " is below 1 MiB"));
  }
  if (upload_workers < 1 || upload_workers > 256) {
    return Invalid("upload_workers", absl::StrCat(upload_workers, " is outside [1, 256]"));
  }
  if (get_range_bytes < uint64_t{64} * 1024) {
    return Invalid("get_range_bytes", absl::StrCat(get_range_bytes, " is below 64 KiB"));
  }
  if (deadline_ms == 0) return Invalid("deadline_ms", "must be positive");
  if (write_deadline_ms == 0) return Invalid("write_deadline_ms", "must be positive");
  if (recheck_ms == 0) return Invalid("recheck_ms", "must be positive");
  if (max_record_chunks < 1) return Invalid("max_record_chunks", "must be positive");
  return ToClientOptions(*this).Validate();
}

BlobTier::BlobTier(const BlobCacheOptions& options, BlobLogFn log)
    : options_(options), log_(std::move(log)) {
  if (!log_) {
    log_ = [](const std::string& line) { std::fprintf(stderr, "kvtier: %s\n", line.c_str()); };
  }
}

absl::StatusOr<std::unique_ptr<BlobTier>> BlobTier::Create(const BlobCacheOptions& options,
                                                           BlobLogFn log) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<BlobTier> tier(new BlobTier(options, std::move(log)));
  KVTIER_ASSIGN_OR_RETURN(tier->client_, BlobClient::Create(ToClientOptions(options)));
  absl::Status s =
      tier->client_->CreateContainer(absl::Now() + absl::Milliseconds(options.deadline_ms));
  if (absl::IsPermissionDenied(s) || absl::IsInvalidArgument(s)) {
    return absl::Status(s.code(), absl::StrCat("blob: cannot use container '", options.container,
                                               "' at ", options.endpoint, ": ", s.message()));
  }
  tier->Note(s);
  {
    absl::MutexLock lock(&tier->mu_);
    tier->running_.resize(options.upload_workers);
  }
  for (uint32_t i = 0; i < options.upload_workers; ++i) {
    tier->workers_.emplace_back([t = tier.get(), i] { t->WorkerLoop(i); });
  }
  tier->monitor_ = std::thread([t = tier.get()] { t->MonitorLoop(); });
  return tier;
}

BlobTier::~BlobTier() { Close(); }

std::string BlobTier::ObjectName(uint64_t namespace_id, const BlockKey& key) const {
  return absl::StrFormat("%s/%016x/%s", options_.prefix, namespace_id, key.ToHex());
}

void BlobTier::Note(const absl::Status& status) {
  if (status.ok() || absl::IsNotFound(status)) {
    if (degraded_.exchange(false)) {
      log_(absl::StrCat("blob: ", options_.endpoint, "/", options_.container,
                        " answers again; the Blob tier is back"));
    }
    return;
  }
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) {
    if (!degraded_.exchange(true)) {
      degraded_events_.fetch_add(1, std::memory_order_relaxed);
      log_(absl::StrCat("blob: ", options_.endpoint, "/", options_.container, " is unreachable (",
                        status.message(), "); degraded to DRAM + NVMe until it answers"));
    }
  }
}

void BlobTier::MonitorLoop() {
  absl::MutexLock lock(&mu_);
  for (;;) {
    const bool stop = mu_.AwaitWithTimeout(absl::Condition(
                                               +[](bool* closing) { return *closing; }, &closing_),
                                           absl::Milliseconds(options_.recheck_ms));
    if (stop) return;
    if (!degraded()) continue;
    mu_.Unlock();
    Note(client_->CheckContainer(absl::Now() + absl::Milliseconds(options_.deadline_ms)));
    mu_.Lock();
  }
}

// ---- record -----------------------------------------------------------------------

void BlobTier::Record(uint64_t ns, const BlockKey& key, uint64_t bytes) {
  absl::MutexLock lock(&record_mu_);
  NsKey k{ns, key};
  if (record_.contains(k)) return;
  record_order_.push_back(k);
  record_.emplace(k, RecordEntry{std::prev(record_order_.end()), bytes});
  record_bytes_ += bytes;
  const uint64_t capacity = options_.capacity_bytes;
  while (!record_order_.empty() && (record_.size() > options_.max_record_chunks ||
                                    (capacity > 0 && record_bytes_ > capacity))) {
    const NsKey old = record_order_.front();
    (void)EraseRecord(old);
    if (capacity == 0 || closing_) continue;
    // Bounded: the forgotten object goes too, so the node's share of the
    // container stays within capacity_bytes. An upload of it queued or in
    // flight meanwhile (a later demotion) must not race the deletion: the
    // queued one is dropped, the one in flight deleted when it ends.
    (void)DropQueuedUploads(
        [&](const Job& j) { return j.meta.namespace_id == old.ns && j.meta.key == old.key; });
    for (Running& r : running_) {
      if (r.upload && r.key == old) r.removed = true;
    }
    QueueDeletion(old);
    capacity_deletions_.fetch_add(1, std::memory_order_relaxed);
  }
}

bool BlobTier::TouchRecord(uint64_t ns, const BlockKey& key) {
  absl::MutexLock lock(&record_mu_);
  auto it = record_.find(NsKey{ns, key});
  if (it == record_.end()) return false;
  record_order_.splice(record_order_.end(), record_order_, it->second.order);
  return true;
}

bool BlobTier::EraseRecord(const NsKey& key) {
  auto it = record_.find(key);
  if (it == record_.end()) return false;
  record_order_.erase(it->second.order);
  record_bytes_ -= it->second.bytes;
  record_.erase(it);
  return true;
}

void BlobTier::Forget(uint64_t ns, const BlockKey& key) {
  absl::MutexLock lock(&record_mu_);
  (void)EraseRecord(NsKey{ns, key});
}

bool BlobTier::Recorded(uint64_t namespace_id, const BlockKey& key) const {
  absl::MutexLock lock(&record_mu_);
  return record_.contains(NsKey{namespace_id, key});
}

// ---- writes -----------------------------------------------------------------------

bool BlobTier::Enqueue(const ChunkMeta& meta, absl::Span<const std::byte> sealed) {
  if (TouchRecord(meta.namespace_id, meta.key)) {
    already_stored_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (degraded()) {
    skipped_degraded_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  absl::MutexLock lock(&mu_);
  if (closing_) {
    skipped_degraded_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (DeletionPending(NsKey{meta.namespace_id, meta.key})) {
    // Its object is being deleted: an upload now could land before the
    // deletion and be lost, or after it and go unrecorded. A later
    // demotion uploads it again.
    skipped_deleting_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (queue_.size() - queued_deletions_ >= options_.queue_chunks ||
      queued_bytes_ + sealed.size() > options_.queue_bytes) {
    skipped_queue_full_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  Job job;
  job.meta = meta;
  job.bytes.assign(sealed.begin(), sealed.end());
  queued_bytes_ += sealed.size();
  queue_.push_back(std::move(job));
  return true;
}

bool BlobTier::EnqueuePayload(const ChunkMeta& meta, absl::Span<const std::byte> payload) {
  if (TouchRecord(meta.namespace_id, meta.key)) {
    already_stored_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  ChunkHeader h;
  h.namespace_id = meta.namespace_id;
  h.key = meta.key;
  h.layout_signature = meta.layout_signature;
  h.num_tokens = meta.num_tokens;
  h.sealed = true;
  std::vector<std::byte> encoded(kChunkHeaderBytes + payload.size());
  if (!EncodeChunk(h, payload, absl::MakeSpan(encoded)).ok()) return false;
  return Enqueue(meta, encoded);
}

bool BlobTier::DropQueuedUploads(absl::FunctionRef<bool(const Job&)> drop) {
  bool dropped = false;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (!it->remove && drop(*it)) {
      queued_bytes_ -= it->bytes.size();
      it = queue_.erase(it);
      dropped = true;
    } else {
      ++it;
    }
  }
  return dropped;
}

void BlobTier::QueueDeletion(const NsKey& key) {
  Job job;
  job.remove = true;
  job.meta.namespace_id = key.ns;
  job.meta.key = key.key;
  queue_.push_back(std::move(job));
  ++queued_deletions_;
  ++deleting_[key];
}

bool BlobTier::DeletionPending(const NsKey& key) const {
  return deleting_.contains(key) || deleting_namespaces_.contains(key.ns);
}

bool BlobTier::Remove(uint64_t namespace_id, const BlockKey& key) {
  const NsKey k{namespace_id, key};
  absl::MutexLock lock(&mu_);
  // A queued upload never starts; one in flight is deleted when it ends.
  bool removed = DropQueuedUploads(
      [&](const Job& j) { return j.meta.namespace_id == namespace_id && j.meta.key == key; });
  for (Running& r : running_) {
    if (r.upload && r.key == k && !r.removed) {
      r.removed = true;
      removed = true;
    }
  }
  bool recorded = false;
  {
    absl::MutexLock record_lock(&record_mu_);
    recorded = EraseRecord(k);
  }
  if (!recorded || closing_) return removed;
  QueueDeletion(k);
  return true;
}

size_t BlobTier::RemoveNamespace(uint64_t namespace_id) {
  {
    absl::MutexLock lock(&mu_);
    // Uploads of the namespace: queued ones never start, ones in flight are
    // deleted when they end. Either way none is recorded from here on.
    (void)DropQueuedUploads([&](const Job& j) { return j.meta.namespace_id == namespace_id; });
    for (Running& r : running_) {
      if (r.upload && r.key.ns == namespace_id) r.removed = true;
    }
    if (!closing_) {
      Job job;
      job.remove = true;
      job.remove_namespace = true;
      job.meta.namespace_id = namespace_id;
      queue_.push_back(std::move(job));
      ++queued_deletions_;
      ++deleting_namespaces_[namespace_id];
    }
  }
  size_t recorded = 0;
  absl::MutexLock lock(&record_mu_);
  for (auto it = record_.begin(); it != record_.end();) {
    if (it->first.ns == namespace_id) {
      record_order_.erase(it->second.order);
      record_bytes_ -= it->second.bytes;
      record_.erase(it++);
      ++recorded;
    } else {
      ++it;
    }
  }
  return recorded;
}

void BlobTier::EndDeletion(const NsKey& key, bool whole_namespace) {
  if (whole_namespace) {
    auto it = deleting_namespaces_.find(key.ns);
    if (it != deleting_namespaces_.end() && --it->second == 0) deleting_namespaces_.erase(it);
  } else {
    auto it = deleting_.find(key);
    if (it != deleting_.end() && --it->second == 0) deleting_.erase(it);
  }
}

absl::Time BlobTier::WriteDeadline(absl::Time limit, bool* cut, int writes) const {
  absl::Time close_by;
  {
    absl::MutexLock lock(&mu_);
    close_by = close_by_;
  }
  const absl::Time own =
      absl::Now() + absl::Milliseconds(options_.write_deadline_ms) * std::max(writes, 1);
  const absl::Time deadline = std::min({own, limit, close_by});
  *cut = deadline < own;
  return deadline;
}

void BlobTier::DeleteObject(const std::string& name) {
  bool cut = false;
  const absl::Time deadline = WriteDeadline(absl::InfiniteFuture(), &cut);
  absl::Status s = client_->Delete(name, deadline);
  if (!(cut && absl::IsDeadlineExceeded(s))) Note(s);
}

void BlobTier::DeleteNamespaceObjects(uint64_t namespace_id, absl::Time limit) {
  const std::string prefix = absl::StrFormat("%s/%016x/", options_.prefix, namespace_id);
  uint64_t deleted = 0;
  // Stops with a log line: out of time (the limit or Close), or a failure.
  auto stop = [&](absl::string_view why, size_t left_on_page) {
    log_(absl::StrCat("blob: removing ", prefix, " stopped (", why, ") after deleting ", deleted,
                      " objects; ", left_on_page,
                      " listed objects remain, with any on later pages"));
  };
  std::string marker;
  do {
    bool cut = false;
    // A page of up to 1000 names can take a busy endpoint longer than one
    // write; that is not a sign that it is down.
    absl::Time deadline = WriteDeadline(limit, &cut, kListingWrites);
    if (absl::Now() >= deadline) return stop("out of time", 0);
    absl::StatusOr<BlobListPage> page = client_->List(prefix, marker, 1000, deadline);
    if (cut && absl::IsDeadlineExceeded(page.status())) return stop("out of time", 0);
    Note(page.status());
    if (!page.ok()) {
      log_(absl::StrCat("blob: listing ", prefix,
                        " to remove the namespace failed: ", page.status().ToString()));
      return;
    }
    for (size_t i = 0; i < page->blobs.size(); ++i) {
      // The time left is checked before each deletion, so running out of it
      // stops the loop rather than failing every deletion left at once.
      deadline = WriteDeadline(limit, &cut);
      if (absl::Now() >= deadline) return stop("out of time", page->blobs.size() - i);
      absl::Status s = client_->Delete(page->blobs[i].name, deadline);
      if (cut && absl::IsDeadlineExceeded(s)) return stop("out of time", page->blobs.size() - i);
      Note(s);
      if (s.ok()) {
        ++deleted;
        namespace_objects_deleted_.fetch_add(1, std::memory_order_relaxed);
      } else if (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s)) {
        return stop(s.ToString(), page->blobs.size() - i);  // the endpoint does not answer
      }
    }
    marker = page->next_marker;
  } while (!marker.empty());
}

void BlobTier::WorkerLoop(size_t worker) {
  for (;;) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](BlobTier* t)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return t->closed_ || !t->queue_.empty(); },
          this));
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      queued_bytes_ -= job.bytes.size();
      if (job.remove) --queued_deletions_;
      ++in_flight_;
      running_[worker] = Running{!job.remove, NsKey{job.meta.namespace_id, job.meta.key}, false};
    }
    const NsKey k{job.meta.namespace_id, job.meta.key};
    const std::string name = ObjectName(job.meta.namespace_id, job.meta.key);
    bool removed = false;  // an upload removed while in flight
    if (job.remove_namespace) {
      // A whole namespace may be many pages: ten write deadlines.
      DeleteNamespaceObjects(job.meta.namespace_id,
                             absl::Now() + absl::Milliseconds(10 * options_.write_deadline_ms));
    } else if (job.remove) {
      DeleteObject(name);
    } else if (degraded()) {
      skipped_degraded_.fetch_add(1, std::memory_order_relaxed);
    } else {
      BlobClient::Metadata md;
      md[kParentMeta] = job.meta.parent.ToHex();
      bool cut = false;
      const absl::Time deadline = WriteDeadline(absl::InfiniteFuture(), &cut);
      absl::Status s = client_->Upload(name, job.bytes, md, deadline);
      if (!(cut && absl::IsDeadlineExceeded(s))) Note(s);
      if (s.ok()) {
        uploaded_.fetch_add(1, std::memory_order_relaxed);
        bytes_uploaded_.fetch_add(job.bytes.size(), std::memory_order_relaxed);
      } else {
        upload_failures_.fetch_add(1, std::memory_order_relaxed);
      }
      // Recorded only when nothing removed it meanwhile; a removed one is
      // deleted (whether or not the upload reported success, it may have
      // landed), so a Remove that raced the upload is not lost.
      absl::MutexLock lock(&mu_);
      removed = running_[worker].removed;
      if (removed) {
        ++deleting_[k];
      } else if (s.ok() && !DeletionPending(k)) {
        Record(k.ns, k.key, job.bytes.size());
      }
      running_[worker] = Running{};
    }
    if (removed) DeleteObject(name);
    absl::MutexLock lock(&mu_);
    running_[worker] = Running{};
    if (job.remove || removed) EndDeletion(k, job.remove_namespace);
    --in_flight_;
  }
}

void BlobTier::Flush() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](BlobTier* t)
           ABSL_NO_THREAD_SAFETY_ANALYSIS { return t->queue_.empty() && t->in_flight_ == 0; },
      this));
}

void BlobTier::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (closing_) return;
    closing_ = true;
    // What is queued gets write_deadline_ms to drain; requests in flight
    // (a namespace deletion's included) end by then too.
    close_by_ = absl::Now() + absl::Milliseconds(options_.write_deadline_ms);
    mu_.AwaitWithDeadline(absl::Condition(
                              +[](BlobTier* t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                return t->queue_.empty() && t->in_flight_ == 0;
                              },
                              this),
                          close_by_);
    for (const Job& j : queue_) {
      if (j.remove) {
        EndDeletion(NsKey{j.meta.namespace_id, j.meta.key}, j.remove_namespace);
      } else {
        skipped_degraded_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    queue_.clear();
    queued_bytes_ = 0;
    queued_deletions_ = 0;
    closed_ = true;
  }
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  if (monitor_.joinable()) monitor_.join();
}

// ---- reads ------------------------------------------------------------------------

size_t BlobTier::MatchPrefix(uint64_t namespace_id, absl::Span<const BlockKey> keys, bool probe,
                             absl::Time deadline) {
  if (degraded()) return 0;
  size_t n = 0;
  while (n < keys.size() && Recorded(namespace_id, keys[n])) ++n;
  if (n == keys.size() || !probe) return n;
  // Ask about the rest together; the answer is the run of hits from n on.
  constexpr size_t kMaxProbes = 256;
  const size_t count = std::min(keys.size() - n, kMaxProbes);
  struct Shared {
    absl::Mutex mu;
    std::vector<int> found ABSL_GUARDED_BY(mu);  // -1 unknown, 0 no, 1 yes
    size_t left ABSL_GUARDED_BY(mu) = 0;
    absl::Status failure ABSL_GUARDED_BY(mu);
  };
  auto shared = std::make_shared<Shared>();
  {
    absl::MutexLock lock(&shared->mu);
    shared->found.assign(count, -1);
    shared->left = count;
  }
  probes_.fetch_add(count, std::memory_order_relaxed);
  for (size_t i = 0; i < count; ++i) {
    client_->GetPropertiesAsync(
        ObjectName(namespace_id, keys[n + i]), deadline,
        [shared, i](const absl::StatusOr<BlobProperties>& p) {
          absl::MutexLock lock(&shared->mu);
          shared->found[i] = p.ok() ? 1 : 0;
          if (!p.ok() && !absl::IsNotFound(p.status()) && shared->failure.ok()) {
            shared->failure = p.status();
          }
          --shared->left;
        });
  }
  size_t hits = 0;
  absl::Status failure;
  bool timed_out = false;
  {
    absl::MutexLock lock(&shared->mu);
    // Every answer, or the deadline: whatever is known by then counts.
    timed_out =
        !shared->mu.AwaitWithDeadline(absl::Condition(
                                          +[](size_t* left) { return *left == 0; }, &shared->left),
                                      deadline);
    while (hits < count && shared->found[hits] == 1) ++hits;
    failure = shared->failure;
    for (int f : shared->found) {
      if (f == 1) probe_hits_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  if (timed_out) {
    deadline_misses_.fetch_add(1, std::memory_order_relaxed);
    Note(absl::DeadlineExceededError("probes ran out of time"));
  } else {
    Note(failure);
  }
  return n + hits;
}

absl::StatusOr<BlobChunk> BlobTier::Fetch(uint64_t namespace_id, const BlockKey& key,
                                          uint64_t layout_signature, uint64_t max_payload,
                                          absl::Time deadline) {
  const std::string name = ObjectName(namespace_id, key);
  auto miss = [&](const absl::Status& why) {
    fetch_misses_.fetch_add(1, std::memory_order_relaxed);
    return absl::NotFoundError(absl::StrCat("chunk ", key.ToHex(), " is not cached in namespace ",
                                            namespace_id, " (Blob: ", why.message(), ")"));
  };
  if (degraded()) return miss(absl::UnavailableError("the Blob tier is degraded"));
  // The first range tells the size; the rest go out together.
  const uint64_t range = options_.get_range_bytes;
  BlobChunk chunk;
  chunk.encoded.resize(std::min<uint64_t>(range, kChunkHeaderBytes + max_payload));
  absl::StatusOr<BlobRangeResult> first =
      client_->GetRange(name, 0, absl::MakeSpan(chunk.encoded), deadline);
  Note(first.status());
  if (!first.ok()) {
    if (absl::IsDeadlineExceeded(first.status())) {
      deadline_misses_.fetch_add(1, std::memory_order_relaxed);
    }
    if (absl::IsPermissionDenied(first.status())) return first.status();
    // Not there although recorded (deleted behind this node's back): the
    // record must not keep matching it.
    if (absl::IsNotFound(first.status())) Forget(namespace_id, key);
    return miss(first.status());
  }
  const uint64_t size = first->blob_size;
  if (size < kChunkHeaderBytes || size > kMaxObjectBytes) {
    corrupt_.fetch_add(1, std::memory_order_relaxed);
    Forget(namespace_id, key);
    return miss(absl::DataLossError(absl::StrCat("object of ", size, " bytes")));
  }
  if (size - kChunkHeaderBytes > max_payload) {
    return absl::InvalidArgumentError(absl::StrCat("out: ", max_payload,
                                                   " bytes, smaller than the chunk payload (",
                                                   size - kChunkHeaderBytes, " bytes)"));
  }
  if (first->bytes < size) {
    chunk.encoded.resize(size);
    struct Shared {
      absl::Mutex mu;
      size_t left ABSL_GUARDED_BY(mu) = 0;
      absl::Status failure ABSL_GUARDED_BY(mu);
    };
    auto shared = std::make_shared<Shared>();
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (uint64_t off = first->bytes; off < size; off += range) {
      ranges.emplace_back(off, std::min(range, size - off));
    }
    {
      absl::MutexLock lock(&shared->mu);
      shared->left = ranges.size();
    }
    for (const auto& [off, len] : ranges) {
      client_->GetRangeAsync(name, off, absl::MakeSpan(chunk.encoded).subspan(off, len), deadline,
                             [shared, len = len](absl::StatusOr<BlobRangeResult> r) {
                               absl::MutexLock lock(&shared->mu);
                               if (shared->failure.ok()) {
                                 if (!r.ok()) {
                                   shared->failure = r.status();
                                 } else if (r->bytes != len) {
                                   shared->failure = absl::DataLossError(absl::StrCat(
                                       "a range returned ", r->bytes, " of ", len, " bytes"));
                                 }
                               }
                               --shared->left;
                             });
    }
    // The client ends every request by `deadline`, so this wait is bounded
    // and `chunk.encoded` outlives every write into it.
    absl::Status failure;
    {
      absl::MutexLock lock(&shared->mu);
      shared->mu.Await(absl::Condition(
          +[](size_t* left) { return *left == 0; }, &shared->left));
      failure = shared->failure;
    }
    Note(failure);
    if (!failure.ok()) {
      if (absl::IsDeadlineExceeded(failure)) {
        deadline_misses_.fetch_add(1, std::memory_order_relaxed);
      }
      return miss(failure);
    }
  } else {
    chunk.encoded.resize(first->bytes);
  }
  ChunkExpectation expect;
  expect.namespace_id = namespace_id;
  expect.key = key;
  expect.layout_signature = layout_signature;
  expect.verify_payload_checksum = true;
  absl::StatusOr<DecodedChunk> decoded = DecodeChunk(chunk.encoded, expect);
  if (!decoded.ok()) {
    corrupt_.fetch_add(1, std::memory_order_relaxed);
    Forget(namespace_id, key);
    return miss(decoded.status());
  }
  chunk.encoded.resize(kChunkHeaderBytes + decoded->payload.size());
  chunk.meta.namespace_id = namespace_id;
  chunk.meta.key = key;
  chunk.meta.layout_signature = layout_signature;
  chunk.meta.num_tokens = decoded->header.num_tokens;
  auto parent = first->metadata.find(kParentMeta);
  if (parent != first->metadata.end()) (void)ParseHexKey(parent->second, &chunk.meta.parent);
  (void)TouchRecord(namespace_id, key);  // a read is a use
  fetched_.fetch_add(1, std::memory_order_relaxed);
  bytes_downloaded_.fetch_add(chunk.encoded.size(), std::memory_order_relaxed);
  return chunk;
}

BlobTierStats BlobTier::Stats() const {
  BlobTierStats s;
  s.degraded = degraded();
  s.degraded_events = degraded_events_.load(std::memory_order_relaxed);
  s.uploaded = uploaded_.load(std::memory_order_relaxed);
  s.upload_failures = upload_failures_.load(std::memory_order_relaxed);
  s.already_stored = already_stored_.load(std::memory_order_relaxed);
  s.namespace_objects_deleted = namespace_objects_deleted_.load(std::memory_order_relaxed);
  s.capacity_deletions = capacity_deletions_.load(std::memory_order_relaxed);
  s.skipped_deleting = skipped_deleting_.load(std::memory_order_relaxed);
  s.skipped_queue_full = skipped_queue_full_.load(std::memory_order_relaxed);
  s.skipped_degraded = skipped_degraded_.load(std::memory_order_relaxed);
  {
    absl::MutexLock lock(&mu_);
    s.queued = queue_.size();
    s.queued_bytes = queued_bytes_;
  }
  {
    absl::MutexLock lock(&record_mu_);
    s.recorded = record_.size();
    s.recorded_bytes = record_bytes_;
  }
  s.fetched = fetched_.load(std::memory_order_relaxed);
  s.fetch_misses = fetch_misses_.load(std::memory_order_relaxed);
  s.corrupt = corrupt_.load(std::memory_order_relaxed);
  s.deadline_misses = deadline_misses_.load(std::memory_order_relaxed);
  s.probes = probes_.load(std::memory_order_relaxed);
  s.probe_hits = probe_hits_.load(std::memory_order_relaxed);
  s.bytes_uploaded = bytes_uploaded_.load(std::memory_order_relaxed);
  s.bytes_downloaded = bytes_downloaded_.load(std::memory_order_relaxed);
  s.http = client_->Stats();
  return s;
}

}  // namespace kvtier
