// Trace replay through a running kvtierd: the library call against a real
// daemon (its DRAM, its policy) beside the tail-first simulator, and
// `kvtier bench replay --socket` end to end, errors included.
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/client.h"
#include "nlohmann/json.hpp"
#include "src/core/eviction.h"
#include "src/core/replay/cache_replay.h"
#include "src/core/replay/sim.h"
#include "tests/integration/daemon_harness.h"
#include "tests/testing/replay_traces.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::testing {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;

// One 2 MiB slab of DRAM: 512 chunks of the replay's 4 KiB slots; no NVMe.
std::vector<std::string> OneSlab(const std::string& policy = "lru") {
  return {"--dram", "2MiB", "--slab", "2MiB", "--nvme", "off", "--eviction-policy", policy};
}

std::unique_ptr<Client> Connect(const Daemon& daemon) {
  ClientOptions o;
  o.socket_path = daemon.socket();
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

replay::DaemonReplayOptions Salted(const std::string& salt) {
  replay::DaemonReplayOptions o;
  o.salt = salt;
  return o;
}

// Known hits: r2 shares two leading blocks with r1, r3 repeats r1. A second
// run under another salt starts from nothing although the first run's
// chunks are still in the daemon.
TEST(ReplayThroughDaemon, CountsLeadingHitsAndIgnoresEarlierRuns) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, OneSlab()));
  std::unique_ptr<Client> client = Connect(*daemon);
  ASSERT_NE(client, nullptr);
  const auto t = Trace({{1, 2, 3}, {1, 2, 4}, {1, 2, 3}});
  for (const char* salt : {"run-a", "run-b"}) {
    ASSERT_OK_AND_ASSIGN(replay::CacheReplayResult r,
                         replay::ReplayThroughDaemon(t, *client, Salted(salt)));
    EXPECT_EQ(r.requests, 3u) << salt;
    EXPECT_EQ(r.total_blocks, 9u) << salt;
    EXPECT_EQ(r.hit_blocks, 5u) << salt;  // 0 + 2 + 3
    EXPECT_EQ(r.saved_chunks, 4u) << salt;
    EXPECT_EQ(r.lost_hits, 0u) << salt;
    EXPECT_EQ(r.bytes_read, 5u * r.geometry.payload_bytes) << salt;
  }
  // The same salt again finds the first run's chunks: all 9 blocks hit.
  ASSERT_OK_AND_ASSIGN(replay::CacheReplayResult again,
                       replay::ReplayThroughDaemon(t, *client, Salted("run-a")));
  EXPECT_EQ(again.hit_blocks, 9u);
}

// The daemon's DRAM evicts as the embedded cache does: block for block what
// the tail-first simulator gets at the same number of chunks, for the
// policy the daemon runs.
TEST(ReplayThroughDaemon, MatchesTheTailFirstSimulator) {
  const auto t = GeneratedTrace(1500, 11);
  for (const char* policy : {"lru", "2q-chain"}) {
    TempDir dir;
    ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, OneSlab(policy)));
    std::unique_ptr<Client> client = Connect(*daemon);
    ASSERT_NE(client, nullptr);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<EvictionPolicy> p, NewEvictionPolicy(policy));
    ASSERT_OK_AND_ASSIGN(replay::ReplayResult sim, replay::ReplayTailFirst(t, 512, *p));
    ASSERT_OK_AND_ASSIGN(replay::CacheReplayResult r,
                         replay::ReplayThroughDaemon(t, *client, Salted(policy)));
    EXPECT_EQ(r.total_blocks, sim.total_blocks) << policy;
    EXPECT_EQ(r.hit_blocks, sim.hit_blocks) << policy;
    EXPECT_EQ(r.evictions, sim.evicted_blocks) << policy;
    EXPECT_GT(r.evictions, 0u) << "the trace must overflow the slab";
  }
}

class ReplayCli : public ::testing::Test {
 protected:
  // Runs `kvtier bench replay ARGS`; returns the exit code, output in `out`.
  int Run(const std::string& args, std::string* out) {
    const std::string file = dir_.File("out.txt");
    const int rc =
        std::system(absl::StrCat(CliPath(), " bench replay ", args, " > ", file, " 2>&1").c_str());
    std::ifstream f(file);
    *out = std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return rc;
  }

  // A trace file of `requests`, JSON Lines as published.
  std::string TraceFile(const std::vector<replay::TraceRequest>& requests) {
    std::string text;
    for (const replay::TraceRequest& r : requests) {
      json line = {{"timestamp", r.timestamp_ms},
                   {"input_length", r.input_length},
                   {"output_length", 1},
                   {"hash_ids", r.hash_ids}};
      absl::StrAppend(&text, line.dump(), "\n");
    }
    return dir_.Write("trace.jsonl", text);
  }

  TempDir dir_;
};

// The command reads the daemon's policy and slab from its configuration
// with the admin token, replays, and reports beside the simulators. A
// tenant's token cannot read the configuration: the flags say what the
// daemon runs, and a tenant limited to salts names its own.
TEST_F(ReplayCli, ReplaysThroughKvtierdAndReportsBesideTheSimulators) {
  constexpr const char* kAdmin = "replay-admin-token-0123456789";
  constexpr const char* kTenant = "replay-tenant-token-0123456789";
  const std::string config =
      dir_.Write("kvtierd.yaml", absl::StrCat("auth:\n  admin_token: ", kAdmin,
                                              "\n  tenants:\n    - name: t\n      token: ", kTenant,
                                              "\n      cache_salts: [salt-t]\n"));
  const std::string admin_file = dir_.Write("admin.token", kAdmin);
  const std::string tenant_file = dir_.Write("tenant.token", kTenant);
  std::vector<std::string> flags = OneSlab("2q-chain");
  flags.insert(flags.end(), {"--config", config});
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir_, flags));
  const auto t = GeneratedTrace(400, 7);
  const std::string trace = TraceFile(t);
  ASSERT_OK_AND_ASSIGN(replay::ReplayResult unbounded, replay::ReplayUnbounded(t));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EvictionPolicy> p, NewEvictionPolicy("2q-chain"));
  ASSERT_OK_AND_ASSIGN(replay::ReplayResult sim, replay::ReplayTailFirst(t, 512, *p));
  ASSERT_OK_AND_ASSIGN(replay::ReplayResult lru, replay::ReplayLru(t, 512));

  std::string out;
  const std::string bare = absl::StrCat("--trace ", trace, " --socket ", daemon->socket());
  const std::string admin = absl::StrCat(bare, " --token-file ", admin_file);
  ASSERT_EQ(Run(admin + " --json", &out), 0) << out;
  const json j = json::parse(out.substr(out.find('{')));
  EXPECT_EQ(j["mode"], "kvtierd");
  EXPECT_EQ(j["kvtierd"]["policy"], "2q-chain");
  EXPECT_EQ(j["kvtierd"]["slab_bytes"], 2u << 20);
  EXPECT_EQ(j["kvtierd"]["configuration_read"], true);
  EXPECT_EQ(j["kvtierd"]["dram_tokens_assumed"], 512u * 512);
  EXPECT_EQ(j["result"]["hit_blocks"], sim.hit_blocks);
  EXPECT_EQ(j["result"]["total_blocks"], sim.total_blocks);
  EXPECT_NEAR(j["reference"]["unbounded"].get<double>(), unbounded.HitRate(), 1e-6);
  EXPECT_NEAR(j["reference"]["lru"].get<double>(), lru.HitRate(), 1e-6);
  EXPECT_NEAR(j["ratios"]["vs_simulator"].get<double>(), 1.0, 1e-6);

  // The table (a second run, in a namespace of its own).
  ASSERT_EQ(Run(admin, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("2q-chain (kvtierd)"));
  EXPECT_THAT(out, HasSubstr(absl::StrFormat("unbounded %.4f", unbounded.HitRate())));

  // The tenant: its salt, and the policy and slab given.
  const std::string tenant = absl::StrCat(bare, " --token-file ", tenant_file);
  ASSERT_EQ(Run(tenant + " --salt salt-t --policy 2q-chain --slab 2MiB --json", &out), 0) << out;
  const json tj = json::parse(out.substr(out.find('{')));
  EXPECT_EQ(tj["kvtierd"]["configuration_read"], false);
  EXPECT_EQ(tj["kvtierd"]["policy"], "2q-chain");
  EXPECT_EQ(tj["kvtierd"]["namespace_salt"], "salt-t");
  EXPECT_EQ(tj["kvtierd"]["dram_tokens_assumed"], 512u * 512);
  EXPECT_EQ(tj["result"]["total_blocks"], sim.total_blocks);
  // Without --slab the default 64 MiB slab is assumed, and the daemon's
  // 2 MiB hold none; --dram-tokens then gives the capacity.
  EXPECT_NE(Run(tenant + " --salt salt-t", &out), 0);
  EXPECT_THAT(out, HasSubstr("no whole 64 MiB slab (assumed; --slab sets it)"));
  ASSERT_EQ(Run(tenant + " --salt salt-t --dram-tokens 200K", &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("assumed: policy lru, 64 MiB slabs"));
  EXPECT_THAT(out, HasSubstr("200K tokens"));

  // Refused: no token, a salt not the tenant's, a policy the daemon does
  // not run, embedded-only flags.
  EXPECT_NE(Run(bare, &out), 0);
  EXPECT_THAT(out, HasSubstr("needs a bearer token"));
  EXPECT_NE(Run(tenant + " --slab 2MiB", &out), 0) << "a fresh salt is not the tenant's";
  EXPECT_THAT(out, HasSubstr("PERMISSION_DENIED"));
  EXPECT_NE(Run(admin + " --policy lru", &out), 0);
  EXPECT_THAT(out, HasSubstr("runs 2q-chain"));
  EXPECT_NE(Run(admin + " --slab 64MiB", &out), 0);
  EXPECT_THAT(out, HasSubstr("uses slabs of 2097152 bytes"));
  for (const char* embedded_only :
       {" --nvme-tokens 50M", " --nvme-io-mode buffered", " --no-wait-demotions", " --curve 1M"}) {
    EXPECT_NE(Run(admin + embedded_only, &out), 0) << embedded_only;
    EXPECT_THAT(out, HasSubstr("the tiers are the daemon's")) << embedded_only;
  }
  EXPECT_NE(Run(admin + " --dram-tokens 100", &out), 0);
  EXPECT_THAT(out, HasSubstr("--dram-tokens: 100 is less than one 512-token chunk"));
  // Without --socket the replay is embedded, and the daemon's flags are refused.
  EXPECT_NE(Run(absl::StrCat("--trace ", trace, " --salt salt-t"), &out), 0);
  EXPECT_THAT(out, HasSubstr("name it with --socket or --address"));
}

// A socket nobody serves is named in the error.
TEST_F(ReplayCli, AnAbsentDaemonIsAClearError) {
  const std::string trace = TraceFile(Trace({{1, 2}}));
  std::string out;
  EXPECT_NE(Run(absl::StrCat("--trace ", trace, " --socket ", dir_.File("none.sock")), &out), 0);
  EXPECT_THAT(out, HasSubstr(absl::StrCat("kvtierd at ", dir_.File("none.sock"))));
  EXPECT_THAT(out, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace kvtier::testing
