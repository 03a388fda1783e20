#include "src/server/daemon.h"

#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "src/common/status_macros.h"
#include "src/index/index_holder_source.h"
#include "src/server/grpc_tls.h"
#include "src/transfer/transfer_metrics.h"

namespace kvtier::server {
namespace {

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonConfig& config,
                                                      std::string version, Logger* log) {
  KVTIER_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Daemon> d(new Daemon(config, log));
  absl::Status s = d->Init(std::move(version));
  if (!s.ok()) {
    d->Shutdown();
    return s;
  }
  return d;
}

absl::Status Daemon::Init(std::string version) {
  if (!config_.data_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(config_.data_dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("data_dir: cannot create '", config_.data_dir, "': ", ec.message()));
    }
  }
  EmbeddedCacheSeams seams;
  if (config_.cluster.enabled()) {
    KVTIER_RETURN_IF_ERROR(StartCluster());
    seams.event_sink = publisher_.get();
  }
  seams.blob_log = [log = log_](const std::string& line) { log->Warn(line); };
  if (config_.ucx.enabled) {
    // UCX starts first so that it can allocate the arena (shared memory that
    // readers on this host map and read one-sided; a memfd otherwise).
    KVTIER_RETURN_IF_ERROR(CreateUcxEngine());
    seams.arena_allocator = [engine = ucx_.get()](uint64_t bytes) {
      return engine->AllocateArena(bytes);
    };
  }
  absl::StatusOr<std::unique_ptr<EmbeddedCache>> cache = EmbeddedCache::Create(config_.dram, seams);
  if (!cache.ok()) {
    return absl::Status(cache.status().code(), absl::StrCat("cache: ", cache.status().message()));
  }
  cache_ = std::move(*cache);
  while (arena_id_ == 0) {
    if (getrandom(&arena_id_, sizeof(arena_id_), 0) != sizeof(arena_id_)) arena_id_ = 0;
  }
  version_ = version;
  start_time_ = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  namespace_stats_ = std::make_unique<NamespaceStats>();
  auth_ = std::make_unique<Authenticator>(config_);
  ServiceOptions so;
  so.max_keys_per_request = config_.max_keys_per_request;
  so.max_tokens_per_request = config_.max_tokens_per_request;
  so.max_message_bytes = config_.max_message_bytes;
  so.lease_seconds = config_.lease_seconds;
  so.max_leases = config_.max_leases;
  // With tenants, no one token may hold every lease; without, there is one
  // principal (or the admin alone) and max_leases is its limit.
  so.max_leases_per_principal =
      config_.tenants.empty() ? config_.max_leases : config_.max_leases_per_principal;
  so.arena_id = arena_id_;
  so.shm_socket = config_.shared_memory ? config_.ShmSocketPath() : "";
  so.version = version;
  so.config_yaml = config_.ToRedactedYaml();
  so.namespace_stats = namespace_stats_.get();
  metrics_ = std::make_unique<Metrics>(
      [this] { return cache_->Stats(); },
      [this] {
        return DaemonGauges{service_ ? service_->leases() : 0, shm_ ? shm_->grants() : 0};
      },
      version);
  metrics_->SetNamespaceSource([this] { return namespace_stats_->Snapshot(); });
  service_ = std::make_unique<CacheService>(cache_.get(), auth_.get(), metrics_.get(), log_, so);
  KVTIER_RETURN_IF_ERROR(StartTransfer());

  KVTIER_RETURN_IF_ERROR(PrepareSocketPath(config_.unix_socket, "listen.unix_socket"));
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + config_.unix_socket, grpc::InsecureServerCredentials());
  if (!config_.tcp.empty()) {
    KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds,
                            ServerCredentials(config_.tls, "tls"));
    builder.AddListeningPort(config_.tcp, creds, &tcp_port_);
  }
  // Bulk transfers: large HTTP/2 frames and flow-control windows instead of
  // the defaults tuned for small messages (16 KiB frames, 64 KiB windows).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 4 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_grpc_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config_.max_grpc_message_bytes));
  builder.RegisterService(service_.get());
  if (peer_service_ != nullptr) builder.RegisterService(peer_service_.get());
  // The socket file is created with the umask; keep it private until chmod.
  const mode_t old_umask = umask(0177);
  grpc_ = builder.BuildAndStart();
  umask(old_umask);
  if (grpc_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("listen: cannot start gRPC on unix:", config_.unix_socket,
                     config_.tcp.empty() ? "" : absl::StrCat(" and ", config_.tcp),
                     " (address in use, or a directory that does not exist?)"));
  }
  if (!config_.tcp.empty() && tcp_port_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("listen.tcp: cannot listen on '", config_.tcp, "'"));
  }
  chmod(config_.unix_socket.c_str(), config_.unix_socket_mode);

  if (config_.shared_memory) {
    ShmServerOptions shm;
    shm.path = config_.ShmSocketPath();
    shm.mode = config_.unix_socket_mode;
    shm.arena_fd = cache_->dram().arena().fd();
    shm.arena_id = arena_id_;
    shm.arena_bytes = cache_->dram().arena().size();
    shm.control = [this](const Principal& who, shm::ControlMethod method, absl::string_view body) {
      return service_->Control(who, method, body);
    };
    shm.max_control_bytes = static_cast<uint32_t>(
        std::min<uint64_t>(config_.max_grpc_message_bytes, shm::kMaxControlBytes));
    KVTIER_ASSIGN_OR_RETURN(shm_, ShmServer::Start(shm, auth_.get(), log_));
  }
  if (!config_.http.empty()) {
    StatusPageOptions po;
    po.title = "kvtierd";
    po.snapshot = [this] { return Snapshot(); };
    po.tokens_per_gpu_second = config_.tokens_per_gpu_second;
    po.bearer_token = status_token_;
    const bool remote = !IsLoopbackHost(HostOf(config_.http));
    po.require_token = remote;
    absl::StatusOr<std::unique_ptr<StatusPage>> page = StatusPage::Create(std::move(po));
    if (!page.ok()) {
      return absl::Status(page.status().code(),
                          absl::StrCat("status page: ", page.status().message()));
    }
    status_page_ = *std::move(page);
    KVTIER_ASSIGN_OR_RETURN(
        http_, HttpServer::Start(config_.http, "listen.http",
                                 HttpServer::RequestHandler([this](const HttpRequest& request) {
                                   std::optional<HttpResponse> r = status_page_->Handle(request);
                                   return r.has_value() ? *std::move(r) : ServeHttp(request.path);
                                 }),
                                 log_));
    if (remote && config_.status_token.empty()) {
      log_->Warn("status page off",
                 {{"reason", "listen.http is not loopback and listen.status_token is not set"}});
    }
  }
  token_files_ =
      std::make_unique<TokenFiles>(log_, absl::Seconds(config_.tls.reload_seconds),
                                   [this](const std::string& setting, const std::string& text) {
                                     return CheckReloadedToken(setting, text);
                                   });
  for (const auto& [setting, path] : config_.token_files) {
    if (const Secret* secret = TokenSecret(setting); secret != nullptr) {
      token_files_->Add(setting, path, *secret);
    }
  }
  reaper_ = std::thread([this] {
    const absl::Duration period =
        std::min(absl::Seconds(1), absl::Seconds(config_.lease_seconds) / 4);
    while (!stop_reaper_.WaitForNotificationWithTimeout(period)) {
      const absl::Time now = absl::Now();
      service_->ExpireLeases(now);
      token_files_->ReloadIfDue(now);
    }
  });
  ready_.store(true);
  const CacheStats st = cache_->Stats();
  log_->Info(
      "kvtierd ready",
      {{"version", version},
       {"socket", config_.unix_socket},
       {"shm_socket", config_.shared_memory ? config_.ShmSocketPath() : std::string()},
       {"tcp", config_.tcp.empty() ? std::string() : absl::StrCat(config_.tcp)},
       {"tls", config_.tls.enabled()},
       {"mtls", config_.tls.require_client_cert},
       {"http", config_.http.empty() ? std::string()
                                     : absl::StrCat(config_.http.substr(0, config_.http.rfind(':')),
                                                    ":", http_port())},
       {"dram_bytes", st.tiers.empty() ? uint64_t{0} : st.tiers[0].capacity_bytes},
       {"huge_pages", st.huge_pages},
       {"auth", config_.open_mode() ? "open (unix socket only)" : "tokens"},
       {"tenants", static_cast<uint64_t>(config_.tenants.size())}});
  return absl::OkStatus();
}

const Secret* Daemon::TokenSecret(const std::string& setting) const {
  if (setting == "auth.admin_token") return &auth_->admin_token();
  if (setting == "listen.status_token") return &status_token_;
  if (setting == "cluster.index_token") return &index_token_;
  if (setting == "ucx.peer_token") return &peer_token_;
  for (size_t i = 0; i < config_.tenants.size(); ++i) {
    if (setting == absl::StrCat("auth.tenants[", i, "].token")) return &auth_->tenant_token(i);
  }
  return nullptr;
}

absl::Status Daemon::CheckReloadedToken(const std::string& setting, const std::string& text) const {
  // The tokens as they are now, with `text` for `setting`, checked as at
  // start.
  const Secret* changing = TokenSecret(setting);
  auto value = [&](const Secret& s) { return &s == changing ? text : s.Get(); };
  DaemonConfig next = config_;
  next.admin_token = value(auth_->admin_token());
  for (size_t i = 0; i < next.tenants.size(); ++i) {
    next.tenants[i].token = value(auth_->tenant_token(i));
  }
  next.ucx.peer_token = value(peer_token_);
  next.status_token = value(status_token_);
  return next.ValidateTokens();
}

absl::Status Daemon::StartCluster() {
  const ClusterConfig& c = config_.cluster;
  index::NatsBusOptions nats = c.NatsOptions();
  nats.name = absl::StrCat("kvtierd-", config_.node_id);
  nats.retry_initial_connect = true;  // publish once the server is up
  absl::StatusOr<std::unique_ptr<index::NatsBus>> bus = index::NatsBus::Connect(nats);
  if (!bus.ok()) {
    // Errors not about one option concern the server(s) of cluster.nats_url.
    return index::NameNatsSetting(bus.status(), "cluster.nats_", "cluster.nats_url: ");
  }
  index::EventPublisherOptions po;
  po.node_id = config_.node_id;
  po.grpc_address = c.advertise_grpc.empty() ? config_.tcp : c.advertise_grpc;
  po.ucx_address = c.advertise_ucx;
  po.max_batch_events = c.publish_batch;
  po.publish_interval = absl::Milliseconds(c.publish_interval_ms);
  po.heartbeat_interval = absl::Milliseconds(c.heartbeat_interval_ms);
  po.max_queued_events = c.max_queued_events;
  po.stream.max_age = absl::Seconds(c.stream_max_age_seconds);
  po.stream.max_bytes = static_cast<int64_t>(c.stream_max_bytes);
  if (absl::Status s = (*bus)->EnsureStream(po.stream); !s.ok()) {
    log_->Warn("cannot create the event stream yet (the index creates it too)",
               {{"error", std::string(s.message())}});
  }
  po.create_stream = false;
  absl::StatusOr<std::unique_ptr<index::EventPublisher>> p =
      index::EventPublisher::Start(po, std::move(*bus));
  if (!p.ok()) return p.status();
  publisher_ = std::move(*p);
  if (!c.index_address.empty()) {
    index::IndexHolderSourceOptions ho;
    ho.index_addresses = absl::StrSplit(c.index_address, ',', absl::SkipWhitespace());
    ho.self_node_id = config_.node_id;
    ho.token = index_token_;
    ho.ca_file = c.index_ca_file;
    if (!c.index_ca_file.empty()) {
      ho.cert_file = config_.tls.cert_file;
      ho.key_file = config_.tls.key_file;
    }
    ho.tls_name = c.index_tls_name;
    ho.tls_reload_seconds = config_.tls.reload_seconds;
    absl::StatusOr<std::unique_ptr<index::IndexHolderSource>> h =
        index::IndexHolderSource::Create(ho);
    if (!h.ok()) return h.status();
    // Not fatal (the index may start later), but a refused token or TLS
    // setting would otherwise show only as remote reads that never happen.
    if (absl::Status s = (*h)->Check(absl::Now() + absl::Seconds(2)); !s.ok()) {
      const char* what =
          s.code() == absl::StatusCode::kPermissionDenied
              ? "the cluster index refused this node: remote reads are off until fixed"
          : s.code() == absl::StatusCode::kFailedPrecondition
              ? "TLS to the cluster index failed: remote reads are off until fixed"
              : "cannot reach the cluster index, or not over TLS with "
                "cluster.index_ca_file (check both if it persists)";
      log_->Warn(what, {{"error", std::string(s.message())}});
    }
    if (!c.index_token.empty() && c.index_ca_file.empty()) {
      for (const std::string& a : ho.index_addresses) {
        if (!IsLoopbackHost(HostOf(a))) {
          log_->Warn(
              "the index token goes to a non-loopback index without TLS: set "
              "cluster.index_ca_file",
              {{"index", a}});
          break;
        }
      }
    }
    index_holders_ = std::move(*h);
  }
  log_->Info("cluster events on", {{"node_id", config_.node_id},
                                   {"nats", index::RedactNatsUrls(c.nats_url)},
                                   {"grpc_address", po.grpc_address},
                                   {"index", c.index_address}});
  return absl::OkStatus();
}

absl::Status Daemon::CreateUcxEngine() {
  transfer::UcxOptions uo;
  uo.progress_threads = config_.ucx.progress_threads;
  uo.copy_threads = config_.ucx.copy_threads;
  uo.busy_poll = config_.ucx.busy_poll_us < 0 ? absl::InfiniteDuration()
                                              : absl::Microseconds(config_.ucx.busy_poll_us);
  absl::StatusOr<std::unique_ptr<transfer::UcxEngine>> engine = transfer::UcxEngine::Create(uo);
  if (!engine.ok()) {
    return absl::Status(engine.status().code(), absl::StrCat("ucx: ", engine.status().message()));
  }
  ucx_ = std::move(*engine);
  return absl::OkStatus();
}

absl::Status Daemon::StartTransfer() {
  if (!config_.ucx.enabled) return absl::OkStatus();
  if (ucx_ == nullptr) KVTIER_RETURN_IF_ERROR(CreateUcxEngine());
  const Arena& arena = cache_->dram().arena();
  // A no-op when UCX allocated the arena; else the memfd is registered.
  KVTIER_RETURN_IF_ERROR(ucx_->MapArena(arena.base(), arena.size()));
  log_->Info("dram arena for node-to-node transfer",
             {{"memory", arena.source()},
              {"ucx", ucx_->Stats().arena},
              {"not_ucx_because", arena.allocator_skipped()}});
  uint64_t boot_id = 0;
  while (boot_id == 0) {
    if (getrandom(&boot_id, sizeof(boot_id), 0) != sizeof(boot_id)) boot_id = 0;
  }
  transfer::PeerServiceOptions po;
  po.node_id = config_.node_id;
  po.boot_id = boot_id;
  po.lease_timeout = absl::Seconds(config_.ucx.lease_seconds);
  po.max_keys_per_request = config_.max_keys_per_request;
  po.peer_token = peer_token_;
  KVTIER_ASSIGN_OR_RETURN(peer_service_,
                          transfer::PeerService::Create(cache_.get(), ucx_.get(), po));
  std::shared_ptr<grpc::ChannelCredentials> peer_credentials;
  if (config_.tls.enabled()) {
    // Peers listen with the same TLS settings: present this node's
    // certificate (their require_client_cert) and verify theirs.
    const bool own_ca = !config_.ucx.peer_ca_file.empty();
    KVTIER_ASSIGN_OR_RETURN(
        peer_credentials,
        ChannelCredentials({own_ca ? config_.ucx.peer_ca_file : config_.tls.client_ca_file,
                            own_ca ? "ucx.peer_ca_file" : "tls.client_ca_file"},
                           {config_.tls.cert_file, "tls.cert_file"},
                           {config_.tls.key_file, "tls.key_file"}, config_.tls.reload_seconds));
  }
  peer_clients_ = std::make_unique<transfer::PeerClients>(peer_token_, std::move(peer_credentials),
                                                          config_.ucx.peer_tls_name);
  if (!config_.peers.empty()) {
    static_holders_ = std::make_unique<transfer::StaticPeerSource>(config_.peers, config_.node_id,
                                                                   peer_clients_.get());
  }
  if (transfer::HolderSource* holders = holder_source(); holders != nullptr) {
    transfer::RemoteReaderOptions ro;
    ro.node_id = config_.node_id;
    ro.lookup_timeout = absl::Milliseconds(config_.ucx.lookup_timeout_ms);
    ro.transfer_timeout = absl::Milliseconds(config_.ucx.transfer_timeout_ms);
    ro.max_batch_chunks = config_.ucx.max_batch_chunks;
    ro.idle_peer_timeout = absl::Seconds(config_.ucx.idle_peer_seconds);
    ro.on_lookup_error = [this](const absl::Status& s) {
      uint64_t held_back = 0;
      if (!lookup_error_log_.Allow(absl::Now(), &held_back)) return;
      log_->Warn("asking where chunks live failed: other nodes' chunks are misses meanwhile",
                 {{"error", std::string(s.message())}, {"not_logged_since", held_back}});
    };
    KVTIER_ASSIGN_OR_RETURN(
        remote_,
        transfer::RemoteReader::Create(cache_.get(), ucx_.get(), holders, peer_clients_.get(), ro));
    service_->SetRemoteReader(remote_.get());
  }
  metrics_->AddSection([this] {
    std::optional<transfer::RemoteReaderStats> rs;
    if (remote_ != nullptr) rs = remote_->Stats();
    return transfer::RenderTransferMetrics(ucx_->Stats(), peer_service_->Stats(),
                                           rs.has_value() ? &*rs : nullptr,
                                           peer_clients_->Health());
  });
  log_->Info("node-to-node transfer",
             {{"node_id", config_.node_id},
              {"ucx", transfer::UcxEngine::Version()},
              {"workers", static_cast<uint64_t>(config_.ucx.progress_threads)},
              {"peers", absl::StrJoin(config_.peers, ",")},
              {"UCX_TLS", std::getenv("UCX_TLS") != nullptr ? std::getenv("UCX_TLS") : "all"}});
  return absl::OkStatus();
}

void Daemon::StopTransfer() {
  remote_.reset();
  static_holders_.reset();
  peer_clients_.reset();
  peer_service_.reset();
  ucx_.reset();
}

HttpResponse Daemon::ServeHttp(const std::string& path) {
  if (path == "/metrics") {
    std::string text = metrics_->Render();
    if (publisher_) text += index::RenderPublisherMetrics(publisher_->Stats());
    absl::StrAppend(&text,
                    "# HELP kvtier_connections_cut_total Connections to an operational listener "
                    "shut down because they were still open at their deadline (10 s).\n"
                    "# TYPE kvtier_connections_cut_total counter\n"
                    "kvtier_connections_cut_total{listener=\"http\"} ",
                    http_ != nullptr ? http_->cut_connections() : 0, "\n");
    if (shm_ != nullptr) {
      absl::StrAppend(&text, "kvtier_connections_cut_total{listener=\"shared_memory\"} ",
                      shm_->cut_handshakes(), "\n");
    }
    return {200, "text/plain; version=0.0.4; charset=utf-8", std::move(text)};
  }
  if (path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
  if (path == "/readyz") {
    if (ready_.load() && !service_->draining())
      return {200, "text/plain; charset=utf-8", "ready\n"};
    return {503, "text/plain; charset=utf-8", "not ready\n"};
  }
  return {404,
          "text/plain; charset=utf-8",
          "not found: try /, /api/v1/status, /metrics, /healthz or /readyz\n",
          {}};
}

StatusSnapshot Daemon::Snapshot() const {
  StatusSnapshot s;
  s.service = "kvtierd";
  s.node = config_.node_id.empty() ? HostName() : config_.node_id;
  s.version = version_;
  s.start_time_seconds = start_time_;
  s.ready = ready_.load() && service_ != nullptr && !service_->draining();
  const CacheStats st = cache_->Stats();
  s.lookups = st.lookups;
  s.lookup_chunks = st.lookup_chunks;
  s.lookup_hit_chunks = st.lookup_hits;
  s.tiers = st.tiers;
  s.namespaces = namespace_stats_->Snapshot();
  for (const NamespaceCounters& n : s.namespaces) s.prefill_tokens_saved += n.loaded_tokens;
  s.latencies = metrics_->Latencies();
  s.requests_by_code = metrics_->RequestsByCode();
  if (peer_clients_ != nullptr) {
    std::map<std::string, std::string> transports;  // by address
    if (remote_ != nullptr) {
      for (const transfer::RemotePeerInfo& p : remote_->Stats().peers) {
        transports[p.address] = p.transports;
      }
    }
    for (const transfer::PeerHealth& h : peer_clients_->Health()) {
      StatusPeer p;
      p.name = h.node_id;
      p.address = h.address;
      auto t = transports.find(h.address);
      p.transport = t != transports.end() && !t->second.empty() ? t->second : "grpc";
      p.up = h.up;
      p.bytes_received = h.bytes_read;
      s.peers.push_back(std::move(p));
    }
  }
  return s;
}

void Daemon::Shutdown() {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  const bool was_ready = ready_.exchange(false);
  if (was_ready) log_->Info("draining", {{"drain_seconds", config_.drain_seconds}});
  if (service_) service_->SetDraining();
  if (shm_) shm_->Stop();
  if (grpc_) {
    // Drain: new calls are refused (SetDraining); wait for the ones in
    // flight, then stop at once. (gRPC's own graceful shutdown also waits for
    // idle clients to answer a ping, which takes seconds for nothing.)
    const absl::Time deadline = absl::Now() + absl::Seconds(config_.drain_seconds);
    while (service_->inflight() > 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (service_->inflight() > 0) {
      log_->Warn("drain deadline passed; cancelling calls", {{"inflight", service_->inflight()}});
    }
    grpc_->Shutdown(std::chrono::system_clock::now());
    grpc_->Wait();
  }
  if (reaper_.joinable()) {
    stop_reaper_.Notify();
    reaper_.join();
  }
  if (http_) http_->Stop();
  if (status_page_) status_page_->Stop();
  if (publisher_) publisher_->Stop();
  if (grpc_) unlink(config_.unix_socket.c_str());
  if (was_ready) log_->Info("stopped");
}

Daemon::~Daemon() {
  Shutdown();
  // Remote reads and pins for other nodes end before the arena goes.
  if (service_) service_->SetRemoteReader(nullptr);
  StopTransfer();
  // Leases (pins, reservations) go before the cache they point into.
  service_.reset();
}

}  // namespace kvtier::server
