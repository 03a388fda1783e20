// Where else a key chain lives: the seam between the read path (which pulls
// remote chunks over UCX) and whatever knows the cluster (a static peer list
// in the configuration, or the cluster index fed by NATS events).
#ifndef KVTIER_SRC_TRANSFER_HOLDER_SOURCE_H_
#define KVTIER_SRC_TRANSFER_HOLDER_SOURCE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtier/cache.h"
#include "kvtier/keys.h"

namespace kvtier::transfer {

// One other node that holds a prefix of a chain.
struct RemoteHolder {
  std::string node_id;        // the holder's configured node id
  std::string peer_address;   // "host:port" of the holder's gRPC Peer service
  size_t matched_chunks = 0;  // leading chunks of the chain it holds
  std::vector<Tier> tiers;    // the holder's tier of each matched chunk
};

// Answers "which other nodes hold how much of this chain". Implementations
// never list the calling node itself and return holders longest match first.
// Thread-safety: FindHolders may be called from any number of threads.
class HolderSource {
 public:
  virtual ~HolderSource() = default;

  // Holders of a prefix of `chain` in the namespace `namespace_id`
  // (Namespace::id()). An empty vector when no node holds its first chunk.
  // DeadlineExceeded when the answer is not known by `deadline`;
  // Unavailable when the source cannot be reached.
  virtual absl::StatusOr<std::vector<RemoteHolder>> FindHolders(uint64_t namespace_id,
                                                                absl::Span<const BlockKey> chain,
                                                                absl::Time deadline) = 0;
};

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_HOLDER_SOURCE_H_
