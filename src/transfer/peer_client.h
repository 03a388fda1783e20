// gRPC channels to other nodes' Peer services, one per address, shared by
// the static holder source and the remote reader, and the health of each
// peer as the last contact left it (kvtier_peer_up, the status page).
//
// Thread-safety: thread-safe.
#ifndef KVTIER_SRC_TRANSFER_PEER_CLIENT_H_
#define KVTIER_SRC_TRANSFER_PEER_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "kvtier/v1/peer.grpc.pb.h"
#include "src/common/secret.h"

namespace kvtier::transfer {

// One peer this node has contacted.
struct PeerHealth {
  std::string address;      // "host:port" of its Peer service (the series label)
  std::string node_id;      // its node id once it answered; empty before
  bool up = false;          // the last contact (Lookup, Hello, PinForRead, get) succeeded
  uint64_t bytes_read = 0;  // encoded chunk bytes read from it (monotonic)
};

class PeerClients {
 public:
  // `peer_token`, when not empty, is sent as "authorization: Bearer <token>"
  // (its first token, where it lists several: src/common/token_list.h).
  // `credentials`: the channels' (null: plaintext); `tls_name`, when not
  // empty, is the name checked in peers' certificates instead of the address.
  explicit PeerClients(Secret peer_token,
                       std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
                       std::string tls_name = "")
      : token_(std::move(peer_token)),
        credentials_(credentials != nullptr ? std::move(credentials)
                                            : grpc::InsecureChannelCredentials()),
        tls_name_(std::move(tls_name)) {}

  // The stub for "host:port" (created on first use; gRPC reconnects by itself).
  v1::Peer::Stub* Stub(const std::string& address);
  // Prepares a call context: deadline and credentials.
  void Prepare(grpc::ClientContext& ctx, absl::Time deadline) const;

  // Records the outcome of one contact with `address`; `node_id` (when not
  // empty) is the id it answered with.
  void ReportContact(const std::string& address, const std::string& node_id, bool ok);
  // Adds `bytes` read from `address` (a successful contact).
  void AddBytesRead(const std::string& address, uint64_t bytes);
  // Every peer contacted so far, sorted by address.
  std::vector<PeerHealth> Health() const;

 private:
  const Secret token_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const std::string tls_name_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<v1::Peer::Stub>> stubs_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, PeerHealth> health_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_PEER_CLIENT_H_
