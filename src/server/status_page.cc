#include "src/server/status_page.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "src/server/status_assets.h"

namespace kvtier::server {
namespace {

using nlohmann::json;

// Methods whose durations make up the page's latency percentiles: the data
// path, not health checks or admin calls.
bool IsDataMethod(const std::string& m) { return m != "Health" && m != "Stats" && m != "Config"; }

// A status code that counts as an error: anything but OK and NOT_FOUND (a
// miss is an answer).
bool IsErrorCode(const std::string& code) { return code != "OK" && code != "NOT_FOUND"; }

uint64_t Delta(uint64_t now, uint64_t before) { return now >= before ? now - before : now; }

json Opt(const std::optional<double>& v) { return v.has_value() ? json(*v) : json(nullptr); }

const TierStats* FindTier(const StatusSnapshot& s, Tier tier) {
  for (const TierStats& t : s.tiers) {
    if (t.tier == tier) return &t;
  }
  return nullptr;
}

HttpResponse Text(int status, std::string body) {
  HttpResponse r{status, "text/plain; charset=utf-8", std::move(body), {}};
  r.headers.push_back("Cache-Control: no-store");
  return r;
}

// Headers every page response carries: nothing may load from elsewhere, no
// referrer leaks the token, no framing.
void AddPageHeaders(HttpResponse& r) {
  r.headers.push_back(
      "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
      "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
      "form-action 'none'");
  r.headers.push_back("X-Content-Type-Options: nosniff");
  r.headers.push_back("Referrer-Policy: no-referrer");
}

}  // namespace

std::optional<double> HistogramQuantile(double q, const std::vector<double>& upper_bounds,
                                        const std::vector<uint64_t>& counts) {
  if (counts.empty() || counts.size() != upper_bounds.size() + 1) return std::nullopt;
  const uint64_t total = counts.back();
  if (total == 0) return std::nullopt;
  const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(total);
  for (size_t i = 0; i < upper_bounds.size(); ++i) {
    if (static_cast<double>(counts[i]) >= rank) {
      const double lower = i == 0 ? 0 : upper_bounds[i - 1];
      const uint64_t below = i == 0 ? 0 : counts[i - 1];
      const uint64_t in_bucket = counts[i] - below;
      if (in_bucket == 0) return upper_bounds[i];
      return lower + (upper_bounds[i] - lower) * (rank - static_cast<double>(below)) /
                         static_cast<double>(in_bucket);
    }
  }
  return upper_bounds.empty() ? std::nullopt : std::optional<double>(upper_bounds.back());
}

absl::Status StatusPageOptions::Validate() const {
  if (!snapshot) return absl::InvalidArgumentError("snapshot: a provider is required");
  if (sample_interval < absl::Milliseconds(10) || sample_interval > absl::Seconds(60)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample_interval: ", absl::FormatDuration(sample_interval), " is outside 10ms..60s"));
  }
  if (history_samples < 2 || history_samples > 86400) {
    return absl::InvalidArgumentError(
        absl::StrCat("history_samples: ", history_samples, " is outside 2..86400"));
  }
  if (!(tokens_per_gpu_second > 0) || !std::isfinite(tokens_per_gpu_second)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens_per_gpu_second: ", tokens_per_gpu_second, " must be > 0"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StatusPage>> StatusPage::Create(StatusPageOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  for (const char* name :
       {"index.html", "status.js", "status.css", "uPlot.iife.min.js", "uPlot.min.css"}) {
    if (FindStatusAsset(name) == nullptr) {
      return absl::InternalError(absl::StrCat("status page: asset ", name, " is not built in"));
    }
  }
  std::unique_ptr<StatusPage> page(new StatusPage(std::move(options)));
  page->SampleNow();
  if (page->options_.start_sampler) {
    page->sampler_ = std::thread([p = page.get()] {
      while (!p->stop_.WaitForNotificationWithTimeout(p->options_.sample_interval)) {
        p->SampleNow();
      }
    });
  }
  return page;
}

StatusPage::~StatusPage() { Stop(); }

void StatusPage::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (sampler_.joinable()) sampler_.join();
}

void StatusPage::SampleNow() {
  StatusSnapshot now = options_.snapshot();
  const absl::Time t = absl::Now();
  absl::MutexLock lock(&mu_);
  Sample s;
  s.seq = ++seq_;
  s.time = absl::ToDoubleSeconds(t - absl::UnixEpoch());
  const StatusSnapshot empty;
  const StatusSnapshot& prev = last_.has_value() ? *last_ : empty;
  const double dt = last_.has_value() ? std::max(1e-6, absl::ToDoubleSeconds(t - last_time_)) : 0.0;
  auto rate = [dt](uint64_t delta) { return dt > 0 ? static_cast<double>(delta) / dt : 0.0; };

  const uint64_t chunks = Delta(now.lookup_chunks, prev.lookup_chunks);
  if (last_.has_value() && chunks > 0) {
    s.hit_rate = static_cast<double>(Delta(now.lookup_hit_chunks, prev.lookup_hit_chunks)) /
                 static_cast<double>(chunks);
  }
  uint64_t requests = 0, errors = 0;
  for (const auto& [code, n] : now.requests_by_code) {
    auto it = prev.requests_by_code.find(code);
    const uint64_t d = Delta(n, it == prev.requests_by_code.end() ? 0 : it->second);
    requests += d;
    if (IsErrorCode(code)) errors += d;
  }
  s.requests_per_second = rate(requests);
  s.errors_per_second = rate(errors);
  uint64_t evictions = 0, corrupt = 0;
  for (const TierStats& tier : now.tiers) {
    const std::string name(TierName(tier.tier));
    const TierStats* before = FindTier(prev, tier.tier);
    const TierStats zero;
    const TierStats& b = before != nullptr ? *before : zero;
    s.read_bps[name] = rate(Delta(tier.bytes_read, b.bytes_read));
    s.write_bps[name] = rate(Delta(tier.bytes_written, b.bytes_written));
    s.occupancy[name] = tier.capacity_bytes > 0 ? static_cast<double>(tier.used_bytes) /
                                                      static_cast<double>(tier.capacity_bytes)
                                                : 0.0;
    evictions += Delta(tier.evictions, b.evictions);
    corrupt += Delta(tier.corrupt_chunks, b.corrupt_chunks);
  }
  s.evictions_per_second = rate(evictions);
  s.checksum_failures_per_second = rate(corrupt);
  s.prefill_tokens_saved_per_second =
      rate(Delta(now.prefill_tokens_saved, prev.prefill_tokens_saved));

  // Latency over this interval: bucket counts minus the previous sample's.
  std::vector<double> bounds;
  std::vector<uint64_t> all;
  for (const Metrics::MethodLatency& m : now.latencies) {
    const Metrics::MethodLatency* before = nullptr;
    for (const Metrics::MethodLatency& p : prev.latencies) {
      if (p.method == m.method) before = &p;
    }
    std::vector<uint64_t> d(m.bucket_counts.size());
    for (size_t i = 0; i < d.size(); ++i) {
      const uint64_t b =
          before != nullptr && i < before->bucket_counts.size() ? before->bucket_counts[i] : 0;
      d[i] = last_.has_value() ? Delta(m.bucket_counts[i], b) : 0;
    }
    s.method_p50[m.method] = HistogramQuantile(0.5, m.upper_bounds, d);
    s.method_p99[m.method] = HistogramQuantile(0.99, m.upper_bounds, d);
    s.method_rps[m.method] = rate(d.empty() ? 0 : d.back());
    if (!IsDataMethod(m.method)) continue;
    if (all.empty()) {
      bounds = m.upper_bounds;
      all.assign(d.size(), 0);
    }
    if (m.upper_bounds == bounds) {
      for (size_t i = 0; i < d.size(); ++i) all[i] += d[i];
    }
  }
  s.p50 = HistogramQuantile(0.5, bounds, all);
  s.p90 = HistogramQuantile(0.9, bounds, all);
  s.p99 = HistogramQuantile(0.99, bounds, all);

  history_.push_back(std::move(s));
  while (history_.size() > options_.history_samples) history_.pop_front();
  last_ = std::move(now);
  last_time_ = t;
}

std::string StatusPage::Json(bool with_history) const {
  absl::MutexLock lock(&mu_);
  const StatusSnapshot& st = *last_;  // Create took the first sample
  const Sample& s = history_.back();
  json doc;
  doc["schema"] = 1;
  doc["title"] = options_.title;
  doc["service"] = st.service;
  doc["node"] = st.node;
  doc["version"] = st.version;
  doc["ready"] = st.ready;
  doc["seq"] = s.seq;
  doc["time"] = s.time;
  doc["start_time"] = st.start_time_seconds;
  doc["uptime_seconds"] = std::max(0.0, s.time - st.start_time_seconds);
  doc["sample_interval_seconds"] = absl::ToDoubleSeconds(options_.sample_interval);

  uint64_t requests = 0, errors = 0, evictions = 0, corrupt = 0;
  json by_code = json::object();
  for (const auto& [code, n] : st.requests_by_code) {
    by_code[code] = n;
    requests += n;
    if (IsErrorCode(code)) errors += n;
  }
  for (const TierStats& t : st.tiers) {
    evictions += t.evictions;
    corrupt += t.corrupt_chunks;
  }
  doc["totals"] = {
      {"lookups", st.lookups},
      {"lookup_chunks", st.lookup_chunks},
      {"lookup_hit_chunks", st.lookup_hit_chunks},
      {"hit_rate", st.lookup_chunks > 0 ? json(static_cast<double>(st.lookup_hit_chunks) /
                                               static_cast<double>(st.lookup_chunks))
                                        : json(nullptr)},
      {"requests", requests},
      {"errors", errors},
      {"requests_by_code", by_code},
      {"evictions", evictions},
      {"checksum_failures", corrupt},
  };
  doc["rates"] = {
      {"hit_rate", Opt(s.hit_rate)},
      {"requests_per_second", s.requests_per_second},
      {"errors_per_second", s.errors_per_second},
      {"evictions_per_second", s.evictions_per_second},
      {"checksum_failures_per_second", s.checksum_failures_per_second},
      {"prefill_tokens_saved_per_second", s.prefill_tokens_saved_per_second},
  };
  json methods = json::array();
  for (const Metrics::MethodLatency& m : st.latencies) {
    methods.push_back({
        {"method", m.method},
        {"count", m.count},
        {"mean_seconds",
         m.count > 0 ? json(m.sum_seconds / static_cast<double>(m.count)) : json(nullptr)},
        {"requests_per_second", s.method_rps.at(m.method)},
        {"p50_seconds", Opt(s.method_p50.at(m.method))},
        {"p99_seconds", Opt(s.method_p99.at(m.method))},
    });
  }
  doc["latency"] = {{"p50_seconds", Opt(s.p50)},
                    {"p90_seconds", Opt(s.p90)},
                    {"p99_seconds", Opt(s.p99)},
                    {"methods", methods}};
  json tiers = json::array();
  for (const TierStats& t : st.tiers) {
    const std::string name(TierName(t.tier));
    tiers.push_back({
        {"tier", name},
        {"capacity_bytes", t.capacity_bytes},
        {"used_bytes", t.used_bytes},
        {"occupancy", s.occupancy.at(name)},
        {"chunks", t.chunks},
        {"pinned_chunks", t.pinned_chunks},
        {"hits", t.hits},
        {"misses", t.misses},
        {"saves", t.saves},
        {"save_rejections", t.save_rejections},
        {"evictions", t.evictions},
        {"checksum_failures", t.corrupt_chunks},
        {"bytes_read", t.bytes_read},
        {"bytes_written", t.bytes_written},
        {"read_bytes_per_second", s.read_bps.at(name)},
        {"write_bytes_per_second", s.write_bps.at(name)},
    });
  }
  doc["tiers"] = tiers;
  json namespaces = json::array();
  for (const NamespaceCounters& n : st.namespaces) {
    namespaces.push_back({
        {"id", n.id},
        {"model_id", n.model_id},
        {"model_revision", n.model_revision},
        {"salted", n.salted},
        {"lookups", n.lookups},
        {"lookup_chunks", n.lookup_chunks},
        {"lookup_hit_chunks", n.lookup_hit_chunks},
        {"hit_rate", n.lookup_chunks > 0 ? json(static_cast<double>(n.lookup_hit_chunks) /
                                                static_cast<double>(n.lookup_chunks))
                                         : json(nullptr)},
        {"saved_chunks", n.saved_chunks},
        {"saved_bytes", n.saved_bytes},
        {"loaded_chunks", n.loaded_chunks},
        {"loaded_bytes", n.loaded_bytes},
        {"loaded_tokens", n.loaded_tokens},
    });
  }
  doc["namespaces"] = namespaces;
  json peers = json::array();
  for (const StatusPeer& p : st.peers) {
    peers.push_back({{"name", p.name},
                     {"address", p.address},
                     {"transport", p.transport},
                     {"up", p.up},
                     {"bytes_sent", p.bytes_sent},
                     {"bytes_received", p.bytes_received}});
  }
  doc["peers"] = peers;
  json counters = json::object();
  for (const auto& [name, value] : st.counters) counters[name] = value;
  doc["counters"] = counters;
  doc["saved"] = {
      {"prefill_tokens", st.prefill_tokens_saved},
      {"tokens_per_gpu_second", options_.tokens_per_gpu_second},
      {"gpu_seconds",
       static_cast<double>(st.prefill_tokens_saved) / options_.tokens_per_gpu_second},
      {"prefill_tokens_per_second", s.prefill_tokens_saved_per_second},
  };
  if (with_history) {
    json h;
    std::vector<double> time;
    std::vector<json> hit, rps, eps, evps, cps, tps, p50, p90, p99;
    std::set<std::string> names;
    for (const Sample& x : history_) {
      for (const auto& [name, v] : x.occupancy) names.insert(name);
    }
    std::map<std::string, std::vector<json>> read, write, occ;
    for (const Sample& x : history_) {
      time.push_back(x.time);
      hit.push_back(Opt(x.hit_rate));
      rps.push_back(x.requests_per_second);
      eps.push_back(x.errors_per_second);
      evps.push_back(x.evictions_per_second);
      cps.push_back(x.checksum_failures_per_second);
      tps.push_back(x.prefill_tokens_saved_per_second);
      p50.push_back(Opt(x.p50));
      p90.push_back(Opt(x.p90));
      p99.push_back(Opt(x.p99));
      for (const std::string& name : names) {
        auto get = [&](const std::map<std::string, double>& m) {
          auto it = m.find(name);
          return it == m.end() ? json(nullptr) : json(it->second);
        };
        read[name].push_back(get(x.read_bps));
        write[name].push_back(get(x.write_bps));
        occ[name].push_back(get(x.occupancy));
      }
    }
    h["time"] = time;
    h["hit_rate"] = hit;
    h["requests_per_second"] = rps;
    h["errors_per_second"] = eps;
    h["evictions_per_second"] = evps;
    h["checksum_failures_per_second"] = cps;
    h["prefill_tokens_saved_per_second"] = tps;
    h["latency_p50_seconds"] = p50;
    h["latency_p90_seconds"] = p90;
    h["latency_p99_seconds"] = p99;
    json ht = json::object();
    for (const std::string& name : names) {
      ht[name] = {{"read_bytes_per_second", read[name]},
                  {"write_bytes_per_second", write[name]},
                  {"occupancy", occ[name]}};
    }
    h["tiers"] = ht;
    doc["history"] = h;
  }
  return doc.dump() + "\n";
}

bool StatusPage::Authorized(const HttpRequest& request) const {
  const Secret& want = options_.bearer_token;
  if (want.empty()) return !options_.require_token;
  const std::string auth = request.Header("authorization");
  if (absl::StartsWithIgnoreCase(auth, "bearer ") && want.Accepts(auth.substr(7))) return true;
  return want.Accepts(request.QueryParam("token"));
}

std::optional<HttpResponse> StatusPage::Handle(const HttpRequest& request) const {
  std::string asset;
  const bool page = request.path == "/" || request.path == "/index.html";
  const bool api = request.path == "/api/v1/status";
  if (page) {
    asset = "index.html";
  } else if (absl::StartsWith(request.path, "/static/")) {
    asset = request.path.substr(8);
  } else if (!api) {
    return std::nullopt;
  }
  if (page || api) {
    if (options_.bearer_token.empty() && options_.require_token) {
      return Text(403,
                  "the status page is off: this listener is not on loopback and no status token "
                  "is set (listen.status_token or listen.status_token_file)\n");
    }
    if (!Authorized(request)) {
      HttpResponse r = Text(401, "a bearer token is required: Authorization: Bearer <token>\n");
      r.headers.push_back("WWW-Authenticate: Bearer realm=\"kvtier\"");
      return r;
    }
  }
  if (api) {
    HttpResponse r{200, "application/json", Json(request.QueryParam("history") != "0"), {}};
    r.headers.push_back("Cache-Control: no-store");
    r.headers.push_back("X-Content-Type-Options: nosniff");
    return r;
  }
  const EmbeddedAsset* a = FindStatusAsset(asset);
  if (a == nullptr) return Text(404, absl::StrCat("no such file: ", request.path, "\n"));
  HttpResponse r{
      200, a->content_type, std::string(reinterpret_cast<const char*>(a->data), a->size), {}};
  AddPageHeaders(r);
  r.headers.push_back(page ? "Cache-Control: no-store" : "Cache-Control: max-age=3600");
  return r;
}

}  // namespace kvtier::server
