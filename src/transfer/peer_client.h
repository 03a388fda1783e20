// gRPC channels to other nodes' Peer services, one per address, shared by
// the static holder source and the remote reader.
//
// Thread-safety: thread-safe.
#ifndef KVTIER_SRC_TRANSFER_PEER_CLIENT_H_
#define KVTIER_SRC_TRANSFER_PEER_CLIENT_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "kvtier/v1/peer.grpc.pb.h"

namespace kvtier::transfer {

class PeerClients {
 public:
  // `peer_token`, when not empty, is sent as "authorization: Bearer <token>".
  explicit PeerClients(std::string peer_token) : token_(std::move(peer_token)) {}

  // The stub for "host:port" (created on first use; gRPC reconnects by itself).
  v1::Peer::Stub* Stub(const std::string& address);
  // Prepares a call context: deadline and credentials.
  void Prepare(grpc::ClientContext& ctx, absl::Time deadline) const;

 private:
  const std::string token_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<v1::Peer::Stub>> stubs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_PEER_CLIENT_H_
