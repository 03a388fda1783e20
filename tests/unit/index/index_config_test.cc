// kvtier-index's settings: the YAML file, then the environment, then flags.
#include "src/index/index_config.h"

#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::index {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;
using Env = std::vector<std::pair<std::string, std::string>>;

TEST(IndexConfig, EnvironmentSetsWhatTheDeploymentPasses) {
  ASSERT_OK_AND_ASSIGN(
      IndexCommandLine c,
      ParseIndexCommandLine({}, Env{{"KVTIER_INDEX_NATS_URL", "nats://nats.kvtier.svc:4222"},
                                    {"KVTIER_INDEX_GRPC", "0.0.0.0:7070"},
                                    {"KVTIER_INDEX_HTTP", "0.0.0.0:9470"},
                                    {"KVTIER_STATUS_TOKEN", "status-token-0123456789"},
                                    {"KVTIER_INDEX_LOG_LEVEL", "warn"},
                                    {"UNRELATED", "x"}}));
  EXPECT_EQ(c.options.nats.url, "nats://nats.kvtier.svc:4222");
  EXPECT_EQ(c.options.grpc, "0.0.0.0:7070");
  EXPECT_EQ(c.options.http, "0.0.0.0:9470");
  EXPECT_EQ(c.options.status_token, "status-token-0123456789");
  EXPECT_EQ(c.log_level, "warn");
  const std::string yaml = EffectiveIndexConfig(c);
  EXPECT_THAT(yaml, HasSubstr("nats://nats.kvtier.svc:4222"));
  EXPECT_THAT(yaml, HasSubstr("<redacted>"));
  EXPECT_THAT(yaml, ::testing::Not(HasSubstr("status-token-0123456789")));
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
