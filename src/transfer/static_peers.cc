#include "src/transfer/static_peers.h"

#include <algorithm>
#include <memory>

#include "grpcpp/completion_queue.h"
#include "src/server/wire.h"

namespace kvtier::transfer {

absl::StatusOr<std::vector<RemoteHolder>> StaticPeerSource::FindHolders(
    uint64_t namespace_id, absl::Span<const BlockKey> chain, absl::Time deadline) {
  std::vector<RemoteHolder> out;
  if (peers_.empty() || chain.empty()) return out;
  struct Call {
    grpc::ClientContext ctx;
    v1::PeerLookupResponse resp;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::PeerLookupResponse>> rpc;
  };
  v1::PeerLookupRequest req;
  req.set_namespace_id(namespace_id);
  for (const BlockKey& k : chain) req.add_keys(wire::KeyToBytes(k));
  // All peers at once on one completion queue; every call ends by its
  // deadline (gRPC enforces it), so the loop below ends shortly after it.
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Call>> calls;
  for (size_t i = 0; i < peers_.size(); ++i) {
    calls.push_back(std::make_unique<Call>());
    Call* c = calls.back().get();
    clients_->Prepare(c->ctx, deadline);
    c->rpc = clients_->Stub(peers_[i])->AsyncLookup(&c->ctx, req, &cq);
    c->rpc->Finish(&c->resp, &c->status, reinterpret_cast<void*>(i));
  }
  for (size_t pending = peers_.size(); pending > 0; --pending) {
    void* tag = nullptr;
    bool ok = false;
    if (!cq.Next(&tag, &ok)) break;
  }
  cq.Shutdown();
  {
    void* tag = nullptr;
    bool ok = false;
    while (cq.Next(&tag, &ok)) {
    }
  }
  size_t timed_out = 0, failed = 0;
  for (size_t i = 0; i < peers_.size(); ++i) {
    const Call& c = *calls[i];
    clients_->ReportContact(peers_[i], c.status.ok() ? c.resp.node_id() : std::string(),
                            c.status.ok());
    if (!c.status.ok()) {
      (c.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? timed_out : failed)++;
      continue;
    }
    if (c.resp.matched() == 0 || c.resp.node_id() == self_) continue;
    RemoteHolder h;
    h.node_id = c.resp.node_id();
    h.peer_address = peers_[i];
    h.matched_chunks = std::min<size_t>(c.resp.matched(), chain.size());
    h.tiers.assign(h.matched_chunks, Tier::kDram);
    out.push_back(std::move(h));
  }
  if (out.empty() && timed_out + failed == peers_.size()) {
    if (timed_out > 0) {
      return absl::DeadlineExceededError("peers: no peer answered Lookup by the deadline");
    }
    return absl::UnavailableError("peers: no peer could be reached");
  }
  std::stable_sort(out.begin(), out.end(), [](const RemoteHolder& a, const RemoteHolder& b) {
    return a.matched_chunks > b.matched_chunks;
  });
  return out;
}

}  // namespace kvtier::transfer
