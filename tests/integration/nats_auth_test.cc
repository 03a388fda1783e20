// NatsBus against real nats-server instances on loopback: a token, a user
// and password, TLS with server verification (CA, name) and mutual TLS; the
// option checks; no secret in any error.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/index/nats_bus.h"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/nats_harness.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "tok-7f3a9c2e-secret";
constexpr char kPassword[] = "pw-51b8d0e4-secret";

// A refusal must come back well before the 2 s connect timeout.
constexpr absl::Duration kFast = absl::Seconds(1);

index::NatsBusOptions Client(const NatsServer& server) {
  index::NatsBusOptions o;
  o.url = server.url();
  o.name = "nats-auth-test";
  return o;
}

// Connects, subscribes, publishes one message and waits for it.
absl::Status RoundTrip(const index::NatsBusOptions& options) {
  // Declared before the bus: its handler may run until the bus is gone.
  absl::Mutex mu;
  std::string got;
  absl::StatusOr<std::unique_ptr<index::NatsBus>> bus = index::NatsBus::Connect(options);
  if (!bus.ok()) return bus.status();
  absl::Status s = (*bus)->Subscribe(
      "kvtier.test.auth",
      [&](absl::string_view, absl::string_view data, const index::StreamPosition*) {
        absl::MutexLock lock(&mu);
        got = std::string(data);
      });
  if (s.ok()) s = (*bus)->Publish("kvtier.test.auth", "hello");
  if (s.ok()) s = (*bus)->Flush(absl::Seconds(5));
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu);
  auto arrived = [&got] { return !got.empty(); };
  if (!mu.AwaitWithTimeout(absl::Condition(&arrived), absl::Seconds(5))) {
    return absl::DeadlineExceededError("the published message did not arrive");
  }
  if (got != "hello") return absl::DataLossError(absl::StrCat("got '", got, "'"));
  return absl::OkStatus();
}

// Connect's status and how long it took.
struct Attempt {
  absl::Status status;
  absl::Duration took;
};
Attempt TryConnect(const index::NatsBusOptions& options) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<index::NatsBus>> bus = index::NatsBus::Connect(options);
  return {bus.status(), absl::Now() - start};
}

TEST(NatsAuth, TokenMissingIsRefusedFast) {
  TempDir dir;
  NatsServerOptions so;
  so.token = kToken;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, NatsServer::Start(dir, so));
  for (const bool retry : {false, true}) {
    index::NatsBusOptions o = Client(*server);
    o.retry_initial_connect = retry;
    const Attempt a = TryConnect(o);
    EXPECT_THAT(a.status, StatusIs(absl::StatusCode::kPermissionDenied,
                                   AllOf(HasSubstr("authentication refused"),
                                         HasSubstr("no credentials were given"))))
        << "retry_initial_connect=" << retry;
    EXPECT_LT(a.took, kFast) << "retry_initial_connect=" << retry;
  }
}

TEST(NatsAuth, WrongTokenIsRefused) {
  TempDir dir;
  NatsServerOptions so;
  so.token = kToken;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, NatsServer::Start(dir, so));
  index::NatsBusOptions o = Client(*server);
  o.token = "tok-wrong-0000";
  const Attempt a = TryConnect(o);
  EXPECT_THAT(a.status,
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr("authentication refused"), HasSubstr("a token was given"),
                             Not(HasSubstr("tok-wrong-0000")), Not(HasSubstr(kToken)))));
  EXPECT_LT(a.took, kFast);
}

TEST(NatsAuth, RightTokenRoundTrips) {
  TempDir dir;
  NatsServerOptions so;
  so.token = kToken;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, NatsServer::Start(dir, so));
  index::NatsBusOptions o = Client(*server);
  o.token = kToken;
  EXPECT_OK(RoundTrip(o));
}

TEST(NatsAuth, UserAndPassword) {
  TempDir dir;
  NatsServerOptions so;
  so.user = "kvtier";
  so.password = kPassword;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, NatsServer::Start(dir, so));
  index::NatsBusOptions o = Client(*server);
  o.user = "kvtier";
  o.password = "pw-wrong-1111";
  const Attempt wrong = TryConnect(o);
  EXPECT_THAT(wrong.status,
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr("authentication refused"), HasSubstr("user 'kvtier'"),
                             Not(HasSubstr("pw-wrong-1111")), Not(HasSubstr(kPassword)))));
  EXPECT_LT(wrong.took, kFast);
  o.user = "someone-else";
  o.password = kPassword;
  EXPECT_THAT(TryConnect(o).status,
              StatusIs(absl::StatusCode::kPermissionDenied, Not(HasSubstr(kPassword))));
  o.user = "kvtier";
  EXPECT_OK(RoundTrip(o));
}

// A TLS server with certificates from MakeCertificates (server.pem names
// localhost and 127.0.0.1).
class NatsTls : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(MakeCertificates(certs_));
    ASSERT_OK(MakeCertificates(other_certs_));
  }
  absl::StatusOr<std::unique_ptr<NatsServer>> StartServer(bool verify_clients) {
    NatsServerOptions so;
    so.cert_file = certs_.File("server.pem");
    so.key_file = certs_.File("server.key");
    so.verify_clients = verify_clients;
    if (verify_clients) so.ca_file = certs_.File("ca.pem");
    return NatsServer::Start(dir_, so);
  }
  index::NatsBusOptions TlsClient(const NatsServer& server) const {
    index::NatsBusOptions o = Client(server);
    o.ca_file = certs_.File("ca.pem");
    return o;
  }

  TempDir dir_;
  TempDir certs_;
  TempDir other_certs_;  // another CA, which signed nothing the server shows
};

TEST_F(NatsTls, PlaintextClientIsRefused) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, StartServer(false));
  const Attempt a = TryConnect(Client(*server));
  EXPECT_THAT(a.status, StatusIs(absl::StatusCode::kUnauthenticated,
                                 AllOf(HasSubstr("TLS"), HasSubstr("the server requires TLS"),
                                       HasSubstr("ca_file"))));
  EXPECT_LT(a.took, kFast);
}

TEST_F(NatsTls, ClientWithTheCaRoundTrips) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, StartServer(false));
  index::NatsBusOptions o = TlsClient(*server);
  EXPECT_OK(RoundTrip(o));
  // The same over a tls:// URL, and with the certificate's other name.
  o.url = absl::StrCat("tls://127.0.0.1:", server->port());
  o.tls_name = "localhost";
  EXPECT_OK(RoundTrip(o));
}

TEST_F(NatsTls, AnotherCaFails) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, StartServer(false));
  index::NatsBusOptions o = TlsClient(*server);
  o.ca_file = other_certs_.File("ca.pem");
  const Attempt a = TryConnect(o);
  EXPECT_THAT(a.status, StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("TLS handshake")));
  EXPECT_THAT(a.status.message(), Not(HasSubstr("the server requires TLS")));
  EXPECT_LT(a.took, kFast);
}

TEST_F(NatsTls, NameMismatchFails) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, StartServer(false));
  index::NatsBusOptions o = TlsClient(*server);
  o.tls_name = "not-the-server.example";
  EXPECT_THAT(TryConnect(o).status,
              StatusIs(absl::StatusCode::kUnauthenticated,
                       AllOf(HasSubstr("TLS handshake"), HasSubstr("not-the-server.example"))));
}

TEST_F(NatsTls, ServerWithoutTlsIsReported) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, NatsServer::Start(dir));
  EXPECT_THAT(TryConnect(TlsClient(*server)).status,
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("offers no TLS")));
}

TEST_F(NatsTls, MutualTlsWithoutCertificateIsRefused) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, StartServer(true));
  const Attempt a = TryConnect(TlsClient(*server));
  EXPECT_THAT(a.status, StatusIs(absl::StatusCode::kUnauthenticated,
                                 AllOf(HasSubstr("TLS"), HasSubstr("cert_file"))));
  EXPECT_LT(a.took, kFast);
}

TEST_F(NatsTls, MutualTlsWithAnotherCasCertificateIsRefused) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, StartServer(true));
  index::NatsBusOptions o = TlsClient(*server);
  o.cert_file = other_certs_.File("client.pem");
  o.key_file = other_certs_.File("client.key");
  EXPECT_THAT(TryConnect(o).status,
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr(o.cert_file)));
}

TEST_F(NatsTls, MutualTlsWithCertificateRoundTrips) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, StartServer(true));
  index::NatsBusOptions o = TlsClient(*server);
  o.cert_file = certs_.File("client.pem");
  o.key_file = certs_.File("client.key");
  EXPECT_OK(RoundTrip(o));
}

TEST_F(NatsTls, TokenOverTlsRoundTrips) {
  NatsServerOptions so;
  so.cert_file = certs_.File("server.pem");
  so.key_file = certs_.File("server.key");
  so.token = kToken;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, NatsServer::Start(dir_, so));
  index::NatsBusOptions o = TlsClient(*server);
  EXPECT_THAT(TryConnect(o).status, StatusIs(absl::StatusCode::kPermissionDenied));
  o.token = kToken;
  EXPECT_OK(RoundTrip(o));
}

TEST(NatsOptions, BadCombinationsNameTheOption) {
  TempDir certs;
  ASSERT_OK(MakeCertificates(certs));
  struct Case {
    std::string name;
    index::NatsBusOptions options;
    std::string message;
  };
  std::vector<Case> cases;
  const auto add = [&cases](std::string name, auto edit, std::string message) {
    index::NatsBusOptions o;
    edit(o);
    cases.push_back({std::move(name), o, std::move(message)});
  };
  const std::string ca = certs.File("ca.pem");
  const std::string cert = certs.File("client.pem");
  const std::string key = certs.File("client.key");
  add(
      "token and user",
      [](index::NatsBusOptions& o) {
        o.token = kToken;
        o.user = "u";
        o.password = kPassword;
      },
      "nats token:");
  add(
      "token and password",
      [](index::NatsBusOptions& o) {
        o.token = kToken;
        o.password = kPassword;
      },
      "nats token:");
  add(
      "token with a quote", [](index::NatsBusOptions& o) { o.token = "tok\"en-0123456789"; },
      "nats token: must not hold quotes");
  add(
      "password with a backslash",
      [](index::NatsBusOptions& o) {
        o.user = "u";
        o.password = "pass\\word";
      },
      "nats password: must not hold quotes");
  add(
      "user alone", [](index::NatsBusOptions& o) { o.user = "u"; }, "nats user:");
  add(
      "password alone", [](index::NatsBusOptions& o) { o.password = kPassword; }, "nats password:");
  add(
      "URL credentials and token",
      [](index::NatsBusOptions& o) {
        o.url = "nats://u:p@127.0.0.1:4222";
        o.token = kToken;
      },
      "nats url:");
  add(
      "cert without key",
      [&](index::NatsBusOptions& o) {
        o.ca_file = ca;
        o.cert_file = cert;
      },
      "nats cert_file:");
  add(
      "key without cert",
      [&](index::NatsBusOptions& o) {
        o.ca_file = ca;
        o.key_file = key;
      },
      "nats key_file:");
  add(
      "cert without TLS",
      [&](index::NatsBusOptions& o) {
        o.cert_file = cert;
        o.key_file = key;
      },
      "nats cert_file: needs TLS");
  add(
      "tls_name without TLS", [](index::NatsBusOptions& o) { o.tls_name = "localhost"; },
      "nats tls_name: needs TLS");
  add(
      "tls:// without ca_file", [](index::NatsBusOptions& o) { o.url = "tls://127.0.0.1:4222"; },
      "nats ca_file:");
  add(
      "TLS to several hosts without tls_name",
      [&](index::NatsBusOptions& o) {
        o.url = "nats://a.example:4222,nats://b.example:4222";
        o.ca_file = ca;
      },
      "nats tls_name:");
  add(
      "missing ca_file", [](index::NatsBusOptions& o) { o.ca_file = "/nonexistent/kvtier-ca.pem"; },
      "nats ca_file: cannot read '/nonexistent/kvtier-ca.pem'");
  add(
      "missing cert_file",
      [&](index::NatsBusOptions& o) {
        o.ca_file = ca;
        o.cert_file = "/nonexistent/kvtier-client.pem";
        o.key_file = key;
      },
      "nats cert_file: cannot read '/nonexistent/kvtier-client.pem'");
  add(
      "missing key_file",
      [&](index::NatsBusOptions& o) {
        o.ca_file = ca;
        o.cert_file = cert;
        o.key_file = "/nonexistent/kvtier-client.key";
      },
      "nats key_file: cannot read '/nonexistent/kvtier-client.key'");
  for (const Case& c : cases) {
    EXPECT_THAT(c.options.Validate(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.name;
    // Connect checks the same before it tries.
    EXPECT_THAT(index::NatsBus::Connect(c.options),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.name;
  }

  // Good combinations pass.
  index::NatsBusOptions o;
  o.token = kToken;
  EXPECT_OK(o.Validate());
  o = {};
  o.user = "u";
  o.password = kPassword;
  EXPECT_OK(o.Validate());
  o = {};
  o.url = "tls://127.0.0.1:4222,tls://localhost:4223";
  o.ca_file = ca;
  o.cert_file = cert;
  o.key_file = key;
  o.tls_name = "localhost";
  EXPECT_OK(o.Validate());
  EXPECT_TRUE(o.UsesTls());
  o = {};
  EXPECT_FALSE(o.UsesTls());
  o.ca_file = ca;
  EXPECT_TRUE(o.UsesTls());
}

TEST(NatsOptions, UnloadableFilesAreNamed) {
  TempDir dir;
  index::NatsBusOptions o;
  o.url = "nats://127.0.0.1:1";
  o.ca_file = dir.Write("not-a-ca.pem", "this is not PEM\n");
  EXPECT_THAT(index::NatsBus::Connect(o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("nats ca_file"), HasSubstr(o.ca_file))));
  TempDir certs;
  ASSERT_OK(MakeCertificates(certs));
  o.ca_file = certs.File("ca.pem");
  o.cert_file = dir.Write("not-a-cert.pem", "this is not PEM\n");
  o.key_file = certs.File("client.key");
  EXPECT_THAT(index::NatsBus::Connect(o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("nats cert_file"), HasSubstr(o.cert_file))));
}

TEST(NatsOptions, SecretsStayOutOfErrors) {
  std::vector<absl::Status> errors;
  index::NatsBusOptions o;
  o.token = kToken;
  o.user = "u";
  o.password = kPassword;
  errors.push_back(o.Validate());
  o = {};
  o.url = absl::StrCat("http://u:", kPassword, "@127.0.0.1:4222");
  errors.push_back(o.Validate());
  o.url = absl::StrCat("nats://", kToken, "@127.0.0.1:4222");
  o.user = "u";
  o.password = kPassword;
  errors.push_back(o.Validate());
  // Nothing listens on this port.
  o = {};
  o.url = absl::StrCat("nats://127.0.0.1:", FreePort());
  o.token = kToken;
  errors.push_back(index::NatsBus::Connect(o).status());
  o.url = absl::StrCat("nats://u:", kPassword, "@127.0.0.1:", FreePort());
  o.token.clear();
  errors.push_back(index::NatsBus::Connect(o).status());
  // A server that refuses the token given in the URL.
  TempDir dir;
  NatsServerOptions so;
  so.token = "tok-server-only";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, NatsServer::Start(dir, so));
  o = {};
  o.url = absl::StrCat("nats://", kToken, "@127.0.0.1:", server->port());
  errors.push_back(index::NatsBus::Connect(o).status());
  EXPECT_THAT(errors.back(), StatusIs(absl::StatusCode::kPermissionDenied));
  o.url = server->url();
  o.token = kToken;
  errors.push_back(index::NatsBus::Connect(o).status());
  EXPECT_THAT(errors.back(), StatusIs(absl::StatusCode::kPermissionDenied));

  for (const absl::Status& e : errors) {
    EXPECT_FALSE(e.ok());
    EXPECT_THAT(e.ToString(), AllOf(Not(HasSubstr(kToken)), Not(HasSubstr(kPassword))));
  }
}

TEST(NatsOptions, RetryInitialConnectConnectsOnceTheServerIsUp) {
  TempDir dir;
  NatsServerOptions so;
  so.port = FreePort();
  so.token = kToken;
  index::NatsBusOptions o;
  o.url = absl::StrCat("nats://127.0.0.1:", so.port);
  o.token = kToken;
  EXPECT_THAT(index::NatsBus::Connect(o), StatusIs(absl::StatusCode::kUnavailable));
  o.retry_initial_connect = true;
  const absl::Time start = absl::Now();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<index::NatsBus> bus, index::NatsBus::Connect(o));
  EXPECT_LT(absl::Now() - start, kFast) << "Connect waited for the server";
  EXPECT_FALSE(bus->connected());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> server, NatsServer::Start(dir, so));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!bus->connected() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_TRUE(bus->connected());
}

}  // namespace
}  // namespace kvtier::testing
