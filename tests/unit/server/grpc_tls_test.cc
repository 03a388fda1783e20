// TLS settings of gRPC listeners and channels: combinations, files, hosts.
#include "src/server/grpc_tls.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/common/temp_path.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::server {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

// A file holding `text`; removed on destruction.
class File {
 public:
  explicit File(const std::string& text) {
    absl::StatusOr<std::pair<std::string, int>> f = MakeTempFile("/tmp", "kvtier_grpc_tls_test_");
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) return;
    path_ = f->first;
    EXPECT_EQ(write(f->second, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    close(f->second);
  }
  ~File() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(GrpcTls, HostsAndLoopback) {
  EXPECT_EQ(HostOf("10.0.0.5:7070"), "10.0.0.5");
  EXPECT_EQ(HostOf("[::1]:7070"), "::1");
  EXPECT_EQ(HostOf("kvtier-index.kvtier.svc:7070"), "kvtier-index.kvtier.svc");
  for (const char* h : {"127.0.0.1", "127.1.2.3", "localhost", "::1"}) {
    EXPECT_TRUE(IsLoopbackHost(h)) << h;
  }
  for (const char* h : {"0.0.0.0", "10.0.0.5", "::", "kvtier-index", "128.0.0.1"}) {
    EXPECT_FALSE(IsLoopbackHost(h)) << h;
  }
}

TEST(GrpcTls, HandshakeFailuresAreToldFromAPeerThatIsDown) {
  // What gRPC says for an unknown CA (the cluster security test reaches
  // this with a real index) and for a listener that is not there.
  EXPECT_TRUE(IsTlsHandshakeFailure(
      "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:54053: Tls "
      "handshake failed: SSL_ERROR_SSL: error:0A000086:SSL routines::certificate verify failed"));
  EXPECT_TRUE(IsTlsHandshakeFailure("Peer name kvtierd.kvtier.svc is not in peer certificate"));
  EXPECT_FALSE(IsTlsHandshakeFailure(
      "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to "
      "connect to remote host: Connection refused"));
  EXPECT_FALSE(IsTlsHandshakeFailure("Deadline Exceeded"));
  EXPECT_FALSE(IsTlsHandshakeFailure("Handshake read failed"));
}

TEST(GrpcTls, ValidateNamesTheKeyOfTheSection) {
  File pem("-----BEGIN CERTIFICATE-----\n");
  TlsConfig ok{pem.path(), pem.path(), pem.path(), true};
  EXPECT_OK(ValidateTls(ok, "tls"));
  EXPECT_OK(ValidateTls(TlsConfig{}, "tls"));  // off is valid

  TlsConfig no_key = ok;
  no_key.key_file.clear();
  EXPECT_THAT(ValidateTls(no_key, "tls"), StatusIs(kInvalid, HasSubstr("tls.key_file")));
  TlsConfig no_cert = ok;
  no_cert.cert_file.clear();
  EXPECT_THAT(ValidateTls(no_cert, "grpc_tls"),
              StatusIs(kInvalid, HasSubstr("grpc_tls.cert_file")));
  TlsConfig ca_alone;
  ca_alone.client_ca_file = pem.path();
  EXPECT_THAT(ValidateTls(ca_alone, "tls"), StatusIs(kInvalid, HasSubstr("tls.client_ca_file")));
  TlsConfig require_without_ca = ok;
  require_without_ca.client_ca_file.clear();
  EXPECT_THAT(ValidateTls(require_without_ca, "tls"),
              StatusIs(kInvalid, HasSubstr("tls.require_client_cert")));
  TlsConfig never_reloaded = ok;
  never_reloaded.reload_seconds = 0;
  EXPECT_THAT(ValidateTls(never_reloaded, "tls"),
              StatusIs(kInvalid, HasSubstr("tls.reload_seconds")));
  TlsConfig missing = ok;
  missing.client_ca_file = pem.path() + ".missing";
  EXPECT_THAT(ValidateTls(missing, "tls"),
              StatusIs(kInvalid, HasSubstr("tls.client_ca_file: cannot read")));
}

TEST(GrpcTls, CredentialsReadTheirFilesOrNameThem) {
  EXPECT_THAT(ReadPemFile("/nonexistent/ca.pem", "cluster.index_ca_file"),
              StatusIs(kInvalid, HasSubstr("cluster.index_ca_file: cannot read '/nonexistent")));
  File pem("pem text");
  ASSERT_OK_AND_ASSIGN(std::string text, ReadPemFile(pem.path(), "x"));
  EXPECT_EQ(text, "pem text");
  // Off: plaintext credentials without reading anything.
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<grpc::ServerCredentials> plain,
                       ServerCredentials(TlsConfig{}, "tls"));
  EXPECT_NE(plain, nullptr);
  TlsConfig bad{pem.path(), "/nonexistent/key.pem", "", false};
  EXPECT_THAT(ServerCredentials(bad, "tls"), StatusIs(kInvalid, HasSubstr("tls.key_file")));
  EXPECT_THAT(ChannelCredentials({pem.path(), "ca"}, {pem.path(), "tls_cert_file"},
                                 {"/nonexistent/key.pem", "tls_key_file"}),
              StatusIs(kInvalid, HasSubstr("tls_key_file")));
  EXPECT_THAT(ChannelCredentials({"/nonexistent/ca.pem", "tls_ca_file"}, {}, {}),
              StatusIs(kInvalid, HasSubstr("tls_ca_file")));
}

}  // namespace
}  // namespace kvtier::server
