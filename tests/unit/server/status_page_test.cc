// The status page module: the JSON document built from snapshots, the
// derived rates and percentiles, access control and the built-in assets.
#include "src/server/status_page.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "src/server/http_server.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::server {
namespace {

using ::kvtier::testing::StatusIs;
using ::nlohmann::json;
using ::testing::HasSubstr;

Metrics::MethodLatency Latency(const std::string& method, std::vector<uint64_t> cumulative) {
  Metrics::MethodLatency l;
  l.method = method;
  l.upper_bounds = {0.001, 0.01, 0.1};
  l.bucket_counts = std::move(cumulative);
  l.count = l.bucket_counts.back();
  l.sum_seconds = 0.005 * static_cast<double>(l.count);
  return l;
}

// A provider whose figures the test sets between samples.
struct Feed {
  StatusSnapshot next;
  StatusPageOptions Options() {
    StatusPageOptions o;
    o.title = "unit";
    o.snapshot = [this] { return next; };
    o.start_sampler = false;
    o.tokens_per_gpu_second = 4000;
    return o;
  }
};

StatusSnapshot Base() {
  StatusSnapshot s;
  s.service = "kvtierd";
  s.node = "node-a";
  s.version = "9.9.9";
  s.start_time_seconds = 1000;
  s.ready = true;
  TierStats dram;
  dram.tier = Tier::kDram;
  dram.capacity_bytes = 1000;
  dram.used_bytes = 250;
  dram.chunks = 5;
  TierStats nvme;
  nvme.tier = Tier::kNvme;
  nvme.capacity_bytes = 4000;
  s.tiers = {dram, nvme};
  s.latencies = {Latency("Lookup", {0, 0, 0, 0}), Latency("Health", {0, 0, 0, 0})};
  return s;
}

TEST(HistogramQuantile, InterpolatesInsideTheBucketLikePrometheus) {
  const std::vector<double> bounds = {1, 2, 4};
  // 10 in (0,1], 10 in (1,2], 0 in (2,4], 0 above.
  EXPECT_DOUBLE_EQ(*HistogramQuantile(0.5, bounds, {10, 20, 20, 20}), 1.0);
  EXPECT_DOUBLE_EQ(*HistogramQuantile(0.75, bounds, {10, 20, 20, 20}), 1.5);
  EXPECT_DOUBLE_EQ(*HistogramQuantile(0.25, bounds, {10, 20, 20, 20}), 0.5);
  // Everything above the last bound: the largest finite bound.
  EXPECT_DOUBLE_EQ(*HistogramQuantile(0.99, bounds, {0, 0, 0, 7}), 4.0);
  EXPECT_FALSE(HistogramQuantile(0.5, bounds, {0, 0, 0, 0}).has_value());
  EXPECT_FALSE(HistogramQuantile(0.5, bounds, {1, 2}).has_value());
}

TEST(StatusPageOptions, ValidateNamesTheField) {
  StatusPageOptions o;
  EXPECT_THAT(o.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("snapshot")));
  o.snapshot = [] { return StatusSnapshot(); };
  EXPECT_OK(o.Validate());
  o.tokens_per_gpu_second = 0;
  EXPECT_THAT(o.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokens_per_gpu_second")));
  o.tokens_per_gpu_second = 1;
  o.history_samples = 1;
  EXPECT_THAT(o.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("history_samples")));
  o.history_samples = 10;
  o.sample_interval = absl::Milliseconds(1);
  EXPECT_THAT(o.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sample_interval")));
}

TEST(StatusPage, JsonCarriesTotalsRatesTiersNamespacesPeersAndSavings) {
  Feed feed;
  feed.next = Base();
  ASSERT_OK_AND_ASSIGN(auto page, StatusPage::Create(feed.Options()));

  // Second sample: traffic since the first.
  StatusSnapshot s = Base();
  s.lookups = 4;
  s.lookup_chunks = 10;
  s.lookup_hit_chunks = 8;
  s.tiers[0].bytes_read = 5000;
  s.tiers[0].bytes_written = 3000;
  s.tiers[0].used_bytes = 500;
  s.tiers[0].evictions = 2;
  s.tiers[1].corrupt_chunks = 1;
  s.requests_by_code = {{"OK", 20}, {"NOT_FOUND", 3}, {"UNAVAILABLE", 2}};
  // 10 Lookups: 5 under 1 ms, 5 in (1 ms, 10 ms]; 4 Health calls (ignored).
  s.latencies = {Latency("Lookup", {5, 10, 10, 10}), Latency("Health", {0, 0, 0, 4})};
  s.prefill_tokens_saved = 8000;
  NamespaceCounters ns;
  ns.id = "00000000000000ab";
  ns.model_id = "m";
  ns.salted = true;
  ns.lookup_chunks = 10;
  ns.lookup_hit_chunks = 8;
  ns.loaded_tokens = 8000;
  s.namespaces = {ns};
  s.peers = {StatusPeer{"node-b", "10.0.0.2:7000", "ucx-rdma", true, 10, 20}};
  feed.next = s;
  page->SampleNow();

  const json doc = json::parse(page->Json());
  EXPECT_EQ(doc["schema"], 1);
  EXPECT_EQ(doc["title"], "unit");
  EXPECT_EQ(doc["service"], "kvtierd");
  EXPECT_EQ(doc["node"], "node-a");
  EXPECT_EQ(doc["version"], "9.9.9");
  EXPECT_EQ(doc["ready"], true);
  EXPECT_EQ(doc["seq"], 2);
  EXPECT_EQ(doc["start_time"], 1000.0);
  EXPECT_GT(doc["uptime_seconds"].get<double>(), 0);

  EXPECT_EQ(doc["totals"]["lookups"], 4);
  EXPECT_DOUBLE_EQ(doc["totals"]["hit_rate"].get<double>(), 0.8);
  EXPECT_EQ(doc["totals"]["requests"], 25);
  EXPECT_EQ(doc["totals"]["errors"], 2);  // NOT_FOUND is an answer, not an error
  EXPECT_EQ(doc["totals"]["requests_by_code"]["UNAVAILABLE"], 2);
  EXPECT_EQ(doc["totals"]["evictions"], 2);
  EXPECT_EQ(doc["totals"]["checksum_failures"], 1);

  EXPECT_DOUBLE_EQ(doc["rates"]["hit_rate"].get<double>(), 0.8);
  EXPECT_GT(doc["rates"]["requests_per_second"].get<double>(), 0);
  EXPECT_GT(doc["rates"]["errors_per_second"].get<double>(), 0);
  EXPECT_GT(doc["rates"]["checksum_failures_per_second"].get<double>(), 0);

  // Percentiles of the Lookup interval only: half under 1 ms.
  EXPECT_DOUBLE_EQ(doc["latency"]["p50_seconds"].get<double>(), 0.001);
  EXPECT_NEAR(doc["latency"]["p99_seconds"].get<double>(), 0.001 + 0.009 * 0.98, 1e-12);
  ASSERT_EQ(doc["latency"]["methods"].size(), 2u);
  EXPECT_EQ(doc["latency"]["methods"][0]["method"], "Lookup");
  EXPECT_EQ(doc["latency"]["methods"][0]["count"], 10);
  EXPECT_TRUE(doc["latency"]["methods"][1]["p50_seconds"].is_number());  // Health, alone

  ASSERT_EQ(doc["tiers"].size(), 2u);
  EXPECT_EQ(doc["tiers"][0]["tier"], "dram");
  EXPECT_DOUBLE_EQ(doc["tiers"][0]["occupancy"].get<double>(), 0.5);
  EXPECT_EQ(doc["tiers"][0]["bytes_read"], 5000);
  EXPECT_GT(doc["tiers"][0]["read_bytes_per_second"].get<double>(), 0);
  EXPECT_EQ(doc["tiers"][1]["tier"], "nvme");
  EXPECT_EQ(doc["tiers"][1]["checksum_failures"], 1);
  EXPECT_EQ(doc["tiers"][1]["read_bytes_per_second"], 0.0);

  ASSERT_EQ(doc["namespaces"].size(), 1u);
  EXPECT_EQ(doc["namespaces"][0]["id"], "00000000000000ab");
  EXPECT_EQ(doc["namespaces"][0]["salted"], true);
  EXPECT_DOUBLE_EQ(doc["namespaces"][0]["hit_rate"].get<double>(), 0.8);
  ASSERT_EQ(doc["peers"].size(), 1u);
  EXPECT_EQ(doc["peers"][0]["transport"], "ucx-rdma");
  EXPECT_EQ(doc["peers"][0]["up"], true);

  EXPECT_EQ(doc["saved"]["prefill_tokens"], 8000);
  EXPECT_EQ(doc["saved"]["tokens_per_gpu_second"], 4000.0);
  EXPECT_DOUBLE_EQ(doc["saved"]["gpu_seconds"].get<double>(), 2.0);

  const json& h = doc["history"];
  ASSERT_EQ(h["time"].size(), 2u);
  EXPECT_TRUE(h["hit_rate"][0].is_null());  // no earlier sample to compare with
  EXPECT_DOUBLE_EQ(h["hit_rate"][1].get<double>(), 0.8);
  ASSERT_TRUE(h["tiers"].contains("dram"));
  EXPECT_EQ(h["tiers"]["dram"]["occupancy"].size(), 2u);
  EXPECT_DOUBLE_EQ(h["tiers"]["dram"]["occupancy"][0].get<double>(), 0.25);
  EXPECT_EQ(h["latency_p99_seconds"].size(), 2u);

  EXPECT_FALSE(json::parse(page->Json(false)).contains("history"));
}

TEST(StatusPage, CountersAreTheBinarysOwnFiguresByName) {
  Feed feed;
  feed.next = Base();
  ASSERT_OK_AND_ASSIGN(auto page, StatusPage::Create(feed.Options()));
  EXPECT_TRUE(json::parse(page->Json())["counters"].empty());
  feed.next.counters = {{"entries", 12}, {"malformed", 3}};
  page->SampleNow();
  const json doc = json::parse(page->Json());
  EXPECT_EQ(doc["counters"], json({{"entries", 12}, {"malformed", 3}}));
}

TEST(StatusPage, HistoryKeepsTheConfiguredNumberOfSamples) {
  Feed feed;
  feed.next = Base();
  StatusPageOptions o = feed.Options();
  o.history_samples = 3;
  ASSERT_OK_AND_ASSIGN(auto page, StatusPage::Create(o));
  for (int i = 0; i < 5; ++i) page->SampleNow();
  const json doc = json::parse(page->Json());
  EXPECT_EQ(doc["seq"], 6);
  EXPECT_EQ(doc["history"]["time"].size(), 3u);
}

TEST(StatusPage, ServesThePageAndAssetsAndLeavesOtherPaths) {
  Feed feed;
  feed.next = Base();
  ASSERT_OK_AND_ASSIGN(auto page, StatusPage::Create(feed.Options()));
  HttpRequest r;
  r.path = "/";
  std::optional<HttpResponse> html = page->Handle(r);
  ASSERT_TRUE(html.has_value());
  EXPECT_EQ(html->status, 200);
  EXPECT_THAT(html->content_type, HasSubstr("text/html"));
  EXPECT_THAT(html->body, HasSubstr("/static/uPlot.iife.min.js"));
  EXPECT_THAT(html->body, HasSubstr("/api/v1/status"));
  EXPECT_THAT(html->headers, ::testing::Contains(HasSubstr("default-src 'none'")));
  for (const char* asset : {"/static/uPlot.iife.min.js", "/static/uPlot.min.css",
                            "/static/status.js", "/static/status.css"}) {
    r.path = asset;
    std::optional<HttpResponse> a = page->Handle(r);
    ASSERT_TRUE(a.has_value()) << asset;
    EXPECT_EQ(a->status, 200) << asset;
    EXPECT_GT(a->body.size(), 500u) << asset;
  }
  r.path = "/static/uPlot.iife.min.js";
  EXPECT_THAT(page->Handle(r)->body, HasSubstr("uPlot"));
  r.path = "/static/nope.js";
  EXPECT_EQ(page->Handle(r)->status, 404);
  r.path = "/api/v1/status";
  std::optional<HttpResponse> api = page->Handle(r);
  EXPECT_EQ(api->content_type, "application/json");
  EXPECT_EQ(json::parse(api->body)["node"], "node-a");
  r.query = "history=0";
  EXPECT_FALSE(json::parse(page->Handle(r)->body).contains("history"));
  r.path = "/metrics";
  EXPECT_FALSE(page->Handle(r).has_value());
}

TEST(StatusPage, BearerTokenGuardsThePageAndTheApiButNotTheAssets) {
  Feed feed;
  feed.next = Base();
  StatusPageOptions o = feed.Options();
  o.bearer_token = "s3cret-token\nnext-s3cret-token";  // both accepted
  o.require_token = true;
  ASSERT_OK_AND_ASSIGN(auto page, StatusPage::Create(o));
  HttpRequest r;
  for (const char* path : {"/", "/api/v1/status"}) {
    r = HttpRequest();
    r.path = path;
    EXPECT_EQ(page->Handle(r)->status, 401) << path;
    r.headers["authorization"] = "Bearer wrong-token!";
    EXPECT_EQ(page->Handle(r)->status, 401) << path;
    r.headers["authorization"] = "Bearer s3cret-token";
    EXPECT_EQ(page->Handle(r)->status, 200) << path;
    r.headers["authorization"] = "bearer s3cret-token";
    EXPECT_EQ(page->Handle(r)->status, 200) << path;
    r.headers.clear();
    r.query = "token=s3cret-token";
    EXPECT_EQ(page->Handle(r)->status, 200) << path;
    r.query = "token=s3cret";
    EXPECT_EQ(page->Handle(r)->status, 401) << path;
    r.query.clear();
    r.headers["authorization"] = "Bearer next-s3cret-token";
    EXPECT_EQ(page->Handle(r)->status, 200) << path;
    r.headers["authorization"] = "Bearer s3cret-token\nnext-s3cret-token";
    EXPECT_EQ(page->Handle(r)->status, 401) << path;
  }
  r = HttpRequest();
  r.path = "/static/status.js";
  EXPECT_EQ(page->Handle(r)->status, 200);

  // The daemon sets the token while the page runs (a token file read
  // again): the page's copy of the options sees it.
  o.bearer_token.Set("rotated-s3cret-token");
  r = HttpRequest();
  r.path = "/api/v1/status";
  r.headers["authorization"] = "Bearer rotated-s3cret-token";
  EXPECT_EQ(page->Handle(r)->status, 200);
  r.headers["authorization"] = "Bearer s3cret-token";
  EXPECT_EQ(page->Handle(r)->status, 401);

  // Off loopback without a token: refused, with the reason.
  r.headers.clear();
  o.bearer_token = "";
  ASSERT_OK_AND_ASSIGN(auto closed, StatusPage::Create(o));
  r.path = "/api/v1/status";
  std::optional<HttpResponse> refused = closed->Handle(r);
  EXPECT_EQ(refused->status, 403);
  EXPECT_THAT(refused->body, HasSubstr("listen.status_token"));
}

TEST(HttpRequest, QueryParamsAreDecoded) {
  HttpRequest r;
  r.query = "a=1&token=x%2By+z&empty=&flag";
  EXPECT_EQ(r.QueryParam("a"), "1");
  EXPECT_EQ(r.QueryParam("token"), "x+y z");
  EXPECT_EQ(r.QueryParam("empty"), "");
  EXPECT_EQ(r.QueryParam("flag"), "");
  EXPECT_EQ(r.QueryParam("missing"), "");
}

}  // namespace
}  // namespace kvtier::server
