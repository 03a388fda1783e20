// A HolderSource backed by the cluster index: FindHolders asks a
// kvtier-index replica (Index/Lookup with the chain's keys) which other
// nodes hold a prefix of the chain, and maps each to the Peer gRPC address
// from its heartbeats. Nodes without an address (vLLM endpoints, nodes
// whose heartbeat was not seen) are left out, and so is this node.
//
// Several replicas may be configured; a replica that is unreachable or not
// ready is skipped for the next one while the deadline allows. Calls carry
// the replicas' API token and use TLS when a CA is configured.
//
// Thread-safety: FindHolders may be called from any number of threads.
#ifndef KVTIER_SRC_INDEX_INDEX_HOLDER_SOURCE_H_
#define KVTIER_SRC_INDEX_INDEX_HOLDER_SOURCE_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/client_context.h"
#include "src/common/secret.h"
#include "src/transfer/holder_source.h"

namespace kvtier::index {

struct IndexHolderSourceOptions {
  std::vector<std::string> index_addresses;  // host:port of kvtier-index replicas (>= 1)
  std::string self_node_id;                  // this node's id: never listed
  uint32_t max_holders = 8;                  // holders returned at most (longest first)
  Secret token;           // its first token is sent as "authorization: Bearer <token>"; "" = none
  std::string ca_file;    // PEM CA of the replicas' certificates; set = TLS
  std::string cert_file;  // PEM client certificate presented over TLS; "" = none
  std::string key_file;   // its private key
  std::string tls_name;   // name to check in the replicas' certificates; "" = the address
  uint32_t tls_reload_seconds = 60;  // how often the CA and certificate files are read again

  absl::Status Validate() const;
};

class IndexHolderSource final : public transfer::HolderSource {
 public:
  static absl::StatusOr<std::unique_ptr<IndexHolderSource>> Create(
      const IndexHolderSourceOptions& options);
  ~IndexHolderSource() override;

  // PERMISSION_DENIED (at once, no other replica tried) when a replica
  // refuses the token; UNAVAILABLE when none answers.
  absl::StatusOr<std::vector<transfer::RemoteHolder>> FindHolders(uint64_t namespace_id,
                                                                  absl::Span<const BlockKey> chain,
                                                                  absl::Time deadline) override;

  // Asks each replica for its Stats: OK when one answers, PERMISSION_DENIED
  // when one refuses the token, FAILED_PRECONDITION when none answered and a
  // TLS handshake failed (told apart by gRPC's message: server::
  // IsTlsHandshakeFailure), else UNAVAILABLE. For a warning at start;
  // FindHolders does not depend on it.
  absl::Status Check(absl::Time deadline);

 private:
  struct Replica;
  explicit IndexHolderSource(const IndexHolderSourceOptions& options);
  // The call's deadline and token.
  void Prepare(grpc::ClientContext& ctx, absl::Time deadline) const;

  const IndexHolderSourceOptions options_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::atomic<uint32_t> next_{0};  // replica to try first (rotates after a failure)
};

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_INDEX_HOLDER_SOURCE_H_
