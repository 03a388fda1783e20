// `kvtier bench replay`: a request trace through the real embedded cache,
// beside the block simulators' unbounded and LRU hit rates on the same trace.
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "src/cli/bench.h"
#include "src/cli/report.h"
#include "src/common/temp_path.h"
#include "src/core/replay/cache_replay.h"
#include "src/core/replay/sim.h"
#include "src/core/replay/trace_reader.h"

namespace kvtier::cli {
namespace {

constexpr const char* kAllPolicies[] = {"lru", "2q", "2q-chain", "cost"};

std::string Tokens(uint64_t tokens) {
  if (tokens >= 1'000'000 && tokens % 100'000 == 0)
    return absl::StrCat(Fixed(tokens / 1e6, 1), "M");
  if (tokens >= 1'000 && tokens % 1'000 == 0) return absl::StrCat(tokens / 1'000, "K");
  return absl::StrCat(tokens);
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "kvtier bench replay: %s\n", message.c_str());
  return 1;
}

// The simulator figures for one capacity.
struct Reference {
  double lru = 0;                  // ReplayLru: the published reference
  double belady = 0;               // ReplayTailFirstBelady: what future knowledge reaches
  std::vector<double> tail_first;  // ReplayTailFirst, one per policy
};

absl::StatusOr<Reference> Simulate(const std::vector<replay::TraceRequest>& trace,
                                   const std::vector<std::string>& policies, uint64_t tokens) {
  Reference ref;
  const uint64_t blocks = replay::CapacityBlocks(tokens, replay::kReplayBlockTokens);
  absl::StatusOr<replay::ReplayResult> lru = replay::ReplayLru(trace, blocks);
  if (!lru.ok()) return lru.status();
  ref.lru = lru->HitRate();
  absl::StatusOr<replay::ReplayResult> belady =
      replay::ReplayTailFirstBelady(trace, blocks, replay::kReplayBlockTokens);
  if (!belady.ok()) return belady.status();
  ref.belady = belady->HitRate();
  for (const std::string& name : policies) {
    absl::StatusOr<std::unique_ptr<EvictionPolicy>> policy = NewEvictionPolicy(name);
    if (!policy.ok()) return policy.status();
    absl::StatusOr<replay::ReplayResult> r =
        replay::ReplayTailFirst(trace, blocks, **policy, replay::kReplayBlockTokens);
    if (!r.ok()) return r.status();
    ref.tail_first.push_back(r->HitRate());
  }
  return ref;
}

double Ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

Json TiersJson(const replay::CacheReplayResult& r) {
  Json tiers = Json::Array();
  for (const replay::TierTraffic& t : r.tiers) {
    tiers.Push(Json::Object()
                   .Set("tier", std::string(TierName(t.tier)))
                   .Set("hits", t.hits)
                   .Set("bytes_written", t.bytes_written)
                   .Set("bytes_read", t.bytes_read)
                   .Set("evictions", t.evictions));
  }
  return tiers;
}

}  // namespace

int RunReplayBench(Flags& flags) {
  const bool json = flags.Bool("json");
  const std::string trace_path = flags.String("trace", "");
  const std::string dram_tokens_text = flags.String("dram-tokens", "3M");
  const int64_t bytes_per_token = flags.Int("bytes-per-token", 7);
  const std::string policy_text = flags.String("policy", "all");
  const double speed = flags.Double("speed", 0);
  const std::string curve_text = flags.String("curve", "");
  const std::string nvme_tokens_text = flags.String("nvme-tokens", "0");
  const char* tmpdir = ::getenv("TMPDIR");
  const std::string nvme_parent =
      flags.String("nvme-path", tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp");
  const std::string nvme_io_mode = flags.String("nvme-io-mode", "direct");
  const std::string nvme_admission = flags.String("nvme-admission", "all");
  const bool wait_for_demotions = !flags.Bool("no-wait-demotions");
  if (absl::Status s = flags.Finish(); !s.ok()) return Fail(std::string(s.message()));
  if (trace_path.empty()) return Fail("--trace: a trace file (JSON Lines) is required");
  if (bytes_per_token <= 0 || bytes_per_token > (1 << 20)) {
    return Fail(absl::StrCat("--bytes-per-token: ", bytes_per_token, " is out of range"));
  }
  absl::StatusOr<uint64_t> dram_tokens = replay::ParseTokenCount(dram_tokens_text, "--dram-tokens");
  if (!dram_tokens.ok()) return Fail(std::string(dram_tokens.status().message()));
  absl::StatusOr<uint64_t> nvme_tokens = replay::ParseTokenCount(nvme_tokens_text, "--nvme-tokens");
  if (!nvme_tokens.ok()) return Fail(std::string(nvme_tokens.status().message()));
  std::vector<uint64_t> curve;
  if (!curve_text.empty()) {
    for (absl::string_view part : absl::StrSplit(curve_text, ',')) {
      absl::StatusOr<uint64_t> c = replay::ParseTokenCount(part, "--curve");
      if (!c.ok()) return Fail(std::string(c.status().message()));
      curve.push_back(*c);
    }
  }
  std::vector<std::string> policies;
  if (policy_text == "all") {
    for (const char* p : kAllPolicies) policies.emplace_back(p);
  } else {
    for (absl::string_view p : absl::StrSplit(policy_text, ',')) {
      if (absl::Status s = NewEvictionPolicy(std::string(p)).status(); !s.ok()) {
        return Fail(absl::StrCat("--policy: ", s.message()));
      }
      policies.emplace_back(p);
    }
  }

  absl::StatusOr<std::vector<replay::TraceRequest>> trace = replay::ReadTraceFile(trace_path);
  if (!trace.ok()) return Fail(trace.status().ToString());

  auto run = [&](const std::string& policy, uint64_t tokens, const std::string& label,
                 uint64_t nvme = 0) -> absl::StatusOr<replay::CacheReplayResult> {
    replay::CacheReplayOptions o;
    o.capacity_tokens = tokens;
    o.bytes_per_token = static_cast<uint32_t>(bytes_per_token);
    o.eviction_policy = policy;
    o.speed = speed;
    std::string folder;
    if (nvme > 0) {
      // A fresh volume per run, removed afterwards.
      absl::StatusOr<std::string> dir = MakeTempDir(nvme_parent, "kvtier-replay-nvme-");
      if (!dir.ok()) return dir.status();
      folder = *dir;
      o.nvme_tokens = nvme;
      o.nvme_path = folder;
      o.nvme_io_mode = nvme_io_mode;
      o.nvme_admission = nvme_admission;
      o.wait_for_demotions = wait_for_demotions;
    }
    absl::StatusOr<replay::CacheReplayResult> r;
    {
      Progress progress(label, trace->size());
      r = replay::ReplayThroughCache(*trace, o, [&](uint64_t done) { progress.Update(done); });
      progress.Finish();
    }
    if (!folder.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(folder, ec);
    }
    return r;
  };

  // The main table at --dram-tokens.
  absl::StatusOr<replay::ReplayResult> unbounded = replay::ReplayUnbounded(*trace);
  if (!unbounded.ok()) return Fail(unbounded.status().ToString());
  absl::StatusOr<Reference> ref = Simulate(*trace, policies, *dram_tokens);
  if (!ref.ok()) return Fail(ref.status().ToString());
  std::vector<replay::CacheReplayResult> results;
  for (const std::string& p : policies) {
    absl::StatusOr<replay::CacheReplayResult> r =
        run(p, *dram_tokens, absl::StrCat("replay ", p, " ", Tokens(*dram_tokens)));
    if (!r.ok()) return Fail(absl::StrCat("policy ", p, ": ", r.status().ToString()));
    results.push_back(*std::move(r));
  }

  // DRAM plus NVMe: every policy at --dram-tokens + --nvme-tokens.
  std::vector<replay::CacheReplayResult> nvme_results;
  if (*nvme_tokens > 0) {
    for (const std::string& p : policies) {
      absl::StatusOr<replay::CacheReplayResult> r = run(
          p, *dram_tokens,
          absl::StrCat("replay ", p, " ", Tokens(*dram_tokens), " + NVMe ", Tokens(*nvme_tokens)),
          *nvme_tokens);
      if (!r.ok()) {
        return Fail(absl::StrCat(
            "policy ", p, " with NVMe in ", nvme_parent, ": ", r.status().ToString(),
            absl::StrContains(r.status().message(), "io_mode") && nvme_io_mode == "direct"
                ? " (a file system without O_DIRECT needs "
                  "--nvme-io-mode buffered)"
                : ""));
      }
      nvme_results.push_back(*std::move(r));
    }
  }
  auto tier_hits = [](const replay::CacheReplayResult& r, Tier tier) -> uint64_t {
    for (const replay::TierTraffic& t : r.tiers) {
      if (t.tier == tier) return t.hits;
    }
    return 0;
  };
  auto tier_traffic = [](const replay::CacheReplayResult& r, Tier tier) {
    for (const replay::TierTraffic& t : r.tiers) {
      if (t.tier == tier) return t;
    }
    return replay::TierTraffic{};
  };

  // The curve: every policy at every --curve capacity, beside reference LRU.
  struct CurvePoint {
    std::string policy;
    uint64_t tokens;
    double hit_rate;
  };
  std::vector<CurvePoint> points;
  std::vector<Reference> curve_refs;
  for (uint64_t c : curve) {
    absl::StatusOr<Reference> cref = Simulate(*trace, {}, c);
    if (!cref.ok()) return Fail(cref.status().ToString());
    curve_refs.push_back(*std::move(cref));
  }
  for (size_t i = 0; i < curve.size(); ++i) {
    points.push_back({"lru-reference (simulator)", curve[i], curve_refs[i].lru});
  }
  for (size_t i = 0; i < curve.size(); ++i) {
    points.push_back(
        {"belady-tail-first (simulator, future knowledge)", curve[i], curve_refs[i].belady});
  }
  for (const std::string& p : policies) {
    for (uint64_t c : curve) {
      absl::StatusOr<replay::CacheReplayResult> r =
          run(p, c, absl::StrCat("curve ", p, " ", Tokens(c)));
      if (!r.ok()) return Fail(absl::StrCat("policy ", p, ": ", r.status().ToString()));
      points.push_back({p, c, r->HitRate()});
    }
  }

  const replay::ReplayGeometry& g = results.front().geometry;
  if (json) {
    Json rs = Json::Array();
    Json ratios = Json::Object();
    for (size_t i = 0; i < results.size(); ++i) {
      const replay::CacheReplayResult& r = results[i];
      rs.Push(Json::Object()
                  .Set("policy", r.policy)
                  .Set("capacity_tokens", r.capacity_tokens)
                  .Set("capacity_chunks", r.geometry.capacity_chunks)
                  .Set("hit_rate_blocks", r.HitRate())
                  .Set("hit_rate_tokens", r.TokenHitRate())
                  .Set("prefill_tokens_saved", r.hit_tokens)
                  .Set("requests", r.requests)
                  .Set("requests_per_s", r.RequestsPerSecond())
                  .Set("bytes_written", r.bytes_written)
                  .Set("bytes_read", r.bytes_read)
                  .Set("evictions", r.evictions)
                  .Set("rejected_saves", r.rejected_saves)
                  .Set("simulator_tail_first_hit_rate", ref->tail_first[i])
                  .Set("tiers", TiersJson(r)));
      ratios.Set(absl::StrCat(r.policy, "_vs_lru_reference"), Ratio(r.HitRate(), ref->lru));
      ratios.Set(absl::StrCat(r.policy, "_vs_unbounded"), Ratio(r.HitRate(), unbounded->HitRate()));
      ratios.Set(absl::StrCat(r.policy, "_vs_simulator"), Ratio(r.HitRate(), ref->tail_first[i]));
    }
    Json cj = Json::Array();
    for (const CurvePoint& p : points) {
      cj.Push(Json::Object()
                  .Set("policy", p.policy)
                  .Set("capacity_tokens", p.tokens)
                  .Set("hit_rate_blocks", p.hit_rate));
    }
    Json nj = Json::Array();
    for (const replay::CacheReplayResult& r : nvme_results) {
      nj.Push(Json::Object()
                  .Set("policy", r.policy)
                  .Set("dram_tokens", r.capacity_tokens)
                  .Set("nvme_tokens", *nvme_tokens)
                  .Set("nvme_chunks", r.geometry.nvme_chunks)
                  .Set("nvme_io_mode", nvme_io_mode)
                  .Set("wait_for_demotions", wait_for_demotions)
                  .Set("hit_rate_blocks", r.HitRate())
                  .Set("hit_rate_tokens", r.TokenHitRate())
                  .Set("vs_unbounded", Ratio(r.HitRate(), unbounded->HitRate()))
                  .Set("dram_hits", tier_hits(r, Tier::kDram))
                  .Set("nvme_hits", tier_hits(r, Tier::kNvme))
                  .Set("lost_hits", r.lost_hits)
                  .Set("demoted", r.demoted)
                  .Set("skipped_demotions", r.skipped_demotions)
                  .Set("promoted", r.promoted)
                  .Set("nvme_resident_chunks", r.nvme_resident_chunks)
                  .Set("requests_per_s", r.RequestsPerSecond())
                  .Set("tiers", TiersJson(r)));
    }
    Json j = Json::Object();
    j.Set("suite", "replay")
        .Set("trace", trace_path)
        .Set("requests", static_cast<uint64_t>(trace->size()))
        .Set("bytes_per_token", bytes_per_token)
        .Set("geometry", Json::Object()
                             .Set("capacity_chunks", g.capacity_chunks)
                             .Set("slot_bytes", g.slot_bytes)
                             .Set("slots_per_slab", g.slots_per_slab)
                             .Set("slabs", g.slabs)
                             .Set("filler_chunks", g.filler_chunks)
                             .Set("dram_capacity_bytes", g.dram_capacity_bytes))
        .Set("results", rs)
        .Set("reference", Json::Object()
                              .Set("capacity_tokens", *dram_tokens)
                              .Set("unbounded", unbounded->HitRate())
                              .Set("lru", ref->lru)
                              .Set("belady_tail_first", ref->belady))
        .Set("unbounded_hit_rate_blocks", unbounded->HitRate())
        .Set("ratios", ratios)
        .Set("nvme_results", nj)
        .Set("curve", cj);
    std::printf("%s\n", j.Dump().c_str());
    return 0;
  }

  std::printf(
      "trace %s: %zu requests; DRAM %s tokens = %llu chunks (%llu slabs of %llu x %s slots, "
      "%llu pinned filler chunks)\n\n",
      trace_path.c_str(), trace->size(), Tokens(*dram_tokens).c_str(),
      static_cast<unsigned long long>(g.capacity_chunks), static_cast<unsigned long long>(g.slabs),
      static_cast<unsigned long long>(g.slots_per_slab), HumanBytes(g.slot_bytes).c_str(),
      static_cast<unsigned long long>(g.filler_chunks));
  Table t({"policy", "hit rate (blocks)", "hit rate (tokens)", "prefill tokens saved", "simulator",
           "x LRU ref", "written", "read", "requests/s"});
  for (size_t i = 0; i < results.size(); ++i) {
    const replay::CacheReplayResult& r = results[i];
    t.AddRow({r.policy, Fixed(r.HitRate(), 4), Fixed(r.TokenHitRate(), 4),
              absl::StrCat(r.hit_tokens), Fixed(ref->tail_first[i], 4),
              Fixed(Ratio(r.HitRate(), ref->lru), 3), HumanBytes(r.bytes_written),
              HumanBytes(r.bytes_read), Fixed(r.RequestsPerSecond(), 0)});
  }
  t.Print();
  std::printf(
      "\nsimulator on the same trace: unbounded %s, reference LRU at %s tokens %s, tail-first "
      "Belady (future knowledge) %s\n",
      Fixed(unbounded->HitRate(), 4).c_str(), Tokens(*dram_tokens).c_str(),
      Fixed(ref->lru, 4).c_str(), Fixed(ref->belady, 4).c_str());
  if (!nvme_results.empty()) {
    const replay::ReplayGeometry& ng = nvme_results.front().geometry;
    std::printf(
        "\nDRAM %s + NVMe %s tokens (%llu chunks in %llu-byte slots, %s, %s): hit rate vs "
        "unbounded %s\n",
        Tokens(*dram_tokens).c_str(), Tokens(*nvme_tokens).c_str(),
        static_cast<unsigned long long>(ng.nvme_chunks),
        static_cast<unsigned long long>(ng.nvme_slot_bytes), nvme_io_mode.c_str(),
        wait_for_demotions ? "waiting for demotions" : "not waiting for demotions",
        Fixed(unbounded->HitRate(), 4).c_str());
    Table nt({"policy", "hit rate (blocks)", "x unbounded", "DRAM hits", "NVMe hits", "lost",
              "demoted", "skipped", "promoted", "NVMe written", "NVMe read", "requests/s"});
    for (const replay::CacheReplayResult& r : nvme_results) {
      const replay::TierTraffic nv = tier_traffic(r, Tier::kNvme);
      nt.AddRow(
          {r.policy, Fixed(r.HitRate(), 4), Fixed(Ratio(r.HitRate(), unbounded->HitRate()), 3),
           absl::StrCat(tier_hits(r, Tier::kDram)), absl::StrCat(nv.hits),
           absl::StrCat(r.lost_hits), absl::StrCat(r.demoted), absl::StrCat(r.skipped_demotions),
           absl::StrCat(r.promoted), HumanBytes(nv.bytes_written), HumanBytes(nv.bytes_read),
           Fixed(r.RequestsPerSecond(), 0)});
    }
    nt.Print();
  }
  if (!points.empty()) {
    std::printf("\n");
    Table ct({"policy", "capacity (tokens)", "hit rate (blocks)"});
    for (const CurvePoint& p : points)
      ct.AddRow({p.policy, Tokens(p.tokens), Fixed(p.hit_rate, 4)});
    ct.Print();
  }
  return 0;
}

}  // namespace kvtier::cli
