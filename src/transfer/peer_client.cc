#include "src/transfer/peer_client.h"

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
    stub = v1::Peer::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }
  return stub.get();
}

void PeerClients::Prepare(grpc::ClientContext& ctx, absl::Time deadline) const {
  ctx.set_deadline(absl::ToChronoTime(deadline));
  if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
}

}  // namespace kvtier::transfer
