// kvtierd: the node daemon. Owns the cache (DRAM tier), serves kvtier.v1.Cache
// over gRPC on a Unix socket (always) and TCP (when configured), hands the
// arena to local clients over the shared-memory side channel, and serves
// /metrics, /healthz and /readyz over HTTP.
//
// Lifecycle: Start brings everything up (and fails with a status naming the
// config key when a listener cannot be opened); Shutdown drains: readiness
// turns false, Health says DRAINING, new RPCs are refused, in-flight RPCs get
// up to drain_seconds to finish, then everything stops and the socket files
// are removed.
//
// Thread-safety: Shutdown may be called from any thread, once or more.
#ifndef KVTIER_SRC_SERVER_DAEMON_H_
#define KVTIER_SRC_SERVER_DAEMON_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/server.h"
#include "src/common/secret.h"
#include "src/core/embedded_cache.h"
#include "src/index/event_publisher.h"
#include "src/server/auth.h"
#include "src/server/cache_service.h"
#include "src/server/config.h"
#include "src/server/http_server.h"
#include "src/server/log.h"
#include "src/server/metrics.h"
#include "src/server/namespace_stats.h"
#include "src/server/shm_server.h"
#include "src/server/status_page.h"
#include "src/server/token_files.h"
#include "src/transfer/holder_source.h"
#include "src/transfer/peer_client.h"
#include "src/transfer/peer_service.h"
#include "src/transfer/remote_reader.h"
#include "src/transfer/static_peers.h"
#include "src/transfer/ucx_engine.h"

namespace kvtier::server {

class Daemon {
 public:
  // `log` must outlive the daemon.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonConfig& config,
                                                       std::string version, Logger* log);
  ~Daemon();

  void Shutdown();
  bool ready() const { return ready_.load(); }
  int http_port() const { return http_ ? http_->port() : 0; }
  int tcp_port() const { return tcp_port_; }
  uint64_t arena_id() const { return arena_id_; }
  // Where remote reads learn which nodes hold a chain: the cluster index
  // (cluster.index_address) when configured, else the static `peers` list
  // (with ucx.enabled); nullptr when neither is.
  transfer::HolderSource* holder_source() const {
    if (index_holders_ != nullptr) return index_holders_.get();
    return static_holders_.get();
  }

 private:
  Daemon(DaemonConfig config, Logger* log)
      : config_(std::move(config)),
        log_(log),
        status_token_(config_.status_token),
        index_token_(config_.cluster.index_token),
        peer_token_(config_.ucx.peer_token) {}
  absl::Status Init(std::string version);
  HttpResponse ServeHttp(const std::string& path);
  // The figures of the status page.
  StatusSnapshot Snapshot() const;
  // Connects to NATS and starts the event publisher (and the HolderSource).
  absl::Status StartCluster();

  const DaemonConfig config_;
  Logger* const log_;
  // Tokens the services share with the daemon, which re-reads their files
  // (config_.token_files) every tls.reload_seconds; the admin's and the
  // tenants' are auth_'s.
  const Secret status_token_;
  const Secret index_token_;
  const Secret peer_token_;
  // Remote lookup errors: logged at most once a minute.
  LogThrottle lookup_error_log_{absl::Minutes(1)};
  // Re-reads config_.token_files (reaper thread).
  std::unique_ptr<TokenFiles> token_files_;
  // The Secret a setting of config_.token_files sets; nullptr for none.
  const Secret* TokenSecret(const std::string& setting) const;
  // OK when `text` can replace `setting`'s tokens (DaemonConfig::
  // ValidateTokens with the tokens in use now).
  absl::Status CheckReloadedToken(const std::string& setting, const std::string& text) const;
  uint64_t arena_id_ = 0;
  int tcp_port_ = 0;
  // Cluster events (cluster.nats_url); declared before cache_ so the
  // publisher outlives the cache that reports to it.
  std::unique_ptr<index::EventPublisher> publisher_;
  std::unique_ptr<transfer::HolderSource> index_holders_;
  std::unique_ptr<EmbeddedCache> cache_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<CacheService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<ShmServer> shm_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<NamespaceStats> namespace_stats_;
  std::unique_ptr<StatusPage> status_page_;
  std::string version_;
  double start_time_ = 0;  // Unix seconds
  std::thread reaper_;
  absl::Notification stop_reaper_;
  // Node-to-node transfer (ucx.enabled); torn down before the cache.
  absl::Status StartTransfer();
  // Creates ucx_ (config_.ucx).
  absl::Status CreateUcxEngine();
  void StopTransfer();
  std::unique_ptr<transfer::UcxEngine> ucx_;
  std::unique_ptr<transfer::PeerService> peer_service_;
  std::unique_ptr<transfer::PeerClients> peer_clients_;
  std::unique_ptr<transfer::StaticPeerSource> static_holders_;
  std::unique_ptr<transfer::RemoteReader> remote_;
  std::atomic<bool> ready_{false};
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_DAEMON_H_
