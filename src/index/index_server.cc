#include "src/index/index_server.h"

#include <unistd.h>
#include <zmq.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "kvtier/namespace.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "src/common/status_macros.h"
#include "src/common/token_list.h"
#include "src/index/event_publisher.h"
#include "src/server/grpc_tls.h"
#include "src/server/status_convert.h"
#include "src/server/wire.h"

namespace kvtier::index {
namespace {

// Whether "host:port" listens on loopback only.
bool IsLoopback(const std::string& host_port) {
  return server::IsLoopbackHost(server::HostOf(host_port));
}

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(std::string name, std::string help, MetricType type, double value,
                    std::vector<ClientMetric::Label> labels = {}) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
  return f;
}

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

}  // namespace

// ---- options --------------------------------------------------------------------

absl::Status IndexServerOptions::Validate() const {
  KVTIER_RETURN_IF_ERROR(NameNatsSetting(nats.Validate(), "nats.", ""));
  KVTIER_RETURN_IF_ERROR(index.Validate());
  if (grpc.empty() || grpc.rfind(':') == std::string::npos) {
    return Invalid("grpc", absl::StrCat("'", grpc, "' is not host:port"));
  }
  if (!http.empty() && http.rfind(':') == std::string::npos) {
    return Invalid("http", absl::StrCat("'", http, "' is not host:port"));
  }
  KVTIER_RETURN_IF_ERROR(server::ValidateTls(tls, "tls"));
  if (!IsLoopback(grpc)) {
    // The API tells where every tenant's prefixes live: off loopback it
    // needs a token and, unless allowed, TLS.
    if (api_token.empty()) {
      return Invalid("api_token", absl::StrCat("required: grpc '", grpc,
                                               "' is not a loopback address (set api_token or "
                                               "api_token_file, or KVTIER_INDEX_TOKEN)"));
    }
    if (!tls.enabled() && !allow_insecure_tcp) {
      return Invalid("grpc", absl::StrCat("'", grpc,
                                          "' is not a loopback address: set tls.cert_file and "
                                          "tls.key_file (or allow_insecure_tcp: true)"));
    }
  }
  if (absl::Status s = CheckTokenList(api_token, kMinApiTokenLength); !s.ok()) {
    return Invalid("api_token", std::string(s.message()));
  }
  if (absl::Status s = CheckTokenList(status_token, 1); !s.ok()) {
    return Invalid("status_token", std::string(s.message()));
  }
  if (max_chain == 0) return Invalid("max_chain", "must be at least 1");
  for (size_t i = 0; i < zmq.size(); ++i) {
    const std::string f = absl::StrCat("zmq[", i, "]");
    if (zmq[i].endpoint.find("://") == std::string::npos) {
      return Invalid(f, absl::StrCat("'", zmq[i].endpoint, "' is not a ZMQ endpoint (tcp://...)"));
    }
  }
  if (sweep_interval <= absl::ZeroDuration()) return Invalid("sweep_interval", "must be positive");
  return absl::OkStatus();
}

VllmEndpoint WithDefaults(VllmEndpoint e) {
  if (e.node_id.empty()) {
    std::string tail = e.endpoint.substr(e.endpoint.find("://") + 3);
    e.node_id = absl::StrCat(
        "vllm-", absl::StrReplaceAll(tail, {{":", "-"}, {".", "-"}, {"/", "-"}, {"*", "all"}}));
  }
  if (e.namespace_id == 0) e.namespace_id = VllmNamespaceId();
  return e;
}

// ---- lifecycle ------------------------------------------------------------------

IndexServer::IndexServer(const IndexServerOptions& options, server::Logger* log)
    : options_(options), log_(log) {}

absl::StatusOr<std::unique_ptr<IndexServer>> IndexServer::Start(const IndexServerOptions& options,
                                                                std::string version,
                                                                server::Logger* log) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<IndexServer> s(new IndexServer(options, log));
  absl::Status st = s->Init(std::move(version));
  if (!st.ok()) {
    s->Shutdown();
    return st;
  }
  return s;
}

void IndexServer::OnStreamMessage(absl::string_view subject, absl::string_view data,
                                  const StreamPosition* pos) {
  absl::Status s = ingest_->ApplyEventBatch(subject, data);
  if (!s.ok()) log_->Warn("dropped a malformed event batch", {{"error", std::string(s.message())}});
  replayed_.fetch_add(1, std::memory_order_relaxed);
  if (!ready_.load(std::memory_order_relaxed) && pos != nullptr &&
      (pos->stream_sequence >= replay_target_ || pos->pending == 0)) {
    ready_.store(true);
    log_->Info("replay done",
               {{"messages", replayed_.load()}, {"keys", index_->Stats(absl::Now()).keys}});
  }
}

absl::Status IndexServer::Init(std::string version) {
  version_ = std::move(version);
  KVTIER_ASSIGN_OR_RETURN(index_, ClusterIndex::Create(options_.index));
  ingest_ = std::make_unique<EventIngest>(index_.get());
  service_ = std::make_unique<IndexService>(
      index_.get(), ingest_.get(), [this] { return ready(); }, options_.max_chain, api_token_);
  token_files_ = std::make_unique<server::TokenFiles>(
      log_, absl::Seconds(options_.tls.reload_seconds),
      [](const std::string& setting, const std::string& text) {
        // As Validate: 16 characters for the API's tokens.
        absl::Status s = CheckTokenList(text, setting == "api_token" ? kMinApiTokenLength : 1);
        return s.ok() ? s : absl::InvalidArgumentError(absl::StrCat(setting, ": ", s.message()));
      });
  if (!options_.api_token_file.empty()) {
    token_files_->Add("api_token", options_.api_token_file, api_token_);
  }
  if (!options_.status_token_file.empty()) {
    token_files_->Add("status_token", options_.status_token_file, status_token_);
  }

  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                          server::ServerCredentials(options_.tls, "tls"));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.grpc, credentials, &grpc_port_);
  builder.RegisterService(service_.get());
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr || grpc_port_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("grpc: cannot listen on '", options_.grpc, "'"));
  }
  if (!options_.http.empty()) {
    server::StatusPageOptions po;
    po.title = "kvtier-index";
    po.snapshot = [this] { return Snapshot(); };
    po.bearer_token = status_token_;
    po.require_token = !IsLoopback(options_.http);
    KVTIER_ASSIGN_OR_RETURN(status_page_, server::StatusPage::Create(std::move(po)));
    KVTIER_ASSIGN_OR_RETURN(
        http_, server::HttpServer::Start(
                   options_.http, "http",
                   server::HttpServer::RequestHandler([this](const server::HttpRequest& request) {
                     std::optional<server::HttpResponse> r = status_page_->Handle(request);
                     return r.has_value() ? *std::move(r) : ServeHttp(request.path);
                   }),
                   log_));
    if (!IsLoopback(options_.http) && options_.status_token.empty()) {
      log_->Warn("status page off",
                 {{"reason", "http is not loopback and status_token is not set"}});
    }
  }

  // vLLM endpoints.
  if (!options_.zmq.empty()) {
    zmq_ctx_ = zmq_ctx_new();
    for (const VllmEndpoint& raw : options_.zmq) {
      const VllmEndpoint e = WithDefaults(raw);
      KVTIER_ASSIGN_OR_RETURN(uint32_t node, index_->NodeIndex(e.node_id, NodeSource::kVllm));
      zmq_threads_.emplace_back([this, e, node] { ZmqLoop(e, node); });
    }
  }

  // NATS: heartbeats first (so nodes are known), then the stream.
  NatsBusOptions nats = options_.nats;
  nats.name = "kvtier-index";
  KVTIER_ASSIGN_OR_RETURN(bus_, NatsBus::Connect(nats));
  KVTIER_RETURN_IF_ERROR(bus_->Subscribe(
      "kvtier.nodes.>",
      [this](absl::string_view subject, absl::string_view data, const StreamPosition*) {
        // The subject names the node: a heartbeat for another id is refused.
        absl::Status s = ingest_->ApplyHeartbeat(subject, data, absl::Now());
        if (!s.ok())
          log_->Warn("dropped a malformed heartbeat", {{"error", std::string(s.message())}});
      }));
  if (options_.create_stream) KVTIER_RETURN_IF_ERROR(bus_->EnsureStream(options_.stream));
  KVTIER_ASSIGN_OR_RETURN(replay_target_, bus_->LastSequence(options_.stream.name));
  if (replay_target_ == 0) ready_.store(true);
  KVTIER_RETURN_IF_ERROR(bus_->SubscribeStream(
      options_.stream.subjects,
      [this](absl::string_view subject, absl::string_view data, const StreamPosition* pos) {
        OnStreamMessage(subject, data, pos);
      }));

  sweeper_ = std::thread([this] {
    while (!stop_.WaitForNotificationWithTimeout(options_.sweep_interval)) {
      const uint64_t n = index_->Sweep(absl::Now());
      if (n > 0) log_->Info("dropped the entries of dead nodes", {{"entries", n}});
      token_files_->ReloadIfDue(absl::Now());
    }
  });
  log_->Info(
      "kvtier-index started",
      {{"version", version_},
       {"grpc", absl::StrCat(options_.grpc.substr(0, options_.grpc.rfind(':')), ":", grpc_port_)},
       {"http",
        http_ ? absl::StrCat(options_.http.substr(0, options_.http.rfind(':')), ":", http_->port())
              : std::string("off")},
       {"tls", options_.tls.enabled()},
       {"mtls", options_.tls.require_client_cert},
       {"api_token", !options_.api_token.empty()},
       {"nats", RedactNatsUrls(options_.nats.url)},
       {"replay_target", replay_target_},
       {"zmq_endpoints", static_cast<uint64_t>(options_.zmq.size())}});
  return absl::OkStatus();
}

void IndexServer::ZmqLoop(const VllmEndpoint& e, uint32_t node) {
  void* sock = zmq_socket(zmq_ctx_, ZMQ_SUB);
  const int timeout_ms = 200;
  zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout_ms, sizeof(timeout_ms));
  const int linger = 0;
  zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
  zmq_setsockopt(sock, ZMQ_SUBSCRIBE, e.topic.data(), e.topic.size());
  if (zmq_connect(sock, e.endpoint.c_str()) != 0) {
    log_->Error("cannot connect to a vLLM endpoint",
                {{"endpoint", e.endpoint}, {"error", zmq_strerror(zmq_errno())}});
    zmq_close(sock);
    return;
  }
  log_->Info("reading vLLM KV events", {{"endpoint", e.endpoint}, {"node_id", e.node_id}});
  VllmSequence sequence;
  std::vector<std::string> frames;
  while (!stop_.HasBeenNotified()) {
    frames.clear();
    bool more = true;
    bool failed = false;
    while (more) {
      zmq_msg_t msg;
      zmq_msg_init(&msg);
      const int n = zmq_msg_recv(&msg, sock, 0);
      if (n < 0) {
        zmq_msg_close(&msg);
        failed = true;
        break;
      }
      frames.emplace_back(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
      more = zmq_msg_more(&msg) != 0;
      zmq_msg_close(&msg);
    }
    if (failed && frames.empty()) continue;  // timeout: check stop_
    zmq_messages_.fetch_add(1, std::memory_order_relaxed);
    // vLLM's ZmqEventPublisher sends [topic, sequence (8 bytes, big-endian), payload].
    if (failed || frames.size() != 3 || frames[1].size() != 8) {
      ingest_->CountMalformed();
      log_->Warn("dropped a malformed vLLM message",
                 {{"endpoint", e.endpoint}, {"frames", static_cast<uint64_t>(frames.size())}});
      continue;
    }
    uint64_t seq = 0;
    for (char c : frames[1]) seq = (seq << 8) | static_cast<uint8_t>(c);
    const VllmSequence::Step step = sequence.Next(seq);
    if (step.missed > 0) zmq_gaps_.fetch_add(step.missed, std::memory_order_relaxed);
    if (step.restarted) {
      // A new vLLM process: its block pool starts empty.
      const uint64_t dropped = ingest_->ApplyVllmRestart(node);
      log_->Info("a vLLM endpoint restarted; dropped its entries",
                 {{"endpoint", e.endpoint}, {"sequence", seq}, {"entries", dropped}});
    }
    absl::Status s = ingest_->ApplyVllmBatch(node, e.namespace_id, frames[2]);
    if (!s.ok()) {
      log_->Warn("dropped a malformed vLLM event batch",
                 {{"endpoint", e.endpoint}, {"error", std::string(s.message())}});
    }
  }
  zmq_close(sock);
}

server::HttpResponse IndexServer::ServeHttp(const std::string& path) {
  if (path == "/metrics") {
    return {200, "text/plain; version=0.0.4; charset=utf-8", RenderMetrics()};
  }
  if (path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
  if (path == "/readyz") {
    if (ready() && !shut_down_.load()) return {200, "text/plain; charset=utf-8", "ready\n"};
    return {503, "text/plain; charset=utf-8", "not ready\n"};
  }
  return {404, "text/plain; charset=utf-8",
          "not found: try /, /api/v1/status, /metrics, /healthz or /readyz\n"};
}

server::StatusSnapshot IndexServer::Snapshot() const {
  server::StatusSnapshot st;
  const absl::Time now = absl::Now();
  st.service = "kvtier-index";
  char host[256] = {};
  st.node = gethostname(host, sizeof(host) - 1) == 0 ? host : "unknown";
  st.version = version_;
  st.start_time_seconds = absl::ToDoubleSeconds(start_time_ - absl::UnixEpoch());
  st.ready = ready() && !shut_down_.load();
  const ClusterIndexStats s = index_->Stats(now);
  const IngestCounters c = ingest_->Counters();
  st.lookups = s.lookups;
  st.latencies.push_back(service_->LookupLatency());
  st.requests_by_code = service_->LookupsByCode();
  uint64_t vllm_nodes = 0;
  for (const NodeStatus& n : index_->Nodes(now)) {
    server::StatusPeer p;
    p.name = n.node_id;
    if (n.source == NodeSource::kVllm) {
      ++vllm_nodes;
      p.transport = "zmq";
    } else {
      p.address = n.grpc_address;
      p.transport = "nats";
    }
    p.up = n.alive;
    st.peers.push_back(std::move(p));
  }
  st.counters = {
      {"keys", s.keys},
      {"entries", s.entries},
      {"max_entries", s.max_entries},
      {"dropped_entries", s.dropped_entries},
      {"purged_entries", s.purged_entries},
      {"memory_bytes", index_->MemoryBytes()},
      {"nodes", s.nodes},
      {"alive_nodes", s.alive_nodes},
      {"dead_nodes", s.nodes - std::min(s.nodes, s.alive_nodes)},
      {"vllm_nodes", vllm_nodes},
      {"lookups", s.lookups},
      {"lookup_errors", service_->lookup_errors()},
      {"batches", c.batches},
      {"events", c.events},
      {"event_keys", c.keys},
      {"malformed", c.malformed},
      {"duplicates", c.duplicates},
      {"sequence_gaps", c.gaps},
      {"heartbeats", c.heartbeats},
      {"vllm_batches", c.vllm_batches},
      {"vllm_messages", zmq_messages_.load()},
      {"vllm_sequence_gaps", zmq_gaps_.load()},
      {"vllm_restarts", c.vllm_restarts},
  };
  return st;
}

std::string IndexServer::RenderMetrics() const {
  std::vector<MetricFamily> f = service_->Collect();
  const absl::Time now = absl::Now();
  const ClusterIndexStats s = index_->Stats(now);
  const IngestCounters c = ingest_->Counters();
  const uint64_t mem = index_->MemoryBytes();
  const MetricType kC = MetricType::Counter;
  const MetricType kG = MetricType::Gauge;
  f.push_back(Family("kvtier_index_keys", "Distinct (namespace, key) entries.", kG, s.keys));
  f.push_back(Family("kvtier_index_entries", "(key, node) holder entries.", kG, s.entries));
  f.push_back(
      Family("kvtier_index_max_entries", "Configured bound on holder entries.", kG, s.max_entries));
  f.push_back(Family("kvtier_index_memory_bytes", "Estimated bytes of the index map.", kG, mem));
  f.push_back(Family("kvtier_index_dropped_entries_total",
                     "Holder entries dropped (oldest first) to stay within max_entries.", kC,
                     s.dropped_entries));
  f.push_back(Family("kvtier_index_purged_entries_total",
                     "Holder entries of dead or restarted nodes dropped.", kC, s.purged_entries));
  f.push_back(Family("kvtier_index_lookups_total", "Lookups answered.", kC, s.lookups));
  f.push_back(Family("kvtier_index_lookup_errors_total", "Lookups refused (bad input, not ready).",
                     kC, service_->lookup_errors()));
  f.push_back(Family("kvtier_index_auth_failures_total",
                     "Index calls refused for a missing or wrong token.", kC,
                     service_->auth_failures()));
  f.push_back(Family("kvtier_index_nodes", "Nodes known.", kG, s.nodes));
  f.push_back(Family("kvtier_index_alive_nodes", "Nodes answered for (heartbeat fresh).", kG,
                     s.alive_nodes));
  f.push_back(
      Family("kvtier_index_event_batches_total", "kvtierd event batches applied.", kC, c.batches));
  f.push_back(
      Family("kvtier_index_events_total", "Events applied (kvtierd and vLLM).", kC, c.events));
  f.push_back(
      Family("kvtier_index_event_keys_total", "Keys stored or removed by events.", kC, c.keys));
  f.push_back(Family("kvtier_index_malformed_messages_total",
                     "Messages dropped because they failed to decode or validate.", kC,
                     c.malformed));
  f.push_back(Family("kvtier_index_duplicate_batches_total",
                     "Batches skipped because they were already applied.", kC, c.duplicates));
  f.push_back(Family("kvtier_index_sequence_gaps_total",
                     "Batches that arrived after missed sequence numbers.", kC, c.gaps));
  f.push_back(
      Family("kvtier_index_heartbeats_total", "Node heartbeats received.", kC, c.heartbeats));
  f.push_back(
      Family("kvtier_index_vllm_batches_total", "vLLM event batches applied.", kC, c.vllm_batches));
  f.push_back(Family("kvtier_index_vllm_restarts_total",
                     "vLLM endpoints seen restarting (sequence numbers from 0 again); their "
                     "blocks were dropped.",
                     kC, c.vllm_restarts));
  f.push_back(Family("kvtier_index_vllm_messages_total", "ZMQ messages received from vLLM.", kC,
                     zmq_messages_.load()));
  f.push_back(Family("kvtier_index_vllm_sequence_gaps_total",
                     "vLLM messages missed (sequence jumps).", kC, zmq_gaps_.load()));
  f.push_back(Family("kvtier_index_ready", "1 once the start-up replay has caught up.", kG,
                     ready() ? 1 : 0));
  f.push_back(Family("kvtier_index_build_info", "Version of kvtier-index.", kG, 1,
                     {{"version", version_}}));
  f.push_back(Family("kvtier_index_start_time_seconds", "Start time, seconds since the epoch.", kG,
                     absl::ToDoubleSeconds(start_time_ - absl::UnixEpoch())));
  return prometheus::TextSerializer().Serialize(f);
}

void IndexServer::Shutdown() {
  if (shut_down_.exchange(true)) return;
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (grpc_) grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  bus_.reset();  // stops the subscriptions before the index they feed
  for (std::thread& t : zmq_threads_) t.join();
  zmq_threads_.clear();
  if (zmq_ctx_ != nullptr) {
    zmq_ctx_term(zmq_ctx_);
    zmq_ctx_ = nullptr;
  }
  if (sweeper_.joinable()) sweeper_.join();
  if (http_) http_->Stop();
  if (status_page_) status_page_->Stop();
}

IndexServer::~IndexServer() { Shutdown(); }

}  // namespace kvtier::index
