// TLS files read again while running, on both ends of a gRPC connection:
// a server whose certificate is swapped for another CA's, and channel
// credentials whose CA file is swapped. A server that implements nothing
// answers UNIMPLEMENTED once the handshake succeeds and the call reaches it,
// and a failed handshake is UNAVAILABLE, so the codes tell which
// certificate won. Also: the name a channel expects instead of the address.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "kvtier/v1/index.grpc.pb.h"
#include "src/server/grpc_tls.h"
#include "tests/integration/daemon_harness.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::testing {
namespace {

// Copies `name` of `from` into `to` by rename (as a Secret update swaps it).
void Install(const TempDir& from, const std::string& name, const TempDir& to) {
  std::ifstream in(from.File(name), std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  const std::string tmp = to.Write(name + ".tmp", text.str());
  ASSERT_EQ(std::rename(tmp.c_str(), to.File(name).c_str()), 0);
}

// A server on 127.0.0.1, TLS from `tls`, whose one service implements
// nothing.
std::unique_ptr<grpc::Server> StartServer(const server::TlsConfig& tls, v1::Index::Service* nothing,
                                          int* port) {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
      server::ServerCredentials(tls, "tls");
  EXPECT_TRUE(creds.ok()) << creds.status();
  if (!creds.ok()) return nullptr;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", *creds, port);
  builder.RegisterService(nothing);
  return builder.BuildAndStart();
}

// The code of one call on a fresh channel made from `creds`, expecting
// `name` in the server's certificate ("" = the address).
grpc::StatusCode Call(const std::shared_ptr<grpc::ChannelCredentials>& creds, int port,
                      const std::string& name = "") {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a new connection each time
  if (!name.empty()) args.SetSslTargetNameOverride(name);
  std::unique_ptr<v1::Index::Stub> stub =
      v1::Index::NewStub(grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), creds, args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  v1::IndexStatsResponse response;
  return stub->Stats(&ctx, v1::IndexStatsRequest(), &response).error_code();
}

// Calls until `want` (or 15 s pass); the last code.
grpc::StatusCode CallUntil(const std::shared_ptr<grpc::ChannelCredentials>& creds, int port,
                           grpc::StatusCode want) {
  grpc::StatusCode got = Call(creds, port);
  for (absl::Time deadline = absl::Now() + absl::Seconds(15); got != want && absl::Now() < deadline;
       got = Call(creds, port)) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  return got;
}

TEST(GrpcTlsReload, ServerAndChannelPickUpRenewedFiles) {
  TempDir a, b, server_live, client_live;
  ASSERT_OK(MakeCertificates(a));
  ASSERT_OK(MakeCertificates(b));  // another CA
  Install(a, "server.pem", server_live);
  Install(a, "server.key", server_live);
  Install(a, "ca.pem", client_live);

  server::TlsConfig tls;
  tls.cert_file = server_live.File("server.pem");
  tls.key_file = server_live.File("server.key");
  tls.reload_seconds = 1;
  int port = 0;
  v1::Index::Service nothing;
  std::unique_ptr<grpc::Server> server = StartServer(tls, &nothing, &port);
  ASSERT_NE(server, nullptr);
  ASSERT_OK_AND_ASSIGN(
      std::shared_ptr<grpc::ChannelCredentials> client,
      server::ChannelCredentials({client_live.File("ca.pem"), "ca"}, {}, {}, /*reload_seconds=*/1));
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<grpc::ChannelCredentials> b_client,
                       server::ChannelCredentials({b.File("ca.pem"), "ca"}, {}, {}));
  EXPECT_EQ(Call(client, port), grpc::StatusCode::UNIMPLEMENTED) << "the handshake succeeds";
  EXPECT_EQ(Call(b_client, port), grpc::StatusCode::UNAVAILABLE) << "another CA is refused";

  // The server's certificate is renewed by another CA: clients that trust
  // that CA get through, the client still trusting the old one does not.
  Install(b, "server.pem", server_live);
  Install(b, "server.key", server_live);
  EXPECT_EQ(CallUntil(b_client, port, grpc::StatusCode::UNIMPLEMENTED),
            grpc::StatusCode::UNIMPLEMENTED)
      << "the server kept its old certificate";
  EXPECT_EQ(Call(client, port), grpc::StatusCode::UNAVAILABLE);

  // The client's CA file is renewed too: the same credentials trust the new
  // CA on their next handshake.
  Install(b, "ca.pem", client_live);
  EXPECT_EQ(CallUntil(client, port, grpc::StatusCode::UNIMPLEMENTED),
            grpc::StatusCode::UNIMPLEMENTED)
      << "the channel credentials kept the old CA";
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

// A certificate that names only a service name (no address), as a
// Kubernetes Service's: a channel to the address that expects that name
// (ucx.peer_tls_name, cluster.index_tls_name) gets through; without the
// name, or with another, it is refused.
TEST(GrpcTlsReload, TheExpectedNameOverridesTheAddress) {
  TempDir d;
  ASSERT_OK(MakeCertificates(d, "DNS:kvtierd.kvtier.svc"));
  server::TlsConfig tls;
  tls.cert_file = d.File("server.pem");
  tls.key_file = d.File("server.key");
  int port = 0;
  v1::Index::Service nothing;
  std::unique_ptr<grpc::Server> server = StartServer(tls, &nothing, &port);
  ASSERT_NE(server, nullptr);
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<grpc::ChannelCredentials> creds,
                       server::ChannelCredentials({d.File("ca.pem"), "ca"}, {}, {}));
  EXPECT_EQ(Call(creds, port, "kvtierd.kvtier.svc"), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(Call(creds, port), grpc::StatusCode::UNAVAILABLE)
      << "127.0.0.1 is not in the certificate";
  EXPECT_EQ(Call(creds, port, "other.kvtier.svc"), grpc::StatusCode::UNAVAILABLE);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

}  // namespace
}  // namespace kvtier::testing
