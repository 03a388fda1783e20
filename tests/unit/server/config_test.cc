#include "src/server/config.h"

#include "src/common/temp_path.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/mutate.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::server {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

// A valid base: small DRAM so Validate passes without touching RAM size.
DaemonConfig Base() {
  DaemonConfig c;
  c.unix_socket = "/tmp/kvtier-test/kvtierd.sock";
  c.dram.dram_capacity_bytes = 256ull << 20;
  return c;
}

std::string TempFile(const std::string& contents) {
  absl::StatusOr<std::pair<std::string, int>> file = MakeTempFile("/tmp", "kvtier_config_test_");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return "";
  std::string path = file->first;
  const int fd = file->second;
  EXPECT_EQ(write(fd, contents.data(), contents.size()), static_cast<ssize_t>(contents.size()));
  close(fd);
  return path;
}

TEST(NvmeDefault, AQuarterOfFreeSpaceCountingTheVolumeAlreadyThere) {
  constexpr uint64_t kGiB = 1ull << 30;
  EXPECT_EQ(DefaultNvmeBytesFor(40 * kGiB, 0), 10 * kGiB);
  // After a first run took 10 GiB of those 40, a restart asks for the same.
  EXPECT_EQ(DefaultNvmeBytesFor(30 * kGiB, 10 * kGiB), 10 * kGiB);
  EXPECT_EQ(DefaultNvmeBytesFor(1000 * kGiB, 0), 16 * kGiB);               // the cap
  EXPECT_EQ(DefaultNvmeBytesFor(kGiB + (100ull << 20), 0), 256ull << 20);  // 64 MiB steps
  EXPECT_EQ(DefaultNvmeBytesFor(kGiB / 2, 0), 0u);                         // too small: off
}

TEST(NvmeDefault, ARelativeFolderNotCreatedYetIsMeasuredWhereItWillBe) {
  const uint64_t here = DefaultNvmeBytes(std::filesystem::current_path().string());
  if (here == 0) GTEST_SKIP() << "the working directory's file system has under 1 GiB free";
  ASSERT_FALSE(std::filesystem::exists("kvtier-no-such-folder"));
  const uint64_t relative = DefaultNvmeBytes("kvtier-no-such-folder/nested/nvme");
  // The same file system: the same size, give or take a 64 MiB step while
  // other writers change its free space.
  EXPECT_NEAR(static_cast<double>(relative), static_cast<double>(here), 128.0 * (1 << 20));
}

TEST(ByteSize, ParsesUnits) {
  EXPECT_EQ(*ParseByteSize("4096", "f"), 4096u);
  EXPECT_EQ(*ParseByteSize("64KiB", "f"), 64u << 10);
  EXPECT_EQ(*ParseByteSize("1MiB", "f"), 1u << 20);
  EXPECT_EQ(*ParseByteSize("16GiB", "f"), 16ull << 30);
  EXPECT_EQ(*ParseByteSize("2G", "f"), 2ull << 30);
  EXPECT_EQ(*ParseByteSize("1.5GiB", "f"), 3ull << 29);
  EXPECT_EQ(*ParseByteSize(" 8 mb ", "f"), 8u << 20);
  EXPECT_THAT(ParseByteSize("lots", "dram.capacity"),
              StatusIs(kInvalid, HasSubstr("dram.capacity")));
  EXPECT_THAT(ParseByteSize("3 parsecs", "x"), StatusIs(kInvalid, HasSubstr("unknown unit")));
  EXPECT_THAT(ParseByteSize("0.5", "x"), StatusIs(kInvalid, HasSubstr("whole number")));
}

TEST(Yaml, AppliesEveryKey) {
  const std::string token_file = TempFile("tenant-b-token-0123456789\n");
  DaemonConfig c = Base();
  ASSERT_OK(ApplyYaml(R"(
data_dir: /var/lib/kvtier
listen:
  unix_socket: /run/kvtier/k.sock
  unix_socket_mode: "0600"
  shared_memory: false
  tcp: 127.0.0.1:7000
  allow_insecure_tcp: true
  http: 127.0.0.1:9999
dram:
  capacity: 2GiB
  slab: 32MiB
  index_shards: 16
  huge_pages: false
  prefault: true
  eviction_policy: lru
auth:
  admin_token: admin-token-0123456789
  tenants:
    - name: a
      token: tenant-a-token-0123456789
      cache_salts: [salt-a, ""]
      model_ids: [m1]
      shared_memory: true
    - name: b
      token_file: )" + token_file +
                          R"(
limits:
  max_keys_per_request: 100
  max_tokens_per_request: 5000
  max_message_bytes: 256KiB
  max_grpc_message_bytes: 4MiB
  lease_seconds: 5
  max_leases: 10
shutdown:
  drain_seconds: 3
log:
  level: debug
)",
                      c));
  EXPECT_EQ(c.data_dir, "/var/lib/kvtier");
  EXPECT_EQ(c.unix_socket, "/run/kvtier/k.sock");
  EXPECT_EQ(c.unix_socket_mode, 0600u);
  EXPECT_FALSE(c.shared_memory);
  EXPECT_EQ(c.tcp, "127.0.0.1:7000");
  EXPECT_TRUE(c.allow_insecure_tcp);
  EXPECT_EQ(c.http, "127.0.0.1:9999");
  EXPECT_EQ(c.dram.dram_capacity_bytes, 2ull << 30);
  EXPECT_EQ(c.dram.slab_bytes, 32ull << 20);
  EXPECT_EQ(c.dram.index_shards, 16u);
  EXPECT_FALSE(c.dram.huge_pages);
  EXPECT_TRUE(c.dram.prefault);
  EXPECT_EQ(c.admin_token, "admin-token-0123456789");
  ASSERT_EQ(c.tenants.size(), 2u);
  EXPECT_EQ(c.tenants[0].name, "a");
  EXPECT_EQ(c.tenants[0].cache_salts, (std::vector<std::string>{"salt-a", ""}));
  EXPECT_EQ(c.tenants[0].model_ids, (std::vector<std::string>{"m1"}));
  EXPECT_TRUE(c.tenants[0].shared_memory);
  EXPECT_EQ(c.tenants[1].token, "tenant-b-token-0123456789");  // trimmed
  EXPECT_FALSE(c.tenants[1].shared_memory);
  EXPECT_EQ(c.max_keys_per_request, 100u);
  EXPECT_EQ(c.max_tokens_per_request, 5000u);
  EXPECT_EQ(c.max_message_bytes, 256u << 10);
  EXPECT_EQ(c.max_grpc_message_bytes, 4u << 20);
  EXPECT_EQ(c.lease_seconds, 5u);
  EXPECT_EQ(c.max_leases, 10u);
  EXPECT_EQ(c.drain_seconds, 3u);
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_OK(c.Validate());
  std::remove(token_file.c_str());
}

// Damaged configuration files: each is applied or refused with
// InvalidArgument; no exception escapes and nothing else is returned.
TEST(Yaml, DamagedFilesAreAppliedOrRefused) {
  const std::string seed = R"(
data_dir: /var/lib/kvtier
listen:
  unix_socket: /run/kvtier/k.sock
  unix_socket_mode: "0600"
  tcp: 127.0.0.1:7000
  http: 127.0.0.1:9999
dram:
  capacity: 2GiB
  slab: 32MiB
  eviction_policy: 2q-chain
auth:
  tenants:
    - model_ids: [m1, m2]
      name: a
      cache_salts: ["", salt-a]
      token: tenant-a-token-9876543210
  admin_token: admin-token-9876543210
limits:
  max_message_bytes: 256KiB
  lease_seconds: 5
log:
  level: debug
)";
  testing::Mutator m(2611);
  int applied = 0, refused = 0;
  for (int i = 0; i < 3000; ++i) {
    DaemonConfig c = Base();
    const std::string text = m.Mutate(seed);
    absl::Status s;
    try {
      s = ApplyYaml(text, c);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << i << " threw " << e.what() << " for:\n" << text;
      continue;
    }
    if (s.ok()) {
      ++applied;
    } else {
      ++refused;
      EXPECT_THAT(s, StatusIs(kInvalid)) << "iteration " << i << ":\n" << text;
      EXPECT_FALSE(s.message().empty()) << "iteration " << i;
    }
  }
  EXPECT_GT(applied, 100);
  EXPECT_GT(refused, 100);
}

TEST(Yaml, ErrorsNameTheKey) {
  DaemonConfig c = Base();
  EXPECT_THAT(ApplyYaml("dram:\n  capacty: 1GiB\n", c),
              StatusIs(kInvalid, HasSubstr("dram.capacty: unknown key")));
  EXPECT_THAT(ApplyYaml("colour: blue\n", c), StatusIs(kInvalid, HasSubstr("colour")));
  EXPECT_THAT(ApplyYaml("dram:\n  capacity: many\n", c),
              StatusIs(kInvalid, HasSubstr("dram.capacity")));
  EXPECT_THAT(ApplyYaml("listen:\n  shared_memory: perhaps\n", c),
              StatusIs(kInvalid, HasSubstr("listen.shared_memory")));
  EXPECT_THAT(ApplyYaml("limits:\n  lease_seconds: -3\n", c),
              StatusIs(kInvalid, HasSubstr("limits.lease_seconds")));
  EXPECT_THAT(ApplyYaml("listen:\n  unix_socket_mode: \"0999\"\n", c),
              StatusIs(kInvalid, HasSubstr("listen.unix_socket_mode")));
  EXPECT_THAT(ApplyYaml("auth:\n  tenants:\n    - name: a\n      tokn: x\n", c),
              StatusIs(kInvalid, HasSubstr("auth.tenants[0].tokn")));
  EXPECT_THAT(ApplyYaml("auth:\n  tenants:\n    - name: a\n      token_file: /nonexistent/t\n", c),
              StatusIs(kInvalid, HasSubstr("auth.tenants[0].token_file")));
  EXPECT_THAT(ApplyYaml("dram: [1, 2\n", c), StatusIs(kInvalid, HasSubstr("line")));
  EXPECT_THAT(ApplyYaml("dram:\n  capacity: [1]\n", c),
              StatusIs(kInvalid, HasSubstr("dram.capacity: must be a single value")));
}

TEST(Validate, RejectsUnsafeOrBrokenSettings) {
  {
    DaemonConfig c = Base();
    c.tcp = "127.0.0.1:7000";
    EXPECT_THAT(c.Validate(),
                StatusIs(kInvalid, HasSubstr("listen.tcp: TCP needs authentication")));
    c.admin_token = "admin-token-0123456789";
    EXPECT_OK(c.Validate());
    c.tcp = "0.0.0.0:7000";
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("not a loopback address")));
    c.allow_insecure_tcp = true;
    EXPECT_OK(c.Validate());
    c.tcp = "localhost";
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("listen.tcp")));
  }
  {
    DaemonConfig c = Base();
    c.admin_token = "short";
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("auth.admin_token")));
  }
  {
    DaemonConfig c = Base();
    c.tenants.push_back({"a", "tenant-token-0123456789", {}, {}, false});
    c.tenants.push_back({"a", "tenant-token-9876543210", {}, {}, false});
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("auth.tenants[1].name")));
    c.tenants[1].name = "b";
    c.tenants[1].token = c.tenants[0].token;
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("auth.tenants[1].token")));
  }
  {
    DaemonConfig c = Base();
    c.tls.cert_file = "/nonexistent/cert.pem";
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("tls.")));
  }
  {
    DaemonConfig c = Base();
    c.tls.require_client_cert = true;
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("tls.require_client_cert")));
  }
  {
    DaemonConfig c = Base();
    c.dram.slab_bytes = 3 << 20;  // not a multiple of 2 MiB
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("dram: ")));
  }
  {
    DaemonConfig c = Base();
    c.max_grpc_message_bytes = c.max_message_bytes;
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("limits.max_grpc_message_bytes")));
  }
  {
    DaemonConfig c = Base();
    c.log_level = "chatty";
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("log.level")));
  }
  {
    DaemonConfig c = Base();
    c.unix_socket = "/tmp/" + std::string(120, 'x');
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("listen.unix_socket")));
  }
}

TEST(Layering, FlagsBeatEnvironmentBeatFile) {
  const std::string file = TempFile(
      "dram:\n  capacity: 1GiB\nlog:\n  level: warn\n"
      "listen:\n  http: 127.0.0.1:1111\n");
  ASSERT_OK_AND_ASSIGN(CommandLine cl, ParseCommandLine({"--config", file, "--dram=512MiB",
                                                         "--socket", "/tmp/kvtier-test/x.sock"}));
  std::map<std::string, std::string> env = {{"KVTIER_DRAM", "768MiB"},
                                            {"KVTIER_LOG_LEVEL", "error"}};
  ASSERT_OK_AND_ASSIGN(DaemonConfig c, LoadConfig(cl, env));
  EXPECT_EQ(c.dram.dram_capacity_bytes, 512ull << 20);  // flag
  EXPECT_EQ(c.log_level, "error");                      // env over file
  EXPECT_EQ(c.http, "127.0.0.1:1111");                  // file
  EXPECT_EQ(c.unix_socket, "/tmp/kvtier-test/x.sock");
  std::remove(file.c_str());
}

TEST(Layering, DefaultsFillTheRest) {
  ASSERT_OK_AND_ASSIGN(CommandLine cl, ParseCommandLine({}));
  ASSERT_OK_AND_ASSIGN(DaemonConfig c, LoadConfig(cl, {{"XDG_RUNTIME_DIR", "/run/user/7"}}));
  EXPECT_EQ(c.unix_socket, "/run/user/7/kvtier/kvtierd.sock");
  EXPECT_EQ(c.dram.dram_capacity_bytes, DefaultDramBytes());
  EXPECT_LE(c.dram.dram_capacity_bytes, 16ull << 30);
  EXPECT_EQ(c.dram.dram_capacity_bytes % (64ull << 20), 0u);
  EXPECT_TRUE(c.tcp.empty());
  EXPECT_TRUE(c.open_mode());

  ASSERT_OK_AND_ASSIGN(CommandLine cl2, ParseCommandLine({"--data-dir", "/tmp/kvtier-dd"}));
  ASSERT_OK_AND_ASSIGN(DaemonConfig c2, LoadConfig(cl2, {}));
  EXPECT_EQ(c2.unix_socket, "/tmp/kvtier-dd/kvtierd.sock");
}

TEST(Layering, BarePortsBindLoopback) {
  ASSERT_OK_AND_ASSIGN(CommandLine cl, ParseCommandLine({"--tcp", ":7001", "--http", "9999",
                                                         "--socket", "/tmp/kvtier-test/x.sock"}));
  ASSERT_OK_AND_ASSIGN(DaemonConfig c,
                       LoadConfig(cl, {{"KVTIER_ADMIN_TOKEN", "admin-token-0123456789"}}));
  EXPECT_EQ(c.tcp, "127.0.0.1:7001");
  EXPECT_EQ(c.http, "127.0.0.1:9999");
}

TEST(Layering, BadFlagsAndVariablesAreNamed) {
  EXPECT_THAT(ParseCommandLine({"--colour", "blue"}), StatusIs(kInvalid, HasSubstr("--colour")));
  EXPECT_THAT(ParseCommandLine({"--dram"}), StatusIs(kInvalid, HasSubstr("--dram: needs a value")));
  EXPECT_THAT(ParseCommandLine({"stray"}), StatusIs(kInvalid, HasSubstr("stray")));
  ASSERT_OK_AND_ASSIGN(CommandLine cl, ParseCommandLine({"--lease-seconds", "0"}));
  EXPECT_THAT(LoadConfig(cl, {}), StatusIs(kInvalid, HasSubstr("--lease-seconds")));
  ASSERT_OK_AND_ASSIGN(CommandLine none, ParseCommandLine({}));
  EXPECT_THAT(LoadConfig(none, {{"KVTIER_SHARED_MEMORY", "sometimes"}}),
              StatusIs(kInvalid, HasSubstr("KVTIER_SHARED_MEMORY")));
  EXPECT_THAT(LoadConfig(none, {{"KVTIER_CONFIG", "/nonexistent/kvtierd.yaml"}}),
              StatusIs(kInvalid, HasSubstr("/nonexistent/kvtierd.yaml")));
}

TEST(Redaction, TokensNeverAppear) {
  DaemonConfig c = Base();
  c.admin_token = "admin-secret-0123456789";
  c.tenants.push_back({"a", "tenant-secret-0123456789", {"s"}, {}, true});
  std::string yaml = c.ToRedactedYaml();
  EXPECT_THAT(yaml, ::testing::Not(HasSubstr("secret")));
  EXPECT_THAT(yaml, HasSubstr("<redacted>"));
  // The redacted YAML is itself a valid config file (tokens aside).
  DaemonConfig back = Base();
  ASSERT_OK(ApplyYaml(yaml, back));
  EXPECT_EQ(back.tenants.size(), 1u);
  EXPECT_EQ(back.unix_socket, c.unix_socket);
}

TEST(StatusPageKeys, TokenAndGpuSeconds) {
  DaemonConfig c = Base();
  ASSERT_OK(ApplyYaml(R"(
listen:
  status_token: status-secret-0123456789
status:
  tokens_per_gpu_second: 2500.5
)",
                      c));
  EXPECT_EQ(c.status_token, "status-secret-0123456789");
  EXPECT_EQ(c.tokens_per_gpu_second, 2500.5);
  EXPECT_OK(c.Validate());
  EXPECT_THAT(c.ToRedactedYaml(), ::testing::Not(HasSubstr("status-secret")));
  EXPECT_THAT(c.ToRedactedYaml(), HasSubstr("tokens_per_gpu_second: 2500.5"));

  EXPECT_THAT(ApplyYaml("status:\n  tokens_per_gpu_second: 0\n", c),
              StatusIs(kInvalid, HasSubstr("status.tokens_per_gpu_second")));
  EXPECT_THAT(ApplyYaml("status:\n  tokens_per_gpu_secnd: 1\n", c),
              StatusIs(kInvalid, HasSubstr("status.tokens_per_gpu_secnd")));
  EXPECT_THAT(ApplyYaml("listen:\n  status_token: a\n  status_token_file: /nonexistent\n", c),
              StatusIs(kInvalid, HasSubstr("listen.status_token_file")));
  ASSERT_OK_AND_ASSIGN(CommandLine cl, ParseCommandLine({"--tokens-per-gpu-second", "-1"}));
  EXPECT_THAT(LoadConfig(cl, {}), StatusIs(kInvalid, HasSubstr("--tokens-per-gpu-second")));
  ASSERT_OK_AND_ASSIGN(CommandLine none, ParseCommandLine({}));
  ASSERT_OK_AND_ASSIGN(
      DaemonConfig from_env,
      LoadConfig(none, {{"KVTIER_STATUS_TOKEN", "env-token-0123456789"}, {"KVTIER_NVME", "off"}}));
  EXPECT_EQ(from_env.status_token, "env-token-0123456789");
}

TEST(Cluster, NodeIdAndClusterSectionFromEveryLayer) {
  DaemonConfig c = Base();
  ASSERT_OK(
      ApplyYaml("node_id: n1\ncluster:\n  nats_url: nats://127.0.0.1:4222\n"
                "  heartbeat_interval_ms: 250\n  index_address: 127.0.0.1:7070\n"
                "  stream_max_bytes: 64MiB\n",
                c));
  EXPECT_EQ(c.node_id, "n1");
  EXPECT_TRUE(c.cluster.enabled());
  EXPECT_EQ(c.cluster.heartbeat_interval_ms, 250u);
  EXPECT_EQ(c.cluster.stream_max_bytes, 64ull << 20);
  ASSERT_OK(ApplyEnv({{"KVTIER_NODE_ID", "n2"}}, c));
  EXPECT_EQ(c.node_id, "n2");
  ASSERT_OK_AND_ASSIGN(CommandLine cl,
                       ParseCommandLine({"--node-id", "n3", "--nats", "nats://10.0.0.1:4222"}));
  ASSERT_OK(ApplyFlags(cl, c));
  EXPECT_EQ(c.node_id, "n3");
  EXPECT_EQ(c.cluster.nats_url, "nats://10.0.0.1:4222");
  ASSERT_OK(c.Validate());
  c.node_id = "bad id";
  EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("node_id")));
  EXPECT_THAT(ApplyYaml("cluster:\n  heartbeat_interval_ms: 0\n", c),
              StatusIs(kInvalid, HasSubstr("cluster.heartbeat_interval_ms")));
  EXPECT_THAT(ApplyYaml("cluster:\n  natsurl: x\n", c), StatusIs(kInvalid, HasSubstr("natsurl")));
  DaemonConfig single = Base();
  single.cluster.index_address = "127.0.0.1:7070";
  EXPECT_THAT(single.Validate(), StatusIs(kInvalid, HasSubstr("cluster.index_address")));
}

TEST(Cluster, NatsAndIndexCredentialsFromEveryLayer) {
  const std::string ca = TempFile("-");
  const std::string index_token = TempFile("index-token-0123456789\n");
  const std::string nats_token = TempFile(" nats-token-0123456789 ");
  DaemonConfig c = Base();
  c.node_id = "n1";
  ASSERT_OK(ApplyYaml(absl::StrCat("cluster:\n  nats_url: tls://127.0.0.1:4222\n"
                                   "  nats_token_file: ",
                                   nats_token, "\n  nats_ca_file: ", ca,
                                   "\n  nats_tls_name: nats.kvtier.svc\n"
                                   "  index_address: 127.0.0.1:7070\n  index_token_file: ",
                                   index_token, "\n  index_ca_file: ", ca,
                                   "\n  index_tls_name: kvtier-index.kvtier.svc\n"),
                      c));
  EXPECT_EQ(c.cluster.nats_token, "nats-token-0123456789");
  EXPECT_EQ(c.cluster.index_token, "index-token-0123456789");
  EXPECT_EQ(c.cluster.index_tls_name, "kvtier-index.kvtier.svc");
  const index::NatsBusOptions nats = c.cluster.NatsOptions();
  EXPECT_EQ(nats.url, "tls://127.0.0.1:4222");
  EXPECT_EQ(nats.token, "nats-token-0123456789");
  EXPECT_EQ(nats.ca_file, ca);
  EXPECT_EQ(nats.tls_name, "nats.kvtier.svc");
  ASSERT_OK(c.Validate());
  const std::string yaml = c.ToRedactedYaml();
  EXPECT_THAT(yaml, ::testing::Not(HasSubstr("token-0123456789")));
  EXPECT_THAT(yaml, HasSubstr(ca));

  // The environment and flags.
  ASSERT_OK(ApplyEnv({{"KVTIER_INDEX_TOKEN", "index-token-from-env-0123"},
                      {"KVTIER_NATS_TOKEN", "nats-token-from-env-0123"}},
                     c));
  EXPECT_EQ(c.cluster.index_token, "index-token-from-env-0123");
  EXPECT_EQ(c.cluster.nats_token, "nats-token-from-env-0123");
  ASSERT_OK_AND_ASSIGN(CommandLine cl, ParseCommandLine({"--index-token-file", index_token,
                                                         "--nats-token-file", nats_token}));
  ASSERT_OK(ApplyFlags(cl, c));
  EXPECT_EQ(c.cluster.index_token, "index-token-0123456789");
  EXPECT_EQ(c.cluster.nats_token, "nats-token-0123456789");

  // Broken combinations name the key.
  DaemonConfig bad = c;
  bad.cluster.index_address.clear();
  EXPECT_THAT(bad.Validate(), StatusIs(kInvalid, HasSubstr("cluster.index_token")));
  bad = c;
  bad.cluster.index_ca_file = ca + ".missing";
  EXPECT_THAT(bad.Validate(), StatusIs(kInvalid, HasSubstr("cluster.index_ca_file: cannot read")));
  bad = c;
  bad.cluster.index_ca_file.clear();
  EXPECT_THAT(bad.Validate(), StatusIs(kInvalid, HasSubstr("cluster.index_tls_name")));
  bad = c;
  bad.cluster.nats_user = "kvtier";
  bad.cluster.nats_password = "pw";
  EXPECT_THAT(bad.Validate(), StatusIs(kInvalid, HasSubstr("cluster.nats_token: set a token")));
  bad = c;
  bad.cluster.nats_ca_file = ca + ".missing";
  EXPECT_THAT(bad.Validate(), StatusIs(kInvalid, HasSubstr(".missing")));
  bad = c;
  bad.cluster.nats_token.clear();
  bad.cluster.nats_url = "tls://kvtier:url-password-0123@127.0.0.1:4222";
  ASSERT_OK(bad.Validate());
  EXPECT_THAT(bad.ToRedactedYaml(), ::testing::Not(HasSubstr("url-password-0123")));
  EXPECT_THAT(bad.ToRedactedYaml(), HasSubstr("tls://***@127.0.0.1:4222"));
  EXPECT_THAT(ApplyYaml("cluster:\n  index_token_file: /nonexistent/token\n", bad),
              StatusIs(kInvalid, HasSubstr("cluster.index_token_file")));
  const std::string blank = TempFile(" \n");
  EXPECT_THAT(ApplyYaml(absl::StrCat("cluster:\n  index_token_file: ", blank, "\n"), bad),
              StatusIs(kInvalid, HasSubstr("is empty")))
      << "an empty file must not turn the token off";
  std::remove(blank.c_str());
  for (const std::string& f : {ca, index_token, nats_token}) std::remove(f.c_str());
}

TEST(Yaml, TlsReloadInterval) {
  DaemonConfig c = Base();
  EXPECT_EQ(c.tls.reload_seconds, 60u);
  ASSERT_OK(ApplyYaml("tls:\n  reload_seconds: 5\n", c));
  EXPECT_EQ(c.tls.reload_seconds, 5u);
  EXPECT_THAT(ApplyYaml("tls:\n  reload_seconds: 0\n", c),
              StatusIs(kInvalid, HasSubstr("tls.reload_seconds")));
  EXPECT_THAT(c.ToRedactedYaml(), HasSubstr("reload_seconds: 5"));
}

TEST(Cluster, NodeIdDefaultsToTheHostName) {
  ASSERT_OK_AND_ASSIGN(CommandLine cl, ParseCommandLine({"--dram", "256MiB", "--nvme", "off"}));
  ASSERT_OK_AND_ASSIGN(DaemonConfig c, LoadConfig(cl, {}));
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(c.node_id, host);
  EXPECT_FALSE(c.cluster.enabled());
}

TEST(Blob, SectionFlagsAndEnvironmentConfigureTheTier) {
  const std::string key_file = TempFile("  c2VjcmV0LWtleQ==\n");
  DaemonConfig c = Base();
  ASSERT_OK(ApplyYaml(absl::StrCat("blob:\n  endpoint: http://127.0.0.1:10000/devstoreaccount1\n"
                                   "  account: devstoreaccount1\n  container: kvtier\n"
                                   "  prefix: cluster-a\n  key_file: ",
                                   key_file,
                                   "\n  policy: always\n  probe: true\n  queue_chunks: 64\n"
                                   "  queue_bytes: 32MiB\n  deadline_ms: 250\n"
                                   "  request_timeout_ms: 100\n  max_attempts: 3\n"
                                   "  capacity: 2GiB\n"),
                      c));
  const BlobCacheOptions& b = c.dram.blob;
  EXPECT_TRUE(b.enabled());
  EXPECT_EQ(b.container, "kvtier");
  EXPECT_EQ(b.prefix, "cluster-a");
  EXPECT_EQ(b.shared_key, "c2VjcmV0LWtleQ==");  // read from the file, trimmed
  EXPECT_EQ(b.policy, "always");
  EXPECT_TRUE(b.probe);
  EXPECT_EQ(b.queue_chunks, 64u);
  EXPECT_EQ(b.queue_bytes, 32ull << 20);
  EXPECT_EQ(b.deadline_ms, 250u);
  EXPECT_EQ(b.max_attempts, 3u);
  EXPECT_EQ(b.capacity_bytes, 2ull << 30);
  ASSERT_OK(c.Validate());
  const std::string yaml = c.ToRedactedYaml();
  EXPECT_THAT(yaml, ::testing::Not(HasSubstr("c2VjcmV0")));
  EXPECT_THAT(yaml, HasSubstr("policy: always"));
  EXPECT_THAT(yaml, HasSubstr("capacity: 2147483648"));
  EXPECT_THAT(ApplyYaml("blob:\n  capacity: lots\n", c),
              StatusIs(kInvalid, HasSubstr("blob.capacity")));

  EXPECT_THAT(ApplyYaml("blob:\n  colour: blue\n", c),
              StatusIs(kInvalid, HasSubstr("blob.colour")));
  DaemonConfig bad = c;
  bad.dram.blob.policy = "sometimes";
  EXPECT_THAT(bad.Validate(), StatusIs(kInvalid, HasSubstr("blob.policy")));
  bad = c;
  bad.dram.blob.sas = "sv=1";
  EXPECT_THAT(bad.Validate(), StatusIs(kInvalid, HasSubstr("blob.key")));

  ASSERT_OK_AND_ASSIGN(
      CommandLine cl,
      ParseCommandLine({"--blob-endpoint", "https://acct.blob.core.windows.net", "--blob-account",
                        "acct", "--blob-container", "kvc", "--blob-key-file", key_file,
                        "--blob-probe", "true", "--blob-capacity", "10GiB", "--socket",
                        "/tmp/kvtier-test/x.sock", "--nvme", "off"}));
  ASSERT_OK_AND_ASSIGN(DaemonConfig f, LoadConfig(cl, {{"KVTIER_BLOB_POLICY", "never"}}));
  EXPECT_EQ(f.dram.blob.endpoint, "https://acct.blob.core.windows.net");
  EXPECT_EQ(f.dram.blob.policy, "never");
  EXPECT_TRUE(f.dram.blob.probe);
  EXPECT_EQ(f.dram.blob.capacity_bytes, 10ull << 30);
  ASSERT_OK_AND_ASSIGN(DaemonConfig e, LoadConfig(cl, {{"KVTIER_BLOB_CAPACITY", "1TiB"}}));
  EXPECT_EQ(e.dram.blob.capacity_bytes, 10ull << 30) << "a flag wins over the environment";
  ASSERT_OK_AND_ASSIGN(CommandLine plain,
                       ParseCommandLine({"--socket", "/tmp/kvtier-test/x.sock", "--nvme", "off"}));
  ASSERT_OK_AND_ASSIGN(DaemonConfig v, LoadConfig(plain, {{"KVTIER_BLOB_CAPACITY", "1TiB"}}));
  EXPECT_EQ(v.dram.blob.capacity_bytes, 1ull << 40);
  std::remove(key_file.c_str());
}

TEST(Transfer, NodeIdPeersAndUcxFromYamlEnvAndFlags) {
  DaemonConfig c;
  ASSERT_OK(ApplyYaml(
      "node_id: node-b\npeers: [\"10.0.0.1:7311\", \"10.0.0.2:7311\"]\n"
      "listen: {tcp: \"127.0.0.1:7311\"}\nauth: {admin_token: admin-token-0123456789}\n"
      "ucx: {enabled: true, progress_threads: 2, lease_seconds: 5, lookup_timeout_ms: 50,\n"
      "      transfer_timeout_ms: 900, peer_token: peer-token-0123456789}\n",
      c));
  EXPECT_EQ(c.node_id, "node-b");
  EXPECT_EQ(c.peers, (std::vector<std::string>{"10.0.0.1:7311", "10.0.0.2:7311"}));
  EXPECT_TRUE(c.ucx.enabled);
  EXPECT_EQ(c.ucx.progress_threads, 2u);
  EXPECT_EQ(c.ucx.lease_seconds, 5u);
  EXPECT_EQ(c.ucx.lookup_timeout_ms, 50u);
  EXPECT_EQ(c.ucx.transfer_timeout_ms, 900u);
  EXPECT_EQ(c.ucx.peer_token, "peer-token-0123456789");
  c.unix_socket = "/tmp/kvtier-config-test.sock";
  EXPECT_OK(c.Validate());
  EXPECT_THAT(c.ToRedactedYaml(), ::testing::Not(HasSubstr("peer-token-0123456789")));
  ASSERT_OK(ApplyEnv({{"KVTIER_NODE_ID", "env-node"}, {"KVTIER_PEERS", "h:1"}}, c));
  EXPECT_EQ(c.node_id, "env-node");
  EXPECT_EQ(c.peers, (std::vector<std::string>{"h:1"}));
  ASSERT_OK_AND_ASSIGN(CommandLine cl, ParseCommandLine({"--node-id", "flag-node", "--ucx", "false",
                                                         "--peers", ""}));
  ASSERT_OK(ApplyFlags(cl, c));
  EXPECT_EQ(c.node_id, "flag-node");
  EXPECT_FALSE(c.ucx.enabled);
  EXPECT_TRUE(c.peers.empty());
}

TEST(Transfer, ValidateNamesTheKey) {
  DaemonConfig c;
  c.unix_socket = "/tmp/kvtier-config-test.sock";
  c.peers = {"10.0.0.1:7311"};
  EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("ucx.enabled")));
  c.ucx.enabled = true;
  c.node_id = "n";
  EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("listen.tcp")));
  c.tcp = "127.0.0.1:7311";
  c.admin_token = "admin-token-0123456789";
  c.peers = {"no-port"};
  EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("peers[0]")));
  DaemonConfig d;
  EXPECT_THAT(ApplyYaml("ucx: {progress_threads: 0}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.progress_threads")));
  EXPECT_THAT(ApplyYaml("ucx: {bogus: 1}\n", d), StatusIs(kInvalid, HasSubstr("ucx.bogus")));
}

TEST(Transfer, PeerServiceNeedsItsTokenWhenAuthIsOn) {
  DaemonConfig c;
  c.unix_socket = "/tmp/kvtier-config-test.sock";
  c.ucx.enabled = true;
  c.node_id = "n";
  c.tcp = "127.0.0.1:7311";
  c.admin_token = "admin-token-0123456789";
  EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("ucx.peer_token")));
  c.admin_token.clear();
  TenantConfig tenant;
  tenant.name = "a";
  tenant.token = "tenant-a-token-0123456789";
  c.tenants.push_back(tenant);
  EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("ucx.peer_token")));
  c.ucx.peer_token = "short";
  EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("at least 16")));
  // White space is not a token: the Peer service would take it for none.
  for (const char* blank : {" ", "\n"}) {
    c.ucx.peer_token = blank;
    EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("ucx.peer_token: holds no token")));
  }
  c.ucx.peer_token = "peer-token-0123456789";
  EXPECT_OK(c.Validate());
  c.status_token = " ";
  EXPECT_THAT(c.Validate(), StatusIs(kInvalid, HasSubstr("listen.status_token: holds no token")));

  const std::string file = TempFile("  from-a-file-0123456789\n");
  DaemonConfig f;
  ASSERT_OK(ApplyYaml(absl::StrCat("ucx: {peer_token_file: ", file, "}\n"), f));
  std::remove(file.c_str());
  EXPECT_EQ(f.ucx.peer_token, "from-a-file-0123456789");
  EXPECT_THAT(f.ToRedactedYaml(), ::testing::Not(HasSubstr("from-a-file")));
}

TEST(Transfer, BatchChunksAndBusyPoll) {
  DaemonConfig c;
  EXPECT_EQ(c.ucx.max_batch_chunks, 64u);
  EXPECT_EQ(c.ucx.busy_poll_us, 50);
  ASSERT_OK(ApplyYaml("ucx: {max_batch_chunks: 8, busy_poll_us: 0}\n", c));
  EXPECT_EQ(c.ucx.max_batch_chunks, 8u);
  EXPECT_EQ(c.ucx.busy_poll_us, 0);
  ASSERT_OK(ApplyYaml("ucx: {busy_poll_us: -1}\n", c));
  EXPECT_EQ(c.ucx.busy_poll_us, -1);
  ASSERT_OK(ApplyYaml("ucx: {busy_poll_us: 250}\n", c));
  EXPECT_EQ(c.ucx.busy_poll_us, 250);
  EXPECT_THAT(c.ToRedactedYaml(), HasSubstr("busy_poll_us: 250"));
  EXPECT_THAT(c.ToRedactedYaml(), HasSubstr("max_batch_chunks: 8"));
  DaemonConfig d;
  EXPECT_THAT(ApplyYaml("ucx: {max_batch_chunks: 0}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.max_batch_chunks")));
  EXPECT_THAT(ApplyYaml("ucx: {max_batch_chunks: 4097}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.max_batch_chunks")));
  EXPECT_THAT(ApplyYaml("ucx: {busy_poll_us: -2}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.busy_poll_us")));
  EXPECT_THAT(ApplyYaml("ucx: {busy_poll_us: 1000001}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.busy_poll_us")));
  EXPECT_EQ(d.ucx.max_batch_chunks, 64u);
  // Idle endpoints.
  EXPECT_EQ(d.ucx.idle_peer_seconds, 60u);
  ASSERT_OK(ApplyYaml("ucx: {idle_peer_seconds: 5}\n", d));
  EXPECT_EQ(d.ucx.idle_peer_seconds, 5u);
  // Copy helpers.
  EXPECT_EQ(d.ucx.copy_threads, -1);
  ASSERT_OK(ApplyYaml("ucx: {copy_threads: 0}\n", d));
  EXPECT_EQ(d.ucx.copy_threads, 0);
  ASSERT_OK(ApplyYaml("ucx: {copy_threads: 8}\n", d));
  EXPECT_EQ(d.ucx.copy_threads, 8);
  EXPECT_THAT(d.ToRedactedYaml(), HasSubstr("copy_threads: 8"));
  ASSERT_OK(ApplyYaml("ucx: {copy_threads: -1}\n", d));
  EXPECT_EQ(d.ucx.copy_threads, -1);
  EXPECT_THAT(ApplyYaml("ucx: {copy_threads: 65}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.copy_threads")));
  EXPECT_THAT(ApplyYaml("ucx: {copy_threads: -2}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.copy_threads")));
  EXPECT_EQ(d.ucx.copy_threads, -1);
  EXPECT_THAT(d.ToRedactedYaml(), HasSubstr("idle_peer_seconds: 5"));
  EXPECT_THAT(ApplyYaml("ucx: {idle_peer_seconds: 0}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.idle_peer_seconds")));
  EXPECT_THAT(ApplyYaml("ucx: {idle_peer_seconds: 86401}\n", d),
              StatusIs(kInvalid, HasSubstr("ucx.idle_peer_seconds")));
  EXPECT_EQ(d.ucx.idle_peer_seconds, 5u);
}

}  // namespace
}  // namespace kvtier::server
