// The holder side of node-to-node transfer: kvtier.v1.Peer (proto/kvtier/
// v1/peer.proto) over this node's DRAM tier and UCX engine.
//
// PinForRead pins chunks in DRAM under a lease (the pins keep them from being
// evicted or their slots reused while another node reads them with one-sided
// gets) and answers where each chunk lies in the registered arena, with the
// payload checksum the reader verifies (DRAM keeps chunks unsealed: computed
// on a chunk's first pin and remembered while it stays in DRAM). A lease lasts
// `lease_timeout` unless released earlier; a reaper thread drops lapsed ones,
// so a reader that dies cannot hold slots forever.
//
// PinForRead and Release are also answered as UCX calls on this node's
// workers (UcxEngine::SetCallHandler; framing in peer_calls.h): a call must
// carry the random call secret this service hands out in Hello, so only a
// reader that passed Hello (with the peer token, when one is set) can pin
// that way. The calls run on the UCX progress thread.
//
// Only DRAM-resident chunks are served: Lookup matches the DRAM prefix of a
// chain, and chunks that are on NVMe only are not offered to other nodes.
//
// Thread-safety: gRPC calls the handlers from many threads; all thread-safe.
#ifndef KVTIER_SRC_TRANSFER_PEER_SERVICE_H_
#define KVTIER_SRC_TRANSFER_PEER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "kvtier/v1/peer.grpc.pb.h"
#include "src/common/secret.h"
#include "src/core/embedded_cache.h"
#include "src/transfer/ucx_engine.h"

namespace kvtier::transfer {

struct PeerServiceOptions {
  std::string node_id;                               // this node's id (Hello)
  uint64_t boot_id = 0;                              // random per process start, not 0
  absl::Duration lease_timeout = absl::Seconds(10);  // life of an unreleased PinForRead
  uint32_t max_leases = 4096;                        // leases held at once
  uint32_t max_keys_per_request = 4096;              // keys in one Lookup or PinForRead
  // When not empty, every call must carry "authorization: Bearer <token>"
  // with one of its tokens (the daemon may Set it while the service runs).
  Secret peer_token;

  // InvalidArgument naming the field.
  absl::Status Validate() const;
};

// Counters (monotonic unless marked).
struct PeerServiceStats {
  uint64_t hellos = 0;
  uint64_t lookups = 0;
  uint64_t pin_requests = 0;    // PinForRead calls that pinned at least one chunk
  uint64_t pinned_chunks = 0;   // chunks pinned for other nodes
  uint64_t pinned_bytes = 0;    // their encoded bytes
  uint64_t leases_expired = 0;  // leases dropped by the reaper
  uint64_t leases_held = 0;     // gauge
  uint64_t auth_failures = 0;   // calls refused for a missing or wrong peer token
};

class PeerService final : public v1::Peer::Service {
 public:
  // `cache` and `engine` (whose arena must be the cache's DRAM arena, mapped)
  // must outlive the service.
  static absl::StatusOr<std::unique_ptr<PeerService>> Create(EmbeddedCache* cache,
                                                             UcxEngine* engine,
                                                             const PeerServiceOptions& options);
  // Stops the reaper and drops every lease.
  ~PeerService() override;

  grpc::Status Hello(grpc::ServerContext* ctx, const v1::HelloRequest* req,
                     v1::HelloResponse* resp) override;
  grpc::Status Lookup(grpc::ServerContext* ctx, const v1::PeerLookupRequest* req,
                      v1::PeerLookupResponse* resp) override;
  grpc::Status PinForRead(grpc::ServerContext* ctx, const v1::PinForReadRequest* req,
                          v1::PinForReadResponse* resp) override;
  grpc::Status Release(grpc::ServerContext* ctx, const v1::PeerReleaseRequest* req,
                       v1::PeerReleaseResponse* resp) override;

  // Answers one UCX call (see the file comment); the reply's bytes.
  std::string ServeCall(absl::string_view call);

  // Drops leases that lapsed by `now`; returns how many.
  size_t ExpireLeases(absl::Time now);
  PeerServiceStats Stats() const;

 private:
  struct Lease {
    std::vector<ChunkPin> pins;
    absl::Time expires;
  };

  PeerService(EmbeddedCache* cache, UcxEngine* engine, PeerServiceOptions options)
      : cache_(cache), engine_(engine), options_(std::move(options)) {}
  absl::Status CheckAuth(grpc::ServerContext* ctx) const;
  // PinForRead and Release after authentication (gRPC or UCX call).
  absl::Status DoPinForRead(const v1::PinForReadRequest& req, v1::PinForReadResponse& resp);
  void DoRelease(const v1::PeerReleaseRequest& req, v1::PeerReleaseResponse& resp);
  absl::StatusOr<std::vector<BlockKey>> Keys(
      const google::protobuf::RepeatedPtrField<std::string>& keys) const;

  EmbeddedCache* const cache_;
  UcxEngine* const engine_;
  const PeerServiceOptions options_;
  std::string call_secret_;  // set once in Create

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 1;  // random start (Create)

  std::atomic<uint64_t> hellos_{0};
  std::atomic<uint64_t> lookups_{0};
  std::atomic<uint64_t> pin_requests_{0};
  std::atomic<uint64_t> pinned_chunks_{0};
  std::atomic<uint64_t> pinned_bytes_{0};
  std::atomic<uint64_t> expired_{0};
  mutable std::atomic<uint64_t> auth_failures_{0};

  absl::Notification stop_;
  std::thread reaper_;
};

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_PEER_SERVICE_H_
