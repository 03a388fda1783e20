// Prometheus text for node-to-node transfer (kvtierd's /metrics).
//
// Thread-safety: a pure function.
#ifndef KVTIER_SRC_TRANSFER_TRANSFER_METRICS_H_
#define KVTIER_SRC_TRANSFER_TRANSFER_METRICS_H_

#include <string>
#include <vector>

#include "src/transfer/peer_client.h"
#include "src/transfer/peer_service.h"
#include "src/transfer/remote_reader.h"
#include "src/transfer/ucx_engine.h"

namespace kvtier::transfer {

// Families kvtier_remote_*, kvtier_peer_* and kvtier_ucx_* (docs/transfer.md
// lists them), including kvtier_remote_peer_info{node,address,transports}.
// `reader` may be nullptr. `peers` gives kvtier_peer_up{peer="<address>"}
// (1 when the last contact succeeded, 0 after a failure), one series per
// peer contacted; the family's HELP and TYPE are written even with none.
std::string RenderTransferMetrics(const UcxStats& ucx, const PeerServiceStats& holder,
                                  const RemoteReaderStats* reader,
                                  const std::vector<PeerHealth>& peers = {});

}  // namespace kvtier::transfer

#endif  // KVTIER_SRC_TRANSFER_TRANSFER_METRICS_H_
