#include "src/index/event_publisher.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvtier/v1/events.pb.h"
#include "src/server/wire.h"

namespace kvtier::index {

std::string EventSubject(uint64_t namespace_id) {
  return absl::StrFormat("kvtier.events.%016x", namespace_id);
}

std::string NodeSubject(const std::string& node_id) { return "kvtier.nodes." + node_id; }

std::string RenderPublisherMetrics(const EventPublisherStats& s) {
  std::string out;
  auto counter = [&out](const char* name, const char* help, uint64_t v) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, " ", v,
                    "\n");
  };
  counter("kvtier_cluster_event_batches_total", "Event batches published to NATS.", s.batches);
  counter("kvtier_cluster_events_total", "Chunk events published to NATS.", s.events);
  counter("kvtier_cluster_dropped_events_total", "Chunk events dropped: the queue was full.",
          s.dropped_events);
  counter("kvtier_cluster_publish_errors_total", "Batches NATS refused (events lost).",
          s.publish_errors);
  counter("kvtier_cluster_heartbeats_total", "Heartbeats published.", s.heartbeats);
  return out;
}

absl::Status ValidateNodeId(const std::string& node_id, const std::string& field) {
  if (node_id.empty() || node_id.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be 1..128 characters"));
  }
  for (char c : node_id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": '", node_id, "' may hold only letters, digits, '-', '_' and '.'"));
    }
  }
  return absl::OkStatus();
}

absl::Status EventPublisherOptions::Validate() const {
  if (absl::Status s = ValidateNodeId(node_id, "node_id"); !s.ok()) return s;
  if (max_batch_events == 0) {
    return absl::InvalidArgumentError("cluster.publish_batch: must be at least 1");
  }
  if (publish_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("cluster.publish_interval_ms: must be positive");
  }
  if (heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("cluster.heartbeat_interval_ms: must be positive");
  }
  if (max_queued_events == 0) {
    return absl::InvalidArgumentError("cluster.max_queued_events: must be at least 1");
  }
  return absl::OkStatus();
}

EventPublisher::EventPublisher(const EventPublisherOptions& options, std::unique_ptr<NatsBus> bus)
    : options_(options), bus_(std::move(bus)) {
  if (options_.incarnation == 0) {
    options_.incarnation = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  }
}

absl::StatusOr<std::unique_ptr<EventPublisher>> EventPublisher::Start(
    const EventPublisherOptions& options, std::unique_ptr<NatsBus> bus) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (bus == nullptr) return absl::InvalidArgumentError("bus: must not be null");
  if (options.create_stream) {
    if (absl::Status s = bus->EnsureStream(options.stream); !s.ok()) return s;
  }
  std::unique_ptr<EventPublisher> p(new EventPublisher(options, std::move(bus)));
  p->thread_ = std::thread([self = p.get()] { self->Loop(); });
  return p;
}

EventPublisher::~EventPublisher() { Stop(); }

void EventPublisher::OnChunkEvents(absl::Span<const ChunkEvent> events) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  for (const ChunkEvent& e : events) {
    if (queue_.size() >= options_.max_queued_events) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    queue_.push_back(e);
    ++enqueued_;
  }
}

void EventPublisher::Heartbeat(bool leaving) {
  v1::NodeHeartbeat hb;
  hb.set_node_id(options_.node_id);
  hb.set_incarnation(options_.incarnation);
  hb.set_grpc_address(options_.grpc_address);
  hb.set_ucx_address(options_.ucx_address);
  hb.set_interval_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.heartbeat_interval)));
  hb.set_last_sequence(sequence_);
  hb.set_unix_nanos(absl::ToUnixNanos(absl::Now()));
  hb.set_leaving(leaving);
  if (bus_->Publish(NodeSubject(options_.node_id), hb.SerializeAsString()).ok()) {
    heartbeats_.fetch_add(1, std::memory_order_relaxed);
  }
}

void EventPublisher::PublishSome(std::vector<ChunkEvent>& events) {
  // Runs of one namespace become one batch each (order kept); within a
  // batch, runs of one kind and tier share one CacheEvent.
  size_t i = 0;
  while (i < events.size()) {
    const uint64_t ns = events[i].namespace_id;
    v1::EventBatch batch;
    batch.set_node_id(options_.node_id);
    batch.set_incarnation(options_.incarnation);
    batch.set_namespace_id(ns);
    size_t n = 0;
    v1::CacheEvent* cur = nullptr;
    ChunkEvent::Kind cur_kind = ChunkEvent::Kind::kStored;
    Tier cur_tier = Tier::kNone;
    while (i < events.size() && events[i].namespace_id == ns && n < options_.max_batch_events) {
      const ChunkEvent& e = events[i];
      if (cur == nullptr || e.kind != cur_kind || e.tier != cur_tier) {
        cur = batch.add_events();
        cur_kind = e.kind;
        cur_tier = e.tier;
        if (e.kind == ChunkEvent::Kind::kStored) {
          cur->mutable_stored()->set_tier(static_cast<v1::Tier>(e.tier));
        } else {
          cur->mutable_removed()->set_tier(static_cast<v1::Tier>(e.tier));
        }
      }
      if (e.kind == ChunkEvent::Kind::kStored) {
        cur->mutable_stored()->add_keys(wire::KeyToBytes(e.key));
        cur->mutable_stored()->add_num_tokens(e.num_tokens);
      } else {
        cur->mutable_removed()->add_keys(wire::KeyToBytes(e.key));
      }
      ++i;
      ++n;
    }
    batch.set_sequence(++sequence_);
    batch.set_unix_nanos(absl::ToUnixNanos(absl::Now()));
    if (bus_->Publish(EventSubject(ns), batch.SerializeAsString()).ok()) {
      batches_.fetch_add(1, std::memory_order_relaxed);
      events_.fetch_add(n, std::memory_order_relaxed);
    } else {
      errors_.fetch_add(1, std::memory_order_relaxed);
    }
    last_sequence_.store(sequence_, std::memory_order_relaxed);
  }
}

void EventPublisher::Loop() {
  absl::Time next_heartbeat = absl::InfinitePast();
  std::vector<ChunkEvent> batch;
  for (;;) {
    bool stopping = false;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this] {
        mu_.AssertReaderHeld();
        return stopping_ || queue_.size() >= options_.max_batch_events;
      };
      mu_.AwaitWithTimeout(absl::Condition(&ready), options_.publish_interval);
      stopping = stopping_;
      batch.swap(queue_);
    }
    if (!batch.empty()) {
      PublishSome(batch);
      absl::MutexLock lock(&mu_);
      published_ += batch.size();
    }
    batch.clear();
    const absl::Time now = absl::Now();
    if (stopping) {
      Heartbeat(/*leaving=*/true);
      (void)bus_->Flush(absl::Seconds(1));
      return;
    }
    if (now >= next_heartbeat) {
      Heartbeat(/*leaving=*/false);
      next_heartbeat = now + options_.heartbeat_interval;
    }
  }
}

bool EventPublisher::Flush(absl::Duration timeout) {
  uint64_t target = 0;
  {
    absl::MutexLock lock(&mu_);
    target = enqueued_;
    auto done = [this, target] {
      mu_.AssertReaderHeld();
      return published_ >= target || stopping_;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) return false;
  }
  return bus_->Flush(timeout).ok();
}

void EventPublisher::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

EventPublisherStats EventPublisher::Stats() const {
  EventPublisherStats s;
  s.batches = batches_.load(std::memory_order_relaxed);
  s.events = events_.load(std::memory_order_relaxed);
  s.dropped_events = dropped_.load(std::memory_order_relaxed);
  s.publish_errors = errors_.load(std::memory_order_relaxed);
  s.heartbeats = heartbeats_.load(std::memory_order_relaxed);
  s.sequence = last_sequence_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace kvtier::index
