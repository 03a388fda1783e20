// A HolderSource over a fixed list of peers (kvtierd's `peers:`): asks every
// peer's Peer.Lookup in parallel and keeps the answers that arrive by the
// deadline.
//
// Thread-safety: FindHolders may be called from any number of threads.
#ifndef KVTIER_SRC_TRANSFER_STATIC_PEERS_H_
#define KVTIER_SRC_TRANSFER_STATIC_PEERS_H_

#include <string>
#include <vector>

#include "src/transfer/holder_source.h"
#include "src/transfer/peer_client.h"

namespace kvtier::transfer {

class StaticPeerSource final : public HolderSource {
 public:
  // `peers` are "host:port" of the other nodes' gRPC listeners; a peer that
  // answers with `self_node_id` is ignored. `clients` must outlive this.
  StaticPeerSource(std::vector<std::string> peers, std::string self_node_id, PeerClients* clients)
      : peers_(std::move(peers)), self_(std::move(self_node_id)), clients_(clients) {}

  // Holders of a prefix of `chain`, longest match first. Peers that fail or
  // miss the deadline are left out; DeadlineExceeded only when none answered
  // in time and at least one timed out, Unavailable when every peer failed.
  absl::StatusOr<std::vector<RemoteHolder>> FindHolders(uint64_t namespace_id,
                                                        absl::Span<const BlockKey> chain,
                                                        absl::Time deadline) override;

 private:
  const std::vector<std::string> peers_;
  const std::string self_;
  PeerClients* const clients_;
};

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_STATIC_PEERS_H_
