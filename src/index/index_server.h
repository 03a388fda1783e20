// kvtier-index: one replica of the cluster index. It reads the JetStream
// event stream from its start (rebuilding the map), then follows it live;
// listens to node heartbeats; reads vLLM KV events from ZMQ endpoints; and
// serves kvtier.v1.Index over gRPC and /metrics, /healthz, /readyz over
// HTTP. Replicas share nothing: each answers from its own map.
//
// Readiness: /readyz and Lookup answer "not ready" (503 / UNAVAILABLE) until
// the replay has reached the stream's last message as of start.
//
// Thread-safety: Shutdown may be called from any thread, once or more.
#ifndef KVTIER_SRC_INDEX_INDEX_SERVER_H_
#define KVTIER_SRC_INDEX_INDEX_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/server.h"
#include "src/index/cluster_index.h"
#include "src/index/event_ingest.h"
#include "src/index/index_service.h"
#include "src/index/nats_bus.h"
#include "src/server/grpc_tls.h"
#include "src/server/http_server.h"
#include "src/server/log.h"
#include "src/server/status_page.h"
#include "src/server/token_files.h"

namespace kvtier::index {

// One vLLM KV-event publisher (vLLM's --kv-events-config endpoint).
struct VllmEndpoint {
  std::string endpoint;       // ZMQ endpoint to connect to, e.g. tcp://10.0.0.5:5557
  std::string node_id;        // the node these blocks are on; "" = "vllm-<host>-<port>"
  std::string topic;          // ZMQ subscription prefix ("" = every topic)
  uint64_t namespace_id = 0;  // vLLM hash space; 0 = VllmNamespaceId()
};

// Shortest api_token accepted (as kvtierd's tokens).
inline constexpr size_t kMinApiTokenLength = 16;

struct IndexServerOptions {
  NatsBusOptions nats;                  // the NATS server(s)
  std::string grpc = "127.0.0.1:7070";  // host:port of the Index service (port 0: any)
  std::string http = "127.0.0.1:9465";  // host:port of /metrics /healthz /readyz; "" = off
  std::string status_token;             // bearer token of "/" and /api/v1/status; "" = none
  std::string status_token_file;        // where status_token was read from (read again); "" = none
  std::string api_token;  // bearer token every Index call must send; required off loopback
  // The file api_token was read from: read again every tls.reload_seconds
  // (server::TokenFiles); "" = not from a file.
  std::string api_token_file;
  server::TlsConfig tls;            // TLS (and mTLS) of the gRPC listener; off = plaintext
  bool allow_insecure_tcp = false;  // allow a non-loopback grpc address without TLS
  ClusterIndexOptions index;
  EventStreamOptions stream;
  bool create_stream = true;  // create the JetStream stream when missing
  std::vector<VllmEndpoint> zmq;
  uint32_t max_chain = 65536;                        // keys (or tokens / chunk) in one Lookup
  absl::Duration sweep_interval = absl::Seconds(1);  // how often dead nodes are checked

  absl::Status Validate() const;
};

// Fills the defaults of a vLLM endpoint (node id from the endpoint).
VllmEndpoint WithDefaults(VllmEndpoint e);

class IndexServer {
 public:
  // `log` must outlive the server.
  static absl::StatusOr<std::unique_ptr<IndexServer>> Start(const IndexServerOptions& options,
                                                            std::string version,
                                                            server::Logger* log);
  ~IndexServer();

  void Shutdown();
  bool ready() const { return ready_.load(); }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_ ? http_->port() : 0; }
  ClusterIndex& index() { return *index_; }
  EventIngest& ingest() { return *ingest_; }
  // Prometheus text of the index's metrics.
  std::string RenderMetrics() const;
  // The status page's figures (/ and /api/v1/status on the http listener):
  // peers = the nodes known (up = alive), counters = the Stats RPC's figures
  // and the node and vLLM counts, latencies = Lookup's.
  server::StatusSnapshot Snapshot() const;

 private:
  IndexServer(const IndexServerOptions& options, server::Logger* log);
  absl::Status Init(std::string version);
  server::HttpResponse ServeHttp(const std::string& path);
  void ZmqLoop(const VllmEndpoint& endpoint, uint32_t node);
  void OnStreamMessage(absl::string_view subject, absl::string_view data,
                       const StreamPosition* pos);

  const IndexServerOptions options_;
  server::Logger* const log_;
  std::string version_;
  std::unique_ptr<ClusterIndex> index_;
  std::unique_ptr<EventIngest> ingest_;
  std::unique_ptr<NatsBus> bus_;
  std::unique_ptr<IndexService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<server::StatusPage> status_page_;
  std::unique_ptr<server::HttpServer> http_;
  const Secret api_token_{options_.api_token};        // the service's; set from api_token_file
  const Secret status_token_{options_.status_token};  // the status page's
  std::unique_ptr<server::TokenFiles> token_files_;
  int grpc_port_ = 0;
  uint64_t replay_target_ = 0;  // the stream's last sequence at start
  std::atomic<bool> ready_{false};
  std::atomic<uint64_t> replayed_{0};
  std::atomic<uint64_t> zmq_messages_{0};
  std::atomic<uint64_t> zmq_gaps_{0};
  void* zmq_ctx_ = nullptr;
  std::vector<std::thread> zmq_threads_;
  std::thread sweeper_;
  absl::Notification stop_;
  std::atomic<bool> shut_down_{false};
  const absl::Time start_time_ = absl::Now();
};

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_INDEX_SERVER_H_
