// kvtierd's side of the cluster index: a CacheEventSink that queues the
// cache's chunk events and publishes them to NATS in batches
// (kvtier.v1.EventBatch on kvtier.events.<namespace id hex>, one sequence per
// node), and a heartbeat (kvtier.v1.NodeHeartbeat on kvtier.nodes.<node id>)
// with the node's gRPC and UCX addresses.
//
// Overload: at most `max_queued_events` events wait; more are dropped and
// counted (the index then misses them until the chunks are stored again).
// A publish that fails (NATS down) is dropped and counted; the client
// reconnects in the background and the next batches carry on (the index
// counts the sequence gap).
//
// Thread-safety: OnChunkEvents may be called from any thread; Stop from one.
#ifndef KVTIER_SRC_INDEX_EVENT_PUBLISHER_H_
#define KVTIER_SRC_INDEX_EVENT_PUBLISHER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "src/core/cache_events.h"
#include "src/index/nats_bus.h"

namespace kvtier::index {

struct EventPublisherOptions {
  std::string node_id;               // required: this node's id
  uint64_t incarnation = 0;          // 0 = the current time in nanoseconds
  std::string grpc_address;          // advertised host:port of the node's gRPC services
  std::string ucx_address;           // advertised UCX listener; empty without UCX
  uint32_t max_batch_events = 1024;  // events per published batch
  absl::Duration publish_interval = absl::Milliseconds(20);  // longest wait before a batch goes
  absl::Duration heartbeat_interval = absl::Seconds(1);
  uint64_t max_queued_events = 1u << 20;  // queued events beyond are dropped (counted)
  bool create_stream = true;              // create the JetStream stream when missing
  EventStreamOptions stream;

  absl::Status Validate() const;
};

struct EventPublisherStats {
  uint64_t batches = 0;         // batches published
  uint64_t events = 0;          // chunk events published
  uint64_t dropped_events = 0;  // queue full
  uint64_t publish_errors = 0;  // batches the client refused (events lost)
  uint64_t heartbeats = 0;
  uint64_t sequence = 0;  // last batch sequence
};

class EventPublisher final : public CacheEventSink {
 public:
  // Connects `bus` (owned), creates the stream when asked and starts the
  // publishing thread (which sends the first heartbeat at once).
  static absl::StatusOr<std::unique_ptr<EventPublisher>> Start(const EventPublisherOptions& options,
                                                               std::unique_ptr<NatsBus> bus);
  ~EventPublisher() override;

  void OnChunkEvents(absl::Span<const ChunkEvent> events) override;

  // Publishes what is queued, sends a leaving heartbeat and stops.
  void Stop();
  // Waits until everything queued before the call was published (tests,
  // shutdown); false after `timeout`.
  bool Flush(absl::Duration timeout);

  EventPublisherStats Stats() const;
  const EventPublisherOptions& options() const { return options_; }

 private:
  explicit EventPublisher(const EventPublisherOptions& options, std::unique_ptr<NatsBus> bus);
  void Loop();
  void PublishSome(std::vector<ChunkEvent>& events);
  void Heartbeat(bool leaving);

  EventPublisherOptions options_;
  std::unique_ptr<NatsBus> bus_;
  absl::Mutex mu_;
  std::vector<ChunkEvent> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;   // events accepted so far
  uint64_t published_ ABSL_GUARDED_BY(mu_) = 0;  // of those, handed to NATS (or failed)
  std::thread thread_;
  uint64_t sequence_ = 0;  // publishing thread only
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> events_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> heartbeats_{0};
  std::atomic<uint64_t> last_sequence_{0};
};

// The publisher's counters in the Prometheus text format
// (kvtier_cluster_*), appended to kvtierd's /metrics.
std::string RenderPublisherMetrics(const EventPublisherStats& s);

// "kvtier.events.<16 hex digits>".
std::string EventSubject(uint64_t namespace_id);
// "kvtier.nodes.<node id>".
std::string NodeSubject(const std::string& node_id);
// Checks a node id: 1..128 characters of [A-Za-z0-9_.-] (dots split NATS
// subject tokens, which subscribers match with ">"). InvalidArgument naming `field`.
absl::Status ValidateNodeId(const std::string& node_id, const std::string& field);

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_EVENT_PUBLISHER_H_
