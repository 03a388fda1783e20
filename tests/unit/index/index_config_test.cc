// kvtier-index's settings: the YAML file, then the environment, then flags.
#include "src/index/index_config.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/common/temp_path.h"
#include "src/common/token_list.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::index {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;
using Env = std::vector<std::pair<std::string, std::string>>;

// A file in a fresh temporary folder; removed with the folder.
class Files {
 public:
  Files() {
    absl::StatusOr<std::string> dir = MakeTempDir("/tmp", "kvtier-index-config-");
    EXPECT_TRUE(dir.ok()) << dir.status();
    if (dir.ok()) dir_ = *dir;
  }
  ~Files() { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }

 private:
  std::string dir_;
};

TEST(IndexConfig, EnvironmentSetsWhatTheDeploymentPasses) {
  Files files;
  const std::string cert = files.Write("tls.crt", "-");
  const std::string key = files.Write("tls.key", "-");
  ASSERT_OK_AND_ASSIGN(
      IndexCommandLine c,
      ParseIndexCommandLine({"--tls-cert", cert, "--tls-key", key},
                            Env{{"KVTIER_INDEX_NATS_URL", "nats://nats.kvtier.svc:4222"},
                                {"KVTIER_INDEX_GRPC", "0.0.0.0:7070"},
                                {"KVTIER_INDEX_HTTP", "0.0.0.0:9470"},
                                {"KVTIER_STATUS_TOKEN", "status-token-0123456789"},
                                {"KVTIER_INDEX_TOKEN", "index-api-token-0123456789"},
                                {"KVTIER_NATS_TOKEN", "nats-token-0123456789"},
                                {"KVTIER_INDEX_LOG_LEVEL", "warn"},
                                {"UNRELATED", "x"}}));
  EXPECT_EQ(c.options.nats.url, "nats://nats.kvtier.svc:4222");
  EXPECT_EQ(c.options.nats.token, "nats-token-0123456789");
  EXPECT_EQ(c.options.grpc, "0.0.0.0:7070");
  EXPECT_EQ(c.options.http, "0.0.0.0:9470");
  EXPECT_EQ(c.options.status_token, "status-token-0123456789");
  EXPECT_EQ(c.options.api_token, "index-api-token-0123456789");
  EXPECT_EQ(c.options.tls.cert_file, cert);
  EXPECT_EQ(c.log_level, "warn");
  const std::string yaml = EffectiveIndexConfig(c);
  EXPECT_THAT(yaml, HasSubstr("nats://nats.kvtier.svc:4222"));
  EXPECT_THAT(yaml, HasSubstr("<redacted>"));
  EXPECT_THAT(yaml, HasSubstr(cert));
  for (const char* secret :
       {"status-token-0123456789", "index-api-token-0123456789", "nats-token-0123456789"}) {
    EXPECT_THAT(yaml, ::testing::Not(HasSubstr(secret)));
  }
}

TEST(IndexConfig, OffLoopbackTheApiNeedsATokenAndTls) {
  Files files;
  const std::string token_file = files.Write("index-token", "index-api-token-0123456789\n");
  // No token.
  EXPECT_THAT(ParseIndexCommandLine({"--grpc", "0.0.0.0:7070"}, Env{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("api_token: required")));
  // A token but no TLS.
  EXPECT_THAT(
      ParseIndexCommandLine({"--grpc", "10.1.2.3:7070", "--api-token-file", token_file}, Env{}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("grpc: '10.1.2.3:7070' is not a loopback address")));
  // Plaintext allowed on purpose.
  ASSERT_OK_AND_ASSIGN(IndexCommandLine c,
                       ParseIndexCommandLine({"--grpc", "10.1.2.3:7070", "--api-token-file",
                                              token_file, "--allow-insecure-tcp", "true"},
                                             Env{}));
  EXPECT_EQ(c.options.api_token, "index-api-token-0123456789") << "whitespace stripped";
  // Loopback needs neither.
  EXPECT_OK(ParseIndexCommandLine({"--grpc", "127.0.0.1:7070"}, Env{}).status());
  // A token file may list several tokens, each checked.
  const std::string two_file =
      files.Write("two.token", "index-api-token-new-0123\nindex-api-token-0123456789\n");
  ASSERT_OK_AND_ASSIGN(IndexCommandLine two,
                       ParseIndexCommandLine({"--api-token-file", two_file}, Env{}));
  EXPECT_EQ(SplitTokens(two.options.api_token).size(), 2u);
  EXPECT_EQ(two.options.api_token_file, two_file) << "read again while it runs";
  // The status token from a file too; a token given as a value is not
  // read again.
  const std::string status_file = files.Write("status.token", "status-0123\n");
  ASSERT_OK_AND_ASSIGN(
      IndexCommandLine status,
      ParseIndexCommandLine({"--status-token-file", status_file},
                            Env{{"KVTIER_INDEX_TOKEN", "index-api-token-0123456789"}}));
  EXPECT_EQ(status.options.status_token, "status-0123");
  EXPECT_EQ(status.options.status_token_file, status_file);
  EXPECT_EQ(status.options.api_token_file, "");
  EXPECT_THAT(
      ParseIndexCommandLine(
          {"--api-token-file", files.Write("bad.token", "index-api-token-new-0123\nshort")}, Env{}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("api_token: must be at least 16 characters (token 2)")));
  // A short token is refused anywhere; white space is no token (the API
  // would be open off loopback).
  EXPECT_THAT(ParseIndexCommandLine({}, Env{{"KVTIER_INDEX_TOKEN", "short"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at least 16")));
  EXPECT_THAT(ParseIndexCommandLine({"--grpc", "10.1.2.3:7070", "--allow-insecure-tcp", "true"},
                                    Env{{"KVTIER_INDEX_TOKEN", " "}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("api_token: holds no token")));
  EXPECT_THAT(
      ParseIndexCommandLine({}, Env{{"KVTIER_STATUS_TOKEN", "\n"}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("status_token: holds no token")));
  EXPECT_THAT(
      ParseIndexCommandLine({"--api-token-file", files.Write("empty", "") + ".missing"}, Env{}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--api-token-file")));
}

TEST(IndexConfig, TlsAndNatsSettingsFromYaml) {
  Files files;
  const std::string cert = files.Write("tls.crt", "-");
  const std::string key = files.Write("tls.key", "-");
  const std::string ca = files.Write("ca.crt", "-");
  const std::string nats_password = files.Write("nats-password", "nats-password-0123\n");
  const std::string yaml =
      files.Write("index.yaml",
                  "grpc: 0.0.0.0:7070\napi_token: index-api-token-0123456789\ntls:\n"
                  "  cert_file: " +
                      cert + "\n  key_file: " + key + "\n  client_ca_file: " + ca +
                      "\n  require_client_cert: true\n  reload_seconds: 30\nnats:\n  url: "
                      "tls://nats.kvtier.svc:4222\n"
                      "  user: kvtier\n  password_file: " +
                      nats_password + "\n  ca_file: " + ca + "\n  tls_name: nats.kvtier.svc\n");
  ASSERT_OK_AND_ASSIGN(IndexCommandLine c, ParseIndexCommandLine({"--config", yaml}, Env{}));
  EXPECT_EQ(c.options.tls.key_file, key);
  EXPECT_EQ(c.options.tls.client_ca_file, ca);
  EXPECT_TRUE(c.options.tls.require_client_cert);
  EXPECT_EQ(c.options.tls.reload_seconds, 30u);
  EXPECT_EQ(c.options.nats.user, "kvtier");
  EXPECT_EQ(c.options.nats.password, "nats-password-0123");
  EXPECT_EQ(c.options.nats.ca_file, ca);
  EXPECT_EQ(c.options.nats.tls_name, "nats.kvtier.svc");
  EXPECT_THAT(EffectiveIndexConfig(c), ::testing::Not(HasSubstr("nats-password-0123")));

  // Broken combinations name the key.
  EXPECT_THAT(ParseIndexCommandLine({"--tls-cert", cert}, Env{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls.key_file")));
  EXPECT_THAT(ParseIndexCommandLine({"--require-client-cert", "true"}, Env{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls.require_client_cert")));
  EXPECT_THAT(
      ParseIndexCommandLine({"--tls-cert", cert + ".missing", "--tls-key", key}, Env{}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls.cert_file: cannot read")));
  EXPECT_THAT(
      ParseIndexCommandLine({"--config", files.Write("bad.yaml", "tls:\n  cert: x\n")}, Env{}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls.cert")));
  EXPECT_THAT(ParseIndexCommandLine({"--config", files.Write("bad2.yaml", "tls: on\n")}, Env{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls: must be a mapping")));
}

TEST(IndexConfig, FlagsWinOverTheEnvironment) {
  ASSERT_OK_AND_ASSIGN(
      IndexCommandLine c,
      ParseIndexCommandLine({"--grpc", "127.0.0.1:7171", "--check-config"},
                            Env{{"KVTIER_INDEX_GRPC", "0.0.0.0:7070"},
                                {"KVTIER_INDEX_NATS_URL", "nats://10.0.0.5:4222"}}));
  EXPECT_EQ(c.options.grpc, "127.0.0.1:7171");
  EXPECT_EQ(c.options.nats.url, "nats://10.0.0.5:4222");
  EXPECT_TRUE(c.check_config);
}

TEST(IndexConfig, ABadVariableIsNamed) {
  EXPECT_THAT(ParseIndexCommandLine({}, Env{{"KVTIER_INDEX_LOG_LEVEL", "loud"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("KVTIER_INDEX_LOG_LEVEL")));
}

}  // namespace
}  // namespace kvtier::index
