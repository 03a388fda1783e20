// kvtierd's status page end to end: a real daemon under the demo workload,
// /api/v1/status read over HTTP and checked against /metrics, and the bearer
// token of a listener off loopback.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon_harness.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::testing {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;

struct Reply {
  int code = 0;
  std::string headers;
  std::string body;
};

// GET http://127.0.0.1:port/path with extra header lines.
absl::StatusOr<Reply> Get(int port, const std::string& path, const std::string& extra = "") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(errno)));
  }
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: localhost\r\n", extra, "\r\n");
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  Reply r;
  if (resp.size() > 12) r.code = std::atoi(resp.substr(9, 3).c_str());
  const size_t body = resp.find("\r\n\r\n");
  if (body != std::string::npos) {
    r.headers = resp.substr(0, body);
    r.body = resp.substr(body + 4);
  }
  return r;
}

// Samples of /metrics by series ("name{labels}" -> value).
std::map<std::string, double> ParseMetrics(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line.front() == '#') continue;
    const size_t sp = line.rfind(' ');
    double v = 0;
    if (sp != absl::string_view::npos && absl::SimpleAtod(line.substr(sp + 1), &v)) {
      out[std::string(line.substr(0, sp))] = v;
    }
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

TEST(StatusApi, AgreesWithMetricsUnderTheDemoWorkload) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, {"--tokens-per-gpu-second", "2048",
                                                        "--node-id", "node-under-test"}));
  const std::string out = dir.File("demo.txt");
  ASSERT_EQ(std::system(absl::StrCat(CliPath(), " demo --quiet --conversations 3 --turns 3",
                                     " --socket ", daemon->socket(), " > ", out, " 2>&1")
                            .c_str()),
            0)
      << ReadFile(out);

  // The page samples once a second: wait for a sample taken after the demo.
  ASSERT_OK_AND_ASSIGN(Reply first, Get(daemon->http_port(), "/api/v1/status"));
  ASSERT_EQ(first.code, 200) << first.body;
  const uint64_t seq0 = json::parse(first.body)["seq"].get<uint64_t>();
  json doc;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  do {
    absl::SleepFor(absl::Milliseconds(100));
    ASSERT_OK_AND_ASSIGN(Reply r, Get(daemon->http_port(), "/api/v1/status"));
    ASSERT_EQ(r.code, 200);
    EXPECT_THAT(r.headers, HasSubstr("Content-Type: application/json"));
    doc = json::parse(r.body);
  } while (doc["seq"].get<uint64_t>() < seq0 + 2 && absl::Now() < deadline);
  ASSERT_GE(doc["seq"].get<uint64_t>(), seq0 + 2);

  ASSERT_OK_AND_ASSIGN(Reply m, Get(daemon->http_port(), "/metrics"));
  const std::map<std::string, double> metrics = ParseMetrics(m.body);
  EXPECT_EQ(doc["service"], "kvtierd");
  EXPECT_EQ(doc["node"], "node-under-test");
  EXPECT_EQ(doc["ready"], true);
  EXPECT_EQ(doc["totals"]["lookups"].get<double>(), metrics.at("kvtier_lookups_total"));
  EXPECT_EQ(doc["totals"]["lookup_chunks"].get<double>(), metrics.at("kvtier_lookup_chunks_total"));
  EXPECT_EQ(doc["totals"]["lookup_hit_chunks"].get<double>(),
            metrics.at("kvtier_lookup_hit_chunks_total"));
  EXPECT_GT(doc["totals"]["lookup_hit_chunks"].get<double>(), 0);
  ASSERT_GE(doc["tiers"].size(), 2u);  // the harness gives kvtierd an NVMe tier
  for (const json& t : doc["tiers"]) {
    const std::string tier = t["tier"];
    const std::string l = absl::StrCat("{tier=\"", tier, "\"}");
    EXPECT_EQ(t["hits"].get<double>(), metrics.at("kvtier_hits_total" + l)) << tier;
    EXPECT_EQ(t["capacity_bytes"].get<double>(), metrics.at("kvtier_capacity_bytes" + l));
    EXPECT_EQ(t["used_bytes"].get<double>(), metrics.at("kvtier_resident_bytes" + l));
    EXPECT_EQ(t["evictions"].get<double>(), metrics.at("kvtier_evictions_total" + l));
    EXPECT_EQ(t["checksum_failures"].get<double>(),
              metrics.at("kvtier_checksum_failures_total" + l));
    EXPECT_EQ(
        t["bytes_read"].get<double>(),
        metrics.at(absl::StrCat("kvtier_bytes_total{direction=\"read\",tier=\"", tier, "\"}")));
  }
  EXPECT_EQ(doc["tiers"][0]["tier"], "dram");
  EXPECT_GT(doc["tiers"][0]["bytes_written"].get<double>(), 0);

  // The demo's one namespace, and the tokens it was served.
  ASSERT_EQ(doc["namespaces"].size(), 1u);
  const json& ns = doc["namespaces"][0];
  EXPECT_EQ(ns["model_id"], "kvtier-demo/tiny-chat");
  EXPECT_EQ(ns["lookup_chunks"], doc["totals"]["lookup_chunks"]);
  EXPECT_GT(ns["loaded_tokens"].get<uint64_t>(), 0u);
  EXPECT_GT(ns["saved_chunks"].get<uint64_t>(), 0u);
  EXPECT_EQ(doc["saved"]["prefill_tokens"], ns["loaded_tokens"]);
  EXPECT_DOUBLE_EQ(doc["saved"]["gpu_seconds"].get<double>(),
                   ns["loaded_tokens"].get<double>() / 2048.0);
  EXPECT_TRUE(doc["peers"].is_array());
  EXPECT_TRUE(doc["peers"].empty());

  // RPC counts: the JSON's totals are the sum of kvtier_rpc_requests_total.
  double rpcs = 0;
  for (const auto& [series, v] : metrics) {
    if (series.rfind("kvtier_rpc_requests_total{", 0) == 0) rpcs += v;
  }
  EXPECT_GE(rpcs, doc["totals"]["requests"].get<double>());  // /metrics read later
  EXPECT_GT(doc["totals"]["requests"].get<double>(), 0);
  double lookups = 0;
  for (const json& meth : doc["latency"]["methods"]) {
    if (meth["method"] == "Lookup") lookups = meth["count"].get<double>();
  }
  EXPECT_EQ(lookups, metrics.at("kvtier_rpc_duration_seconds_count{method=\"Lookup\"}"));
  EXPECT_TRUE(doc["history"]["time"].size() >= 2);

  // The page and its assets come from the daemon itself.
  ASSERT_OK_AND_ASSIGN(Reply page, Get(daemon->http_port(), "/"));
  EXPECT_EQ(page.code, 200);
  EXPECT_THAT(page.body, HasSubstr("<script src=\"/static/status.js\""));
  ASSERT_OK_AND_ASSIGN(Reply uplot, Get(daemon->http_port(), "/static/uPlot.iife.min.js"));
  EXPECT_EQ(uplot.code, 200);
  EXPECT_GT(uplot.body.size(), 10000u);
}

TEST(StatusApi, OffLoopbackTheTokenIsRequiredAndMetricsStayOpen) {
  TempDir dir;
  const std::string token = "status-token-0123456789abcdef";
  const std::string file = dir.Write("status.token", token + "\n");
  const int port = FreePort();
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, {"--http", absl::StrCat("0.0.0.0:", port),
                                                        "--status-token-file", file}));
  for (const char* path : {"/", "/api/v1/status"}) {
    ASSERT_OK_AND_ASSIGN(Reply none, Get(port, path));
    EXPECT_EQ(none.code, 401) << path;
    EXPECT_THAT(none.headers, HasSubstr("WWW-Authenticate: Bearer"));
    ASSERT_OK_AND_ASSIGN(Reply wrong, Get(port, path, "Authorization: Bearer nope\r\n"));
    EXPECT_EQ(wrong.code, 401) << path;
    ASSERT_OK_AND_ASSIGN(Reply ok,
                         Get(port, path, absl::StrCat("Authorization: Bearer ", token, "\r\n")));
    EXPECT_EQ(ok.code, 200) << path;
  }
  ASSERT_OK_AND_ASSIGN(Reply via_query, Get(port, absl::StrCat("/?token=", token)));
  EXPECT_EQ(via_query.code, 200);
  ASSERT_OK_AND_ASSIGN(Reply metrics, Get(port, "/metrics"));
  EXPECT_EQ(metrics.code, 200);
  ASSERT_OK_AND_ASSIGN(Reply ready, Get(port, "/readyz"));
  EXPECT_EQ(ready.code, 200);
  // The token never shows in the effective configuration.
  ASSERT_OK_AND_ASSIGN(int code, daemon->Stop());
  EXPECT_EQ(code, 0);
  EXPECT_THAT(daemon->process().Log(), ::testing::Not(HasSubstr(token)));

  // Off loopback without a token: the page is off, /metrics is not.
  TempDir dir2;
  const int port2 = FreePort();
  ASSERT_OK_AND_ASSIGN(auto open, Daemon::Start(dir2, {"--http", absl::StrCat("0.0.0.0:", port2)}));
  ASSERT_OK_AND_ASSIGN(Reply off, Get(port2, "/api/v1/status"));
  EXPECT_EQ(off.code, 403);
  EXPECT_THAT(off.body, HasSubstr("status_token"));
  ASSERT_OK_AND_ASSIGN(Reply m2, Get(port2, "/metrics"));
  EXPECT_EQ(m2.code, 200);
}

}  // namespace
}  // namespace kvtier::testing
