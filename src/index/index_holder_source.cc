#include "src/index/index_holder_source.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "kvtier/v1/index.grpc.pb.h"
#include "src/common/status_macros.h"
#include "src/index/event_publisher.h"
#include "src/server/grpc_tls.h"
#include "src/server/wire.h"

namespace kvtier::index {
namespace {

bool IsAuthError(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
         s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
}

absl::Status AuthError(const std::string& address, const grpc::Status& s) {
  return absl::PermissionDeniedError(absl::StrCat(
      "index at ", address, " refused the call (check cluster.index_token): ", s.error_message()));
}

}  // namespace

struct IndexHolderSource::Replica {
  std::string address;
  std::unique_ptr<v1::Index::Stub> stub;
};

absl::Status IndexHolderSourceOptions::Validate() const {
  if (index_addresses.empty()) {
    return absl::InvalidArgumentError("cluster.index_address: at least one host:port is needed");
  }
  for (const std::string& a : index_addresses) {
    if (a.rfind(':') == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster.index_address: '", a, "' is not host:port"));
    }
  }
  if (absl::Status s = ValidateNodeId(self_node_id, "node_id"); !s.ok()) return s;
  if (max_holders == 0) return absl::InvalidArgumentError("max_holders: must be at least 1");
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError("tls.cert_file, tls.key_file: set both or neither");
  }
  if (!tls_name.empty() && ca_file.empty()) {
    return absl::InvalidArgumentError("cluster.index_tls_name: needs cluster.index_ca_file");
  }
  return absl::OkStatus();
}

IndexHolderSource::IndexHolderSource(const IndexHolderSourceOptions& options) : options_(options) {}

IndexHolderSource::~IndexHolderSource() = default;

absl::StatusOr<std::unique_ptr<IndexHolderSource>> IndexHolderSource::Create(
    const IndexHolderSourceOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<IndexHolderSource> src(new IndexHolderSource(options));
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  if (!options.ca_file.empty()) {
    KVTIER_ASSIGN_OR_RETURN(
        credentials,
        server::ChannelCredentials({options.ca_file, "cluster.index_ca_file"},
                                   {options.cert_file, "tls.cert_file"},
                                   {options.key_file, "tls.key_file"}, options.tls_reload_seconds));
    if (!options.tls_name.empty()) args.SetSslTargetNameOverride(options.tls_name);
  }
  for (const std::string& a : options.index_addresses) {
    auto r = std::make_unique<Replica>();
    r->address = a;
    r->stub = v1::Index::NewStub(grpc::CreateCustomChannel(a, credentials, args));
    src->replicas_.push_back(std::move(r));
  }
  return src;
}

void IndexHolderSource::Prepare(grpc::ClientContext& ctx, absl::Time deadline) const {
  ctx.set_deadline(absl::ToChronoTime(deadline));
  // A token setting may list several tokens: the first is sent.
  if (std::string token = options_.token.Sent(); !token.empty()) {
    ctx.AddMetadata("authorization", "Bearer " + token);
  }
}

absl::Status IndexHolderSource::Check(absl::Time deadline) {
  absl::Status last = absl::UnavailableError("no index replica answered");
  for (const std::unique_ptr<Replica>& r : replicas_) {
    grpc::ClientContext ctx;
    Prepare(ctx, deadline);
    v1::IndexStatsResponse resp;
    const grpc::Status s = r->stub->Stats(&ctx, v1::IndexStatsRequest(), &resp);
    if (s.ok()) return absl::OkStatus();
    if (IsAuthError(s)) return AuthError(r->address, s);
    if (server::IsTlsHandshakeFailure(s.error_message())) {
      last = absl::FailedPreconditionError(
          absl::StrCat("TLS handshake with the index at ", r->address,
                       " failed (check cluster.index_ca_file, cluster.index_tls_name and the "
                       "index's certificate): ",
                       s.error_message()));
    } else if (!absl::IsFailedPrecondition(last)) {
      last = absl::UnavailableError(absl::StrCat("index at ", r->address, ": ", s.error_message()));
    }
  }
  return last;
}

absl::StatusOr<std::vector<transfer::RemoteHolder>> IndexHolderSource::FindHolders(
    uint64_t namespace_id, absl::Span<const BlockKey> chain, absl::Time deadline) {
  std::vector<transfer::RemoteHolder> out;
  if (chain.empty()) return out;
  v1::IndexLookupRequest req;
  req.set_namespace_id(namespace_id);
  for (const BlockKey& k : chain) req.add_keys(wire::KeyToBytes(k));
  req.set_include_tiers(true);
  req.add_exclude_nodes(options_.self_node_id);
  // Nodes without a Peer address are skipped below: ask for a few more.
  req.set_max_nodes(options_.max_holders * 2 + 4);

  absl::Status last = absl::UnavailableError("no index replica answered");
  const size_t n = replicas_.size();
  const uint32_t first = next_.load(std::memory_order_relaxed);
  for (size_t attempt = 0; attempt < n; ++attempt) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("index lookup: deadline passed (", last.message(), ")"));
    }
    Replica& r = *replicas_[(first + attempt) % n];
    grpc::ClientContext ctx;
    Prepare(ctx, deadline);
    v1::IndexLookupResponse resp;
    const grpc::Status s = r.stub->Lookup(&ctx, req, &resp);
    if (s.ok()) {
      for (const v1::NodeMatch& m : resp.nodes()) {
        if (m.node_id() == options_.self_node_id || m.grpc_address().empty()) continue;
        if (m.matched_chunks() == 0) continue;
        transfer::RemoteHolder h;
        h.node_id = m.node_id();
        h.peer_address = m.grpc_address();
        h.matched_chunks = m.matched_chunks();
        for (int t : m.tiers()) h.tiers.push_back(static_cast<Tier>(t));
        out.push_back(std::move(h));
        if (out.size() >= options_.max_holders) break;
      }
      return out;
    }
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::DeadlineExceededError(
          absl::StrCat("index lookup at ", r.address, ": deadline exceeded"));
    }
    if (IsAuthError(s)) return AuthError(r.address, s);
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      return absl::InvalidArgumentError(absl::StrCat("index lookup: ", s.error_message()));
    }
    last = absl::UnavailableError(
        absl::StrCat("index lookup at ", r.address, ": ", s.error_message()));
    next_.store(static_cast<uint32_t>((first + attempt + 1) % n), std::memory_order_relaxed);
  }
  return last;
}

}  // namespace kvtier::index
