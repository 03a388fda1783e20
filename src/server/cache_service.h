// The kvtier.v1.Cache gRPC service over the embedded cache (proto/kvtier/v1/
// cache.proto documents each RPC).
//
// Every RPC but Health authenticates first (auth.h), then validates its
// request against the configured limits (InvalidArgument naming the field),
// then authorizes the namespace. absl::Status becomes grpc::Status only at the
// end of each handler (status_convert.h).
//
// Reservations (Reserve) and pins (Pin) are leases held for a client: they
// live in a table keyed by random 64-bit ids, belong to the principal that
// took them, and expire after `lease_seconds` unless committed or released
// (ExpireLeases, called by the daemon's reaper, aborts or drops them), so a
// client that dies cannot hold arena slots forever.
//
// Thread-safety: gRPC calls the handlers from many threads; every method is
// thread-safe.
#ifndef KVTIER_SRC_SERVER_CACHE_SERVICE_H_
#define KVTIER_SRC_SERVER_CACHE_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/impl/codegen/service_type.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "kvtier/v1/cache.pb.h"
#include "src/core/embedded_cache.h"
#include "src/server/auth.h"
#include "src/server/frames.h"
#include "src/server/log.h"
#include "src/server/metrics.h"
#include "src/server/namespace_stats.h"
#include "src/server/shm_protocol.h"
#include "src/transfer/remote_reader.h"

namespace kvtier::server {

struct ServiceOptions {
  uint32_t max_keys_per_request = 4096;        // keys or chunks in one request
  uint32_t max_tokens_per_request = 1u << 20;  // token ids in one Lookup
  uint64_t max_message_bytes = 1ull << 20;     // payload bytes per streamed message
  uint32_t lease_seconds = 30;                 // life of a reservation or pin
  uint32_t max_leases = 65536;                 // leases held at once
  uint32_t max_leases_per_principal = 32768;   // of those, held by one principal
  uint64_t arena_id = 0;                       // identifies this daemon's arena
  std::string shm_socket;                      // side-channel path; empty = disabled
  std::string version;                         // reported by Health and Stats
  std::string config_yaml;                     // redacted effective config (Config RPC)
  NamespaceStats* namespace_stats = nullptr;   // per-namespace counters; null = not kept
};

// Registers the kvtier.v1.Cache methods by hand rather than through the
// generated Cache::Service, so Save and Load can use the zero-copy frames of
// frames.h; the wire format is the generated one.
class CacheService final : public grpc::Service {
 public:
  // `cache`, `auth`, `metrics` and `log` must outlive the service.
  CacheService(EmbeddedCache* cache, const Authenticator* auth, Metrics* metrics, Logger* log,
               ServiceOptions options);
  ~CacheService() override;

  // Consults `remote` (not owned; outlives the service; nullptr = off) past
  // the local match: Lookup reports the chunks other nodes hold as
  // Tier::kRemote, and Load and Pin of such a chunk copy it into DRAM first.
  // Call before serving.
  void SetRemoteReader(transfer::RemoteReader* remote) { remote_ = remote; }

  // From now on Health reports DRAINING and new calls get UNAVAILABLE.
  void SetDraining() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  // Calls being served now (Health included).
  uint64_t inflight() const { return inflight_.load(); }
  // Aborts reservations and drops pins whose lease ran out; returns how many.
  size_t ExpireLeases(absl::Time now);
  uint64_t leases() const;

  // Serves one call of a shared-memory control session (shm_protocol.h) for
  // `who`, whose token opened the session: the checks, limits, metrics and
  // logs of the RPC of the same name. `body` is the serialized request;
  // returns the serialized response. InvalidArgument for a body that does
  // not parse or an unknown method.
  absl::StatusOr<std::string> Control(const Principal& who, shm::ControlMethod method,
                                      absl::string_view body);

  grpc::Status Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* req,
                      v1::LookupResponse* resp);
  grpc::Status Save(grpc::ServerContext* ctx, grpc::ServerReader<wire::SaveFrame>* reader,
                    v1::SaveResponse* resp);
  grpc::Status Load(grpc::ServerContext* ctx, const v1::LoadRequest* req,
                    grpc::ServerWriter<wire::LoadFrame>* writer);
  grpc::Status Reserve(grpc::ServerContext* ctx, const v1::ReserveRequest* req,
                       v1::ReserveResponse* resp);
  grpc::Status Commit(grpc::ServerContext* ctx, const v1::CommitRequest* req,
                      v1::CommitResponse* resp);
  grpc::Status Pin(grpc::ServerContext* ctx, const v1::PinRequest* req, v1::PinResponse* resp);
  grpc::Status Release(grpc::ServerContext* ctx, const v1::ReleaseRequest* req,
                       v1::ReleaseResponse* resp);
  grpc::Status Prefetch(grpc::ServerContext* ctx, const v1::PrefetchRequest* req,
                        v1::PrefetchResponse* resp);
  grpc::Status Evict(grpc::ServerContext* ctx, const v1::EvictRequest* req,
                     v1::EvictResponse* resp);
  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                     v1::StatsResponse* resp);
  grpc::Status Health(grpc::ServerContext* ctx, const v1::HealthRequest* req,
                      v1::HealthResponse* resp);
  grpc::Status Config(grpc::ServerContext* ctx, const v1::ConfigRequest* req,
                      v1::ConfigResponse* resp);

 private:
  // Counts a call in flight for its lifetime.
  class InflightScope {
   public:
    explicit InflightScope(std::atomic<uint64_t>& n) : n_(n) { n_.fetch_add(1); }
    ~InflightScope() { n_.fetch_sub(1); }

   private:
    std::atomic<uint64_t>& n_;
  };

  struct Lease {
    enum class Kind : uint8_t { kReservation, kPin };
    Kind kind = Kind::kReservation;
    std::string owner;         // Principal::name
    uint64_t slot_handle = 0;  // kReservation: DramTier handle
    ChunkPin pin;              // kPin
    absl::Time expires;
  };

  template <typename Req, typename Resp>
  void AddUnary(const char* name,
                grpc::Status (CacheService::*fn)(grpc::ServerContext*, const Req*, Resp*));

  // Authenticates the call (and refuses new work while draining).
  absl::StatusOr<Principal> Authenticate(grpc::ServerContext* ctx) const;
  // Validates and authorizes the request's namespace.
  absl::StatusOr<Namespace> OpenNamespace(const Principal& who, bool present,
                                          const v1::Namespace& ns) const;
  // Ends a handler: records the code, logs failures, converts the status.
  grpc::Status Finish(Metrics::RpcTimer& timer, Method method, const Principal* who,
                      const absl::Status& status) const;

  absl::Status DoLookup(grpc::ServerContext* ctx, const v1::LookupRequest& req,
                        v1::LookupResponse& resp, Principal& who);
  absl::Status DoSave(grpc::ServerContext* ctx, grpc::ServerReader<wire::SaveFrame>* reader,
                      v1::SaveResponse& resp, Principal& who);
  absl::Status DoLoad(grpc::ServerContext* ctx, const v1::LoadRequest& req,
                      grpc::ServerWriter<wire::LoadFrame>* writer, Principal& who);
  // PermissionDenied unless `who` may map the DRAM arena (Reserve, Pin).
  static absl::Status RequireArena(const Principal& who, absl::string_view method);
  absl::Status DoReserve(grpc::ServerContext* ctx, const v1::ReserveRequest& req,
                         v1::ReserveResponse& resp, Principal& who);
  absl::Status DoCommit(grpc::ServerContext* ctx, const v1::CommitRequest& req,
                        v1::CommitResponse& resp, Principal& who);
  absl::Status DoPin(grpc::ServerContext* ctx, const v1::PinRequest& req, v1::PinResponse& resp,
                     Principal& who);
  absl::Status DoRelease(grpc::ServerContext* ctx, const v1::ReleaseRequest& req,
                         v1::ReleaseResponse& resp, Principal& who);
  absl::Status DoPrefetch(grpc::ServerContext* ctx, const v1::PrefetchRequest& req,
                          v1::PrefetchResponse& resp, Principal& who);
  absl::Status DoEvict(grpc::ServerContext* ctx, const v1::EvictRequest& req,
                       v1::EvictResponse& resp, Principal& who);

  // cache_->Pin of rest[0], and on a miss with a remote reader, a fetch from
  // the holder and a second Pin. A failed fetch is a miss (NotFound with its
  // reason). The fetch takes along the keys after rest[0] that the reader
  // knows are on the same holder (one PinForRead, gets in flight together),
  // so the Pins of those that follow hit locally.
  // REQUIRES: !rest.empty().
  absl::StatusOr<ChunkPin> PinLocalOrRemote(const Namespace& ns, absl::Span<const BlockKey> rest);

  // Lease table. NewLeaseId never returns 0 or an id in use.
  uint64_t NewLeaseId() ABSL_EXCLUSIVE_LOCKS_REQUIRED(leases_mu_);
  // Takes room for `wanted` leases of `owner` against both limits, at once
  // (concurrent requests cannot pass them together); ResourceExhausted when
  // there is none. Room not turned into leases goes back by GiveBackLeaseRoom.
  absl::Status TakeLeaseRoom(size_t wanted, const std::string& owner);
  void GiveBackLeaseRoom(size_t unused, const std::string& owner);
  // Keeps `lease` under a new id, in room its owner took.
  uint64_t AddLeaseLocked(Lease lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(leases_mu_);
  // Forgets the lease at `it`, giving back its room.
  Lease EraseLeaseLocked(absl::flat_hash_map<uint64_t, Lease>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(leases_mu_);
  // Removes and returns the lease `id` when it exists, has `kind` and
  // belongs to `owner`.
  std::optional<Lease> TakeLease(uint64_t id, Lease::Kind kind, const std::string& owner);

  EmbeddedCache* const cache_;
  transfer::RemoteReader* remote_ = nullptr;
  const Authenticator* const auth_;
  Metrics* const metrics_;
  Logger* const log_;
  const ServiceOptions options_;
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> inflight_{0};

  mutable absl::Mutex leases_mu_;
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(leases_mu_);
  // Room taken: leases held plus room taken for leases still being made.
  uint64_t lease_room_ ABSL_GUARDED_BY(leases_mu_) = 0;
  absl::flat_hash_map<std::string, uint64_t> lease_room_by_owner_ ABSL_GUARDED_BY(leases_mu_);
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_CACHE_SERVICE_H_
