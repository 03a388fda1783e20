// The cluster with its security on, end to end: nats-server requiring a
// token over TLS, a kvtier-index replica serving its API over mutual TLS with
// an API token, and two kvtierd nodes (TLS, tokens) of which one reads over
// UCX what the index says the other holds. Also: what a caller without the
// token, without TLS or without a client certificate gets, a kvtierd with the
// wrong index token, and a kvtier-index with the wrong NATS token.
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "kvtier/client.h"
#include "kvtier/namespace.h"
#include "kvtier/v1/index.grpc.pb.h"
#include "src/index/index_holder_source.h"
#include "src/server/grpc_tls.h"
#include "src/server/wire.h"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/nats_harness.h"
#include "tests/integration/workload.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::testing {
namespace {

using ::testing::HasSubstr;

constexpr const char* kApiToken = "index-api-token-0123456789";
// The token the index's API moves to: its token file lists both, as in the
// middle of a rotation.
constexpr const char* kNextApiToken = "index-api-token-next-0123456789";
constexpr const char* kNatsToken = "nats-token-0123456789";
constexpr const char* kAdmin = "security-test-admin-token-0123456789";

// What the test's CA signed: server.pem names localhost and 127.0.0.1.
struct Certs {
  TempDir dir;
  std::string ca() const { return dir.File("ca.pem"); }
  std::string cert() const { return dir.File("server.pem"); }
  std::string key() const { return dir.File("server.key"); }
};

// A channel to the index; `tls` false = plaintext, `client_cert` = present
// client.pem.
std::unique_ptr<v1::Index::Stub> Stub(const Certs& certs, int port, bool tls, bool client_cert) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (tls) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> c = server::ChannelCredentials(
        {certs.ca(), "ca"}, {client_cert ? certs.dir.File("client.pem") : "", "cert"},
        {client_cert ? certs.dir.File("client.key") : "", "key"});
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) creds = *c;
  }
  return v1::Index::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), creds));
}

grpc::Status Stats(v1::Index::Stub& stub, const std::string& token,
                   v1::IndexStatsResponse* resp = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  v1::IndexStatsResponse r;
  return stub.Stats(&ctx, v1::IndexStatsRequest(), resp != nullptr ? resp : &r);
}

// kvtier-index on 127.0.0.1 with TLS (client certificates required), the
// API token, and NATS over TLS with `nats_token`.
absl::StatusOr<std::unique_ptr<Process>> StartIndex(const Certs& certs, const TempDir& dir,
                                                    const NatsServer& nats, int grpc_port,
                                                    const std::string& nats_token,
                                                    const std::string& log) {
  const std::string config = dir.Write(
      log + ".yaml",
      absl::StrCat("nats:\n  url: ", nats.url(), "\n  token: ", nats_token,
                   "\n  ca_file: ", certs.ca(), "\ntls:\n  cert_file: ", certs.cert(),
                   "\n  key_file: ", certs.key(), "\n  client_ca_file: ", certs.ca(),
                   "\n  require_client_cert: true\n  reload_seconds: 1\napi_token_file: ",
                   dir.Write(log + ".token", absl::StrCat(kApiToken, "\n", kNextApiToken, "\n")),
                   "\n"));
  return Process::Start(
      {KVTIER_INDEX_BIN, "--config", config, "--grpc", absl::StrCat("127.0.0.1:", grpc_port),
       "--http", "", "--node-timeout", "2"},
      dir.File(log));
}

TEST(ClusterSecurity, TokensAndTlsEverywhere) {
  setenv("UCX_TLS", "tcp", 1);
  Certs certs;
  ASSERT_OK(MakeCertificates(certs.dir));
  TempDir dir;
  NatsServerOptions no;
  no.token = kNatsToken;
  no.cert_file = certs.cert();
  no.key_file = certs.key();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> nats, NatsServer::Start(dir, no));

  // A kvtier-index with the wrong NATS token does not start, and says why.
  {
    ASSERT_OK_AND_ASSIGN(
        std::unique_ptr<Process> bad,
        StartIndex(certs, dir, *nats, FreePort(), "wrong-nats-token-0123", "index-bad-nats.log"));
    ASSERT_OK_AND_ASSIGN(int code, bad->Wait(absl::Seconds(20)));
    EXPECT_NE(code, 0);
    EXPECT_THAT(bad->Log(), HasSubstr("cannot start"));
    EXPECT_THAT(bad->Log(), ::testing::ContainsRegex("[Aa]uthori[sz]ation|refused|denied"));
    EXPECT_THAT(bad->Log(), ::testing::Not(HasSubstr("wrong-nats-token-0123")));
  }

  const int index_port = FreePort();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Process> index,
                       StartIndex(certs, dir, *nats, index_port, kNatsToken, "index.log"));
  std::unique_ptr<v1::Index::Stub> good = Stub(certs, index_port, true, true);
  {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    v1::IndexStatsResponse st;
    while (absl::Now() < deadline && !(Stats(*good, kApiToken, &st).ok() && st.ready())) {
      ASSERT_TRUE(index->Running()) << index->Log();
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_TRUE(st.ready()) << index->Log();
  }

  // Both tokens of the index's list are accepted.
  EXPECT_TRUE(Stats(*good, kNextApiToken).ok());
  // What callers without the right credentials get.
  EXPECT_EQ(Stats(*good, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Stats(*good, "another-token-0123456789").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Stats(*good, absl::StrCat(kApiToken, "x")).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  for (const std::string& value :
       {absl::StrCat("bearer ", kApiToken), std::string("Bearer "), std::string(kApiToken)}) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", value);
    v1::IndexStatsResponse resp;
    EXPECT_EQ(good->Stats(&ctx, v1::IndexStatsRequest(), &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED)
        << "authorization: " << value;
  }
  EXPECT_EQ(Stats(*Stub(certs, index_port, false, false), kApiToken).error_code(),
            grpc::StatusCode::UNAVAILABLE)
      << "plaintext to a TLS listener";
  EXPECT_EQ(Stats(*Stub(certs, index_port, true, false), kApiToken).error_code(),
            grpc::StatusCode::UNAVAILABLE)
      << "no client certificate";
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer wrong");
    v1::IndexLookupRequest req;
    req.set_namespace_id(1);
    req.add_keys(std::string(16, 'k'));
    v1::IndexLookupResponse resp;
    EXPECT_EQ(good->Lookup(&ctx, req, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(resp.nodes_size(), 0);
  }

  // Two kvtierd nodes with TLS, tokens, NATS over TLS with its token, and the
  // index's token and CA.
  TempDir da, db, dc;
  const std::string index_address = absl::StrCat("127.0.0.1:", index_port);
  auto start = [&](const TempDir& d, const std::string& id, const std::string& index_token,
                   const std::string& index_ca) {
    const std::string yaml =
        d.Write(id + ".yaml",
                absl::StrCat("tls:\n  client_ca_file: ", certs.ca(),
                             "\n  require_client_cert: true\n"
                             "cluster:\n  publish_interval_ms: 10\n  heartbeat_interval_ms: 200\n"
                             "  nats_ca_file: ",
                             certs.ca(), "\n  index_address: ", index_address,
                             "\n  index_ca_file: ", index_ca, "\n"));
    return Daemon::Start(d,
                         {"--config",
                          yaml,
                          "--node-id",
                          id,
                          "--nats",
                          nats->url(),
                          "--nats-token-file",
                          d.Write("nats.token", kNatsToken),
                          "--index-token-file",
                          d.Write("index.token", index_token),
                          "--tcp",
                          absl::StrCat("127.0.0.1:", FreePort()),
                          "--tls-cert",
                          certs.cert(),
                          "--tls-key",
                          certs.key(),
                          "--ucx",
                          "true",
                          "--admin-token-file",
                          d.Write("admin.token", kAdmin),
                          "--peer-token-file",
                          d.Write("peer.token", "security-test-peer-token-0123456789"),
                          "--nvme",
                          "off",
                          "--dram",
                          "64MiB"},
                         id + ".log");
  };
  // The holder's token file lists two tokens: it sends the first.
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<Daemon> a,
      start(da, "holder", absl::StrCat(kNextApiToken, "\nindex-api-token-old-0123456789\n"),
            certs.ca()));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Daemon> b, start(db, "reader", kApiToken, certs.ca()));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Daemon> c,
                       start(dc, "wrong-token", "not-the-index-token-0123", certs.ca()));
  // A node that trusts another CA than the index's: its warning says TLS,
  // not that the index is down.
  {
    Certs other;
    ASSERT_OK(MakeCertificates(other.dir));
    TempDir dw;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Daemon> w, start(dw, "wrong-ca", kApiToken, other.ca()));
    EXPECT_THAT(w->process().Log(), HasSubstr("TLS to the cluster index failed"))
        << w->process().Log();
    EXPECT_THAT(w->process().Log(), ::testing::Not(HasSubstr("cannot reach the cluster index")));
  }
  unsetenv("UCX_TLS");
  EXPECT_THAT(c->process().Log(), HasSubstr("the cluster index refused this node"));
  EXPECT_THAT(a->process().Log(), ::testing::Not(HasSubstr("the cluster index refused")));
  EXPECT_THAT(a->process().Log(), ::testing::Not(HasSubstr("cannot reach the cluster index")));
  EXPECT_THAT(b->process().Log(), ::testing::Not(HasSubstr("the cluster index refused")));
  EXPECT_THAT(c->process().Log(), ::testing::Not(HasSubstr("not-the-index-token-0123")));

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> ca, ConnectOverSocket(a->socket(), kAdmin));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> cb, ConnectOverSocket(b->socket(), kAdmin));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> cc, ConnectOverSocket(c->socket(), kAdmin));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  const std::vector<TokenId> tokens = ChainTokens(7, 7, 4, 0, ns.tokens_per_chunk());
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(tokens));
  ASSERT_OK(SaveKeyed(*ca, ns, chunks));
  // The events reached the index over the authenticated NATS connection.
  v1::IndexLookupRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  for (TokenId t : tokens) req.add_token_ids(t);
  std::map<std::string, uint32_t> held;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline && held["holder"] != 4) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kApiToken));
    v1::IndexLookupResponse resp;
    if (good->Lookup(&ctx, req, &resp).ok()) {
      for (const v1::NodeMatch& m : resp.nodes()) held[m.node_id()] = m.matched_chunks();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(held["holder"], 4u) << index->Log();

  // The reader finds the holder through the index (token, mutual TLS) and
  // reads over UCX; the node with the wrong token finds nothing remote.
  const std::vector<BlockKey> keys = Namespace::Keys(chunks);
  ASSERT_OK_AND_ASSIGN(LookupResult found, cb->Lookup(ns, keys));
  ASSERT_EQ(found.matched, 4u) << b->process().Log();
  for (const ChunkLocation& l : found.chunks) EXPECT_EQ(l.holder, "holder");
  ASSERT_OK(CheckKeyedLoads(*cb, ns, chunks));
  ASSERT_OK_AND_ASSIGN(LookupResult refused, cc->Lookup(ns, keys));
  EXPECT_EQ(refused.matched, 0u) << "a node the index refuses reads nothing remote";
  // ... and says so in its log while it runs (once a minute at most),
  // naming the setting.
  const std::string log = c->process().Log();
  const size_t line = log.find("asking where chunks live failed");
  ASSERT_NE(line, std::string::npos) << log;
  EXPECT_THAT(log.substr(line, log.find('\n', line) - line),
              HasSubstr("check cluster.index_token"));

  // The same through the library's HolderSource: the wrong token is
  // PERMISSION_DENIED at once, naming the setting.
  index::IndexHolderSourceOptions ho;
  ho.index_addresses = {index_address};
  ho.self_node_id = "router";
  ho.ca_file = certs.ca();
  ho.cert_file = certs.dir.File("client.pem");
  ho.key_file = certs.dir.File("client.key");
  ho.token = "not-the-index-token-0123";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<index::IndexHolderSource> wrong,
                       index::IndexHolderSource::Create(ho));
  EXPECT_THAT(wrong->FindHolders(ns.id(), keys, absl::Now() + absl::Seconds(3)),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("cluster.index_token")));
  ho.token = kApiToken;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<index::IndexHolderSource> right,
                       index::IndexHolderSource::Create(ho));
  ASSERT_OK(right->Check(absl::Now() + absl::Seconds(3)));
  ASSERT_OK_AND_ASSIGN(std::vector<transfer::RemoteHolder> holders,
                       right->FindHolders(ns.id(), keys, absl::Now() + absl::Seconds(3)));
  ASSERT_FALSE(holders.empty());
  EXPECT_EQ(holders[0].node_id, "holder");
  EXPECT_EQ(holders[0].matched_chunks, 4u);

  // The index reads its token file again while it runs: with the old token
  // gone from it (replaced by rename, as the kubelet writes a Secret), the
  // old token is refused within seconds and the new one still accepted.
  const std::string next = dir.Write("index.token.next", absl::StrCat(kNextApiToken, "\n"));
  ASSERT_EQ(std::rename(next.c_str(), dir.File("index.log.token").c_str()), 0);
  const absl::Time reload_deadline = absl::Now() + absl::Seconds(10);
  while (Stats(*good, kApiToken).ok() && absl::Now() < reload_deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(Stats(*good, kApiToken).error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << index->Log();
  EXPECT_TRUE(Stats(*good, kNextApiToken).ok());
  EXPECT_THAT(index->Log(), HasSubstr("token file read again"));
  EXPECT_THAT(index->Log(), ::testing::Not(HasSubstr(kNextApiToken)));
}

}  // namespace
}  // namespace kvtier::testing
