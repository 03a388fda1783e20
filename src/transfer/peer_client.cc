#include "src/transfer/peer_client.h"

#include <algorithm>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace kvtier::transfer {

v1::Peer::Stub* PeerClients::Stub(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[address];
  if (stub == nullptr) {
    grpc::ChannelArguments args;
    // Quick reconnects after a peer restarts (the default backoff reaches
    // minutes).
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    if (!tls_name_.empty()) args.SetSslTargetNameOverride(tls_name_);
    stub = v1::Peer::NewStub(grpc::CreateCustomChannel(address, credentials_, args));
  }
  return stub.get();
}

void PeerClients::Prepare(grpc::ClientContext& ctx, absl::Time deadline) const {
  ctx.set_deadline(absl::ToChronoTime(deadline));
  if (std::string token = token_.Sent(); !token.empty()) {
    ctx.AddMetadata("authorization", "Bearer " + token);
  }
}

void PeerClients::ReportContact(const std::string& address, const std::string& node_id, bool ok) {
  absl::MutexLock lock(&mu_);
  PeerHealth& h = health_[address];
  h.address = address;
  if (!node_id.empty()) h.node_id = node_id;
  h.up = ok;
}

void PeerClients::AddBytesRead(const std::string& address, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  PeerHealth& h = health_[address];
  h.address = address;
  h.up = true;
  h.bytes_read += bytes;
}

std::vector<PeerHealth> PeerClients::Health() const {
  std::vector<PeerHealth> out;
  {
    absl::MutexLock lock(&mu_);
    out.reserve(health_.size());
    for (const auto& [address, h] : health_) out.push_back(h);
  }
  std::sort(out.begin(), out.end(),
            [](const PeerHealth& a, const PeerHealth& b) { return a.address < b.address; });
  return out;
}

}  // namespace kvtier::transfer
