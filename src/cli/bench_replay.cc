// `kvtier bench replay`: a request trace through the real embedded cache, or
// through a running kvtierd, beside the block simulators' unbounded and LRU
// hit rates on the same trace.
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "kvtier/client.h"
#include "src/cli/bench.h"
#include "src/cli/daemon_flags.h"
#include "src/cli/report.h"
#include "src/common/temp_path.h"
#include "src/core/replay/cache_replay.h"
#include "src/core/replay/sim.h"
#include "src/core/replay/trace_reader.h"
#include "src/tiers/blob/azurite.h"

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

// A fresh namespace salt: chunks of earlier runs never match this run's.
std::string FreshSalt() {
  std::random_device rd;
  const uint64_t v = (uint64_t{rd()} << 32) ^ rd();
  return absl::StrFormat("kvtier-replay-%016x", v);
}

// kvtierd's dram.slab and dram.eviction_policy, from its effective
// configuration (the admin Config call: open mode or an admin token).
struct DaemonDram {
  uint64_t slab_bytes = 0;
  std::string policy;
};

absl::StatusOr<DaemonDram> ReadDaemonDram(const Client& client) {
  absl::StatusOr<std::string> yaml = client.DaemonConfigYaml();
  if (!yaml.ok()) return yaml.status();
  DaemonDram d;
  bool in_dram = false;
  for (absl::string_view line : absl::StrSplit(*yaml, '\n')) {
    if (!line.empty() && line.front() != ' ') {
      in_dram = line == "dram:";
    } else if (in_dram && absl::ConsumePrefix(&line, "  slab: ")) {
      if (!absl::SimpleAtoi(line, &d.slab_bytes)) d.slab_bytes = 0;
    } else if (in_dram && absl::ConsumePrefix(&line, "  eviction_policy: ")) {
      d.policy = std::string(line);
    }
  }
  if (d.slab_bytes == 0 || d.policy.empty()) {
    return absl::DataLossError("its configuration names no dram.slab or dram.eviction_policy");
  }
  return d;
}

// What a replay through kvtierd was asked for on the command line.
struct DaemonReplayFlags {
  ClientOptions client;
  std::string policy;        // --policy; "": the daemon's, else lru
  uint64_t slab_bytes = 0;   // --slab; 0: the daemon's, else 64 MiB
  uint64_t dram_tokens = 0;  // --dram-tokens; 0: from the daemon's DRAM
  std::string salt;          // --salt; "": a fresh one
  int64_t bytes_per_token = 7;
  double speed = 0;
  bool json = false;
};

// The trace through a running kvtierd: its tiers, capacities and policy.
int RunDaemonReplay(const std::vector<replay::TraceRequest>& trace, const std::string& trace_path,
                    const DaemonReplayFlags& f) {
  const ClientOptions& co = f.client;
  const std::string where = co.address.empty() ? co.socket_path : co.address;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(co);
  if (!client.ok()) {
    return Fail(absl::StrCat("kvtierd at ", where, ": ", client.status().ToString()));
  }
  absl::StatusOr<CacheStats> stats = (*client)->FetchStats();
  if (!stats.ok()) return Fail(absl::StrCat("kvtierd at ", where, ": ", stats.status().ToString()));
  std::string policy = f.policy.empty() ? "lru" : f.policy;
  uint64_t slab = f.slab_bytes > 0 ? f.slab_bytes : (64ull << 20);
  std::string assumed;  // what was not read from the daemon
  if (absl::StatusOr<DaemonDram> d = ReadDaemonDram(**client); d.ok()) {
    if (!f.policy.empty() && f.policy != d->policy) {
      return Fail(absl::StrCat("--policy ", f.policy, ": kvtierd at ", where, " runs ", d->policy));
    }
    if (f.slab_bytes > 0 && f.slab_bytes != d->slab_bytes) {
      return Fail(absl::StrCat("--slab ", f.slab_bytes, ": kvtierd at ", where, " uses slabs of ",
                               d->slab_bytes, " bytes"));
    }
    policy = d->policy;
    slab = d->slab_bytes;
  } else {
    assumed = absl::StrCat(" (its configuration could not be read: ", d.status().message(),
                           "; assumed: policy ", policy, ", ", HumanBytes(slab),
                           " slabs; see --policy, --slab)");
  }
  uint64_t dram_bytes = 0;
  uint64_t nvme_bytes = 0;
  uint64_t blob_bytes = 0;
  for (const TierStats& t : stats->tiers) {
    if (t.tier == Tier::kDram) dram_bytes = t.capacity_bytes;
    if (t.tier == Tier::kNvme) nvme_bytes = t.capacity_bytes;
    if (t.tier == Tier::kBlob) blob_bytes = t.capacity_bytes;
  }
  replay::DaemonReplayOptions o;
  o.bytes_per_token = static_cast<uint32_t>(f.bytes_per_token);
  o.speed = f.speed;
  o.salt = f.salt.empty() ? FreshSalt() : f.salt;
  if (absl::Status s = o.Validate(); !s.ok()) return Fail(std::string(s.message()));
  // The DRAM capacity in replay chunks: whole slabs of slots the chunk's
  // size (rounded up to 4 KiB), unless --dram-tokens says otherwise.
  const uint64_t slot = replay::ReplaySlotBytes(o.bytes_per_token);
  const uint64_t derived_chunks = slot > slab ? 0 : dram_bytes / slab * (slab / slot);
  const uint64_t dram_tokens =
      f.dram_tokens > 0 ? f.dram_tokens : derived_chunks * replay::kReplayBlockTokens;
  if (dram_tokens < replay::kReplayBlockTokens) {
    return Fail(absl::StrCat("kvtierd at ", where, " reports ", HumanBytes(dram_bytes),
                             " of DRAM: no whole ", HumanBytes(slab), " slab",
                             assumed.empty() ? "" : " (assumed; --slab sets it)",
                             " of the trace's ", HumanBytes(slot),
                             " chunks; --dram-tokens sets the capacity the reference columns "
                             "assume"));
  }
  absl::StatusOr<replay::ReplayResult> unbounded = replay::ReplayUnbounded(trace);
  if (!unbounded.ok()) return Fail(unbounded.status().ToString());
  absl::StatusOr<Reference> ref = Simulate(trace, {policy}, dram_tokens);
  if (!ref.ok()) return Fail(ref.status().ToString());
  absl::StatusOr<replay::CacheReplayResult> r;
  {
    Progress progress("replay through kvtierd", trace.size());
    r = replay::ReplayThroughDaemon(trace, **client, o,
                                    [&](uint64_t done) { progress.Update(done); });
    progress.Finish();
  }
  if (!r.ok()) return Fail(absl::StrCat("kvtierd at ", where, ": ", r.status().ToString()));
  r->policy = policy;
  r->capacity_tokens = dram_tokens;
  const double lru_ratio = Ratio(r->HitRate(), ref->lru);
  const double unbounded_ratio = Ratio(r->HitRate(), unbounded->HitRate());
  const double sim_ratio = Ratio(r->HitRate(), ref->tail_first.front());
  if (f.json) {
    Json j = Json::Object();
    j.Set("suite", "replay")
        .Set("mode", "kvtierd")
        .Set("trace", trace_path)
        .Set("requests", static_cast<uint64_t>(trace.size()))
        .Set("bytes_per_token", f.bytes_per_token)
        .Set("kvtierd", Json::Object()
                            .Set("endpoint", where)
                            .Set("namespace_salt", o.salt)
                            .Set("policy", policy)
                            .Set("slab_bytes", slab)
                            .Set("configuration_read", assumed.empty())
                            .Set("dram_capacity_bytes", dram_bytes)
                            .Set("nvme_capacity_bytes", nvme_bytes)
                            .Set("blob_capacity_bytes", blob_bytes)
                            .Set("dram_tokens_assumed", dram_tokens))
        .Set("result", Json::Object()
                           .Set("hit_rate_blocks", r->HitRate())
                           .Set("hit_rate_tokens", r->TokenHitRate())
                           .Set("prefill_tokens_saved", r->hit_tokens)
                           .Set("total_blocks", r->total_blocks)
                           .Set("hit_blocks", r->hit_blocks)
                           .Set("requests_per_s", r->RequestsPerSecond())
                           .Set("lost_hits", r->lost_hits)
                           .Set("rejected_saves", r->rejected_saves)
                           .Set("dram_hits", r->TrafficOf(Tier::kDram).hits)
                           .Set("nvme_hits", r->TrafficOf(Tier::kNvme).hits)
                           .Set("blob_hits", r->TrafficOf(Tier::kBlob).hits)
                           .Set("simulator_tail_first_hit_rate", ref->tail_first.front())
                           .Set("tiers", TiersJson(*r)))
        .Set("reference", Json::Object()
                              .Set("capacity_tokens", dram_tokens)
                              .Set("unbounded", unbounded->HitRate())
                              .Set("lru", ref->lru)
                              .Set("belady_tail_first", ref->belady))
        .Set("ratios", Json::Object()
                           .Set("vs_lru_reference", lru_ratio)
                           .Set("vs_unbounded", unbounded_ratio)
                           .Set("vs_simulator", sim_ratio));
    std::printf("%s\n", j.Dump().c_str());
    return 0;
  }
  const std::string capacity_from =
      f.dram_tokens > 0 ? " (--dram-tokens)" : absl::StrCat(" in ", HumanBytes(slab), " slabs");
  std::printf(
      "trace %s: %zu requests through kvtierd at %s (namespace salt %s), policy %s%s; its DRAM "
      "%s = %s tokens of %s chunks%s, NVMe %s, Blob %s\n\n",
      trace_path.c_str(), trace.size(), where.c_str(), o.salt.c_str(), policy.c_str(),
      assumed.c_str(), HumanBytes(dram_bytes).c_str(), Tokens(dram_tokens).c_str(),
      HumanBytes(slot).c_str(), capacity_from.c_str(),
      nvme_bytes > 0 ? HumanBytes(nvme_bytes).c_str() : "none",
      blob_bytes > 0 ? HumanBytes(blob_bytes).c_str() : "unbounded or none");
  Table t({"policy", "hit rate (blocks)", "hit rate (tokens)", "prefill tokens saved", "simulator",
           "x LRU ref", "x unbounded", "DRAM hits", "NVMe hits", "Blob hits", "lost",
           "requests/s"});
  t.AddRow(
      {policy + (assumed.empty() ? " (kvtierd)" : " (kvtierd, assumed)"), Fixed(r->HitRate(), 4),
       Fixed(r->TokenHitRate(), 4), absl::StrCat(r->hit_tokens), Fixed(ref->tail_first.front(), 4),
       Fixed(lru_ratio, 3), Fixed(unbounded_ratio, 3), absl::StrCat(r->TrafficOf(Tier::kDram).hits),
       absl::StrCat(r->TrafficOf(Tier::kNvme).hits), absl::StrCat(r->TrafficOf(Tier::kBlob).hits),
       absl::StrCat(r->lost_hits), Fixed(r->RequestsPerSecond(), 0)});
  t.Print();
  std::printf(
      "\nsimulator on the same trace: unbounded %s, reference LRU at %s tokens %s, tail-first "
      "Belady (future knowledge) %s. Tier figures are kvtierd's over the run, other clients' "
      "traffic included.\n",
      Fixed(unbounded->HitRate(), 4).c_str(), Tokens(dram_tokens).c_str(),
      Fixed(ref->lru, 4).c_str(), Fixed(ref->belady, 4).c_str());
  return 0;
}

}  // namespace

int RunReplayBench(Flags& flags) {
  const bool json = flags.Bool("json");
  const std::string trace_path = flags.String("trace", "");
  const std::string dram_tokens_flag = flags.String("dram-tokens", "");
  const std::string dram_tokens_text = dram_tokens_flag.empty() ? "3M" : dram_tokens_flag;
  const int64_t bytes_per_token = flags.Int("bytes-per-token", 7);
  const std::string policy_text = flags.String("policy", "all");
  const double speed = flags.Double("speed", 0);
  const std::string curve_text = flags.String("curve", "");
  const std::string nvme_tokens_text = flags.String("nvme-tokens", "0");
  const char* tmpdir = ::getenv("TMPDIR");
  const std::string nvme_path_flag = flags.String("nvme-path", "");
  const std::string nvme_parent = !nvme_path_flag.empty()                ? nvme_path_flag
                                  : tmpdir != nullptr && *tmpdir != '\0' ? tmpdir
                                                                         : "/tmp";
  const std::string nvme_io_mode = flags.String("nvme-io-mode", "direct");
  const std::string nvme_admission = flags.String("nvme-admission", "all");
  const bool wait_for_demotions = !flags.Bool("no-wait-demotions");
  const std::string blob_tokens_text = flags.String("blob-tokens", "0");
  // Through a running kvtierd when --socket or --address names one (not
  // $KVTIER_SOCKET alone: the embedded replay is the default).
  const bool daemon = !flags.String("socket", "").empty() || !flags.String("address", "").empty();
  ClientOptions client_options;
  bool client_flags = false;  // flags that only a replay through kvtierd uses
  if (daemon) {
    client_options = TakeClientOptions(flags);
  } else {
    for (const char* name : {"token", "token-file", "tls-ca", "tls-cert", "tls-key",
                             "tls-server-name", "salt", "slab"}) {
      client_flags = client_flags || !flags.String(name, "").empty();
    }
    client_flags = flags.Bool("no-shm") || client_flags;
  }
  const uint64_t slab_flag = daemon ? flags.Bytes("slab", 0) : 0;
  const std::string salt_flag = daemon ? flags.String("salt", "") : "";
  if (absl::Status s = flags.Finish(); !s.ok()) return Fail(std::string(s.message()));
  if (client_flags) {
    return Fail(
        "--salt, --slab, --token, --token-file, --no-shm and the TLS flags replay through a "
        "running kvtierd: name it with --socket or --address");
  }
  if (trace_path.empty()) return Fail("--trace: a trace file (JSON Lines) is required");
  if (bytes_per_token <= 0 || bytes_per_token > (1 << 20)) {
    return Fail(absl::StrCat("--bytes-per-token: ", bytes_per_token, " is out of range"));
  }
  absl::StatusOr<uint64_t> dram_tokens = replay::ParseTokenCount(dram_tokens_text, "--dram-tokens");
  if (!dram_tokens.ok()) return Fail(std::string(dram_tokens.status().message()));
  absl::StatusOr<uint64_t> nvme_tokens = replay::ParseTokenCount(nvme_tokens_text, "--nvme-tokens");
  if (!nvme_tokens.ok()) return Fail(std::string(nvme_tokens.status().message()));
  absl::StatusOr<uint64_t> blob_tokens = replay::ParseTokenCount(blob_tokens_text, "--blob-tokens");
  if (!blob_tokens.ok()) return Fail(std::string(blob_tokens.status().message()));
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

  if (daemon) {
    if (!curve.empty() || *nvme_tokens > 0 || *blob_tokens > 0 || !nvme_path_flag.empty() ||
        nvme_io_mode != "direct" || nvme_admission != "all" || !wait_for_demotions) {
      return Fail(
          "--curve, --nvme-tokens, --blob-tokens and the other --nvme flags and "
          "--no-wait-demotions build an embedded cache; through kvtierd (--socket, --address) "
          "the tiers are the daemon's");
    }
    if (!dram_tokens_flag.empty() && *dram_tokens < replay::kReplayBlockTokens) {
      return Fail(absl::StrCat("--dram-tokens: ", *dram_tokens, " is less than one ",
                               replay::kReplayBlockTokens, "-token chunk"));
    }
    if (policy_text != "all" && policies.size() != 1) {
      return Fail("--policy: kvtierd runs one policy (dram.eviction_policy)");
    }
  }

  absl::StatusOr<std::vector<replay::TraceRequest>> trace = replay::ReadTraceFile(trace_path);
  if (!trace.ok()) return Fail(trace.status().ToString());
  if (daemon) {
    DaemonReplayFlags f;
    f.client = client_options;
    f.policy = policy_text == "all" ? "" : policies.front();
    f.slab_bytes = slab_flag;
    f.salt = salt_flag;
    f.dram_tokens = dram_tokens_flag.empty() ? 0 : *dram_tokens;
    f.bytes_per_token = bytes_per_token;
    f.speed = speed;
    f.json = json;
    return RunDaemonReplay(*trace, trace_path, f);
  }

  // Blob: an Azurite of the benchmark's own, a container per run.
  std::unique_ptr<AzuriteProcess> azurite;
  if (*blob_tokens > 0) {
    absl::StatusOr<std::unique_ptr<AzuriteProcess>> a =
        AzuriteProcess::Start(0, "", /*in_memory=*/true);
    if (!a.ok()) return Fail(absl::StrCat("--blob-tokens needs Azurite: ", a.status().ToString()));
    azurite = *std::move(a);
  }
  int containers = 0;

  auto run = [&](const std::string& policy, uint64_t tokens, const std::string& label,
                 uint64_t nvme = 0,
                 uint64_t blob = 0) -> absl::StatusOr<replay::CacheReplayResult> {
    replay::CacheReplayOptions o;
    if (blob > 0) {
      o.blob_tokens = blob;
      o.blob.endpoint = azurite->endpoint();
      o.blob.account = kAzuriteAccount;
      o.blob.shared_key = kAzuriteKey;
      o.blob.container = absl::StrCat("kvtier-replay-", ++containers);
      o.wait_for_demotions = wait_for_demotions;
    }
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

  // DRAM plus lower tiers: every policy at --dram-tokens + --nvme-tokens
  // (+ --blob-tokens).
  std::vector<replay::CacheReplayResult> tier_results;
  std::string tiers_label = absl::StrCat("DRAM ", Tokens(*dram_tokens));
  if (*nvme_tokens > 0) absl::StrAppend(&tiers_label, " + NVMe ", Tokens(*nvme_tokens));
  if (*blob_tokens > 0) absl::StrAppend(&tiers_label, " + Blob ", Tokens(*blob_tokens));
  if (*nvme_tokens > 0 || *blob_tokens > 0) {
    for (const std::string& p : policies) {
      absl::StatusOr<replay::CacheReplayResult> r =
          run(p, *dram_tokens, absl::StrCat("replay ", p, " ", tiers_label), *nvme_tokens,
              *blob_tokens);
      if (!r.ok()) {
        return Fail(absl::StrCat(
            "policy ", p, " with ", tiers_label,
            *nvme_tokens > 0 ? absl::StrCat(" (NVMe in ", nvme_parent, ")") : "", ": ",
            r.status().ToString(),
            absl::StrContains(r.status().message(), "io_mode") && nvme_io_mode == "direct"
                ? " (a file system without O_DIRECT needs "
                  "--nvme-io-mode buffered)"
                : ""));
      }
      tier_results.push_back(*std::move(r));
    }
  }

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
    for (const replay::CacheReplayResult& r : tier_results) {
      nj.Push(Json::Object()
                  .Set("policy", r.policy)
                  .Set("dram_tokens", r.capacity_tokens)
                  .Set("nvme_tokens", *nvme_tokens)
                  .Set("nvme_chunks", r.geometry.nvme_chunks)
                  .Set("blob_tokens", *blob_tokens)
                  .Set("blob_chunks", r.geometry.blob_chunks)
                  .Set("nvme_io_mode", nvme_io_mode)
                  .Set("wait_for_demotions", wait_for_demotions)
                  .Set("hit_rate_blocks", r.HitRate())
                  .Set("hit_rate_tokens", r.TokenHitRate())
                  .Set("vs_unbounded", Ratio(r.HitRate(), unbounded->HitRate()))
                  .Set("dram_hits", r.TrafficOf(Tier::kDram).hits)
                  .Set("nvme_hits", r.TrafficOf(Tier::kNvme).hits)
                  .Set("blob_hits", r.TrafficOf(Tier::kBlob).hits)
                  .Set("lost_hits", r.lost_hits)
                  .Set("demoted", r.demoted)
                  .Set("skipped_demotions", r.skipped_demotions)
                  .Set("promoted", r.promoted)
                  .Set("nvme_resident_chunks", r.nvme_resident_chunks)
                  .Set("blob_resident_chunks", r.blob_resident_chunks)
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
        .Set("tier_results", nj)
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
  if (!tier_results.empty()) {
    const replay::ReplayGeometry& tg = tier_results.front().geometry;
    std::printf("\n%s tokens", tiers_label.c_str());
    if (*nvme_tokens > 0) {
      std::printf(" (NVMe: %llu chunks in %llu-byte slots, %s)",
                  static_cast<unsigned long long>(tg.nvme_chunks),
                  static_cast<unsigned long long>(tg.nvme_slot_bytes), nvme_io_mode.c_str());
    }
    if (*blob_tokens > 0) {
      std::printf(" (Blob: %llu objects of %llu bytes, Azurite on loopback)",
                  static_cast<unsigned long long>(tg.blob_chunks),
                  static_cast<unsigned long long>(tg.blob_object_bytes));
    }
    std::printf(", %s: hit rate vs unbounded %s\n",
                wait_for_demotions ? "waiting for demotions" : "not waiting for demotions",
                Fixed(unbounded->HitRate(), 4).c_str());
    Table nt({"policy", "hit rate (blocks)", "x unbounded", "DRAM hits", "NVMe hits", "Blob hits",
              "lost", "demoted", "skipped", "promoted", "NVMe written / read",
              "Blob written / read", "requests/s"});
    for (const replay::CacheReplayResult& r : tier_results) {
      const replay::TierTraffic nv = r.TrafficOf(Tier::kNvme);
      const replay::TierTraffic bl = r.TrafficOf(Tier::kBlob);
      nt.AddRow({r.policy, Fixed(r.HitRate(), 4),
                 Fixed(Ratio(r.HitRate(), unbounded->HitRate()), 3),
                 absl::StrCat(r.TrafficOf(Tier::kDram).hits), absl::StrCat(nv.hits),
                 absl::StrCat(bl.hits), absl::StrCat(r.lost_hits), absl::StrCat(r.demoted),
                 absl::StrCat(r.skipped_demotions), absl::StrCat(r.promoted),
                 absl::StrCat(HumanBytes(nv.bytes_written), " / ", HumanBytes(nv.bytes_read)),
                 absl::StrCat(HumanBytes(bl.bytes_written), " / ", HumanBytes(bl.bytes_read)),
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
