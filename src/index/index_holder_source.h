// A HolderSource backed by the cluster index: FindHolders asks a
// kvtier-index replica (Index/Lookup with the chain's keys) which other
// nodes hold a prefix of the chain, and maps each to the Peer gRPC address
// from its heartbeats. Nodes without an address (vLLM endpoints, nodes
// whose heartbeat was not seen) are left out, and so is this node.
//
// Several replicas may be configured; a replica that is unreachable or not
// ready is skipped for the next one while the deadline allows.
//
// Thread-safety: FindHolders may be called from any number of threads.
#ifndef KVTIER_SRC_INDEX_INDEX_HOLDER_SOURCE_H_
#define KVTIER_SRC_INDEX_INDEX_HOLDER_SOURCE_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/transfer/holder_source.h"

namespace kvtier::index {

struct IndexHolderSourceOptions {
  std::vector<std::string> index_addresses;  // host:port of kvtier-index replicas (>= 1)
  std::string self_node_id;                  // this node's id: never listed
  uint32_t max_holders = 8;                  // holders returned at most (longest first)

  absl::Status Validate() const;
};

class IndexHolderSource final : public transfer::HolderSource {
 public:
  static absl::StatusOr<std::unique_ptr<IndexHolderSource>> Create(
      const IndexHolderSourceOptions& options);
  ~IndexHolderSource() override;

  absl::StatusOr<std::vector<transfer::RemoteHolder>> FindHolders(uint64_t namespace_id,
                                                                  absl::Span<const BlockKey> chain,
                                                                  absl::Time deadline) override;

 private:
  struct Replica;
  explicit IndexHolderSource(const IndexHolderSourceOptions& options);

  const IndexHolderSourceOptions options_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::atomic<uint32_t> next_{0};  // replica to try first (rotates after a failure)
};

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_INDEX_HOLDER_SOURCE_H_
