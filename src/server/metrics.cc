#include "src/server/metrics.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace kvtier::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

const char* kCodeNames[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void AddSample(MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric m;
  m.label = std::move(labels);
  if (f.type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

absl::string_view MethodName(Method m) {
  static constexpr const char* kNames[] = {"Lookup", "Save",  "Load",    "Reserve",
                                           "Commit", "Pin",   "Release", "Prefetch",
                                           "Evict",  "Stats", "Health",  "Config"};
  const size_t i = static_cast<size_t>(m);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

Metrics::Metrics(std::function<CacheStats()> cache_stats,
                 std::function<DaemonGauges()> daemon_gauges, std::string version)
    : cache_stats_(std::move(cache_stats)),
      daemon_gauges_(std::move(daemon_gauges)),
      version_(std::move(version)),
      start_time_(NowSeconds()),
      registry_(std::make_shared<prometheus::Registry>()) {
  rpc_total_ = &prometheus::BuildCounter()
                    .Name("kvtier_rpc_requests_total")
                    .Help("RPCs finished, by method and gRPC status code.")
                    .Register(*registry_);
  inflight_ = &prometheus::BuildGauge()
                   .Name("kvtier_inflight_requests")
                   .Help("RPCs being served now.")
                   .Register(*registry_)
                   .Add({});
  auto& durations = prometheus::BuildHistogram()
                        .Name("kvtier_rpc_duration_seconds")
                        .Help("Time to serve an RPC, by method.")
                        .Register(*registry_);
  const prometheus::Histogram::BucketBoundaries buckets = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
      0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,   10};
  for (size_t i = 0; i < rpc_duration_.size(); ++i) {
    rpc_duration_[i] =
        &durations.Add({{"method", std::string(MethodName(static_cast<Method>(i)))}}, buckets);
  }
}

Metrics::RpcTimer::RpcTimer(Metrics* m, Method method)
    : m_(m), method_(method), start_(std::chrono::steady_clock::now()) {
  m_->inflight_->Increment();
}

Metrics::RpcTimer::~RpcTimer() {
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  m_->inflight_->Decrement();
  m_->rpc_duration_[static_cast<size_t>(method_)]->Observe(secs);
  const char* code =
      code_ >= 0 && code_ < static_cast<int>(std::size(kCodeNames)) ? kCodeNames[code_] : "UNKNOWN";
  m_->rpc_total_->Add({{"method", std::string(MethodName(method_))}, {"code", code}}).Increment();
}

std::string Metrics::Render() const {
  std::vector<MetricFamily> families = registry_->Collect();
  const CacheStats st = cache_stats_();
  const DaemonGauges dg = daemon_gauges_();

  MetricFamily hits =
      Family("kvtier_hits_total", "Chunks found by Load, by tier.", MetricType::Counter);
  MetricFamily misses =
      Family("kvtier_misses_total", "Loads that found nothing, by tier.", MetricType::Counter);
  MetricFamily bytes =
      Family("kvtier_bytes_total", "Payload bytes moved, by tier and direction (read, write).",
             MetricType::Counter);
  MetricFamily saves = Family("kvtier_saves_total", "Chunks stored, by tier.", MetricType::Counter);
  MetricFamily rejections = Family("kvtier_save_rejections_total",
                                   "Saves refused for lack of room, by tier.", MetricType::Counter);
  MetricFamily evictions = Family("kvtier_evictions_total", "Chunks evicted to make room, by tier.",
                                  MetricType::Counter);
  MetricFamily corrupt = Family(
      "kvtier_checksum_failures_total",
      "Chunks whose header or checksum failed a check (dropped), by tier.", MetricType::Counter);
  MetricFamily res_chunks =
      Family("kvtier_resident_chunks", "Chunks held now, by tier.", MetricType::Gauge);
  MetricFamily res_bytes =
      Family("kvtier_resident_bytes", "Bytes of slots holding chunks, by tier.", MetricType::Gauge);
  MetricFamily pinned =
      Family("kvtier_pinned_chunks", "Chunks pinned now, by tier.", MetricType::Gauge);
  MetricFamily capacity =
      Family("kvtier_capacity_bytes", "Configured capacity, by tier.", MetricType::Gauge);
  for (const TierStats& t : st.tiers) {
    const std::string tier(TierName(t.tier));
    AddSample(hits, {{"tier", tier}}, static_cast<double>(t.hits));
    AddSample(misses, {{"tier", tier}}, static_cast<double>(t.misses));
    AddSample(bytes, {{"direction", "read"}, {"tier", tier}}, static_cast<double>(t.bytes_read));
    AddSample(bytes, {{"direction", "write"}, {"tier", tier}},
              static_cast<double>(t.bytes_written));
    AddSample(saves, {{"tier", tier}}, static_cast<double>(t.saves));
    AddSample(rejections, {{"tier", tier}}, static_cast<double>(t.save_rejections));
    AddSample(evictions, {{"tier", tier}}, static_cast<double>(t.evictions));
    AddSample(corrupt, {{"tier", tier}}, static_cast<double>(t.corrupt_chunks));
    AddSample(res_chunks, {{"tier", tier}}, static_cast<double>(t.chunks));
    AddSample(res_bytes, {{"tier", tier}}, static_cast<double>(t.used_bytes));
    AddSample(pinned, {{"tier", tier}}, static_cast<double>(t.pinned_chunks));
    AddSample(capacity, {{"tier", tier}}, static_cast<double>(t.capacity_bytes));
  }
  MetricFamily lookups = Family("kvtier_lookups_total", "Lookup calls.", MetricType::Counter);
  AddSample(lookups, {}, static_cast<double>(st.lookups));
  MetricFamily lookup_chunks = Family("kvtier_lookup_chunks_total",
                                      "Chunk keys asked about by Lookup.", MetricType::Counter);
  AddSample(lookup_chunks, {}, static_cast<double>(st.lookup_chunks));
  MetricFamily lookup_hits = Family("kvtier_lookup_hit_chunks_total",
                                    "Chunks Lookup reported cached.", MetricType::Counter);
  AddSample(lookup_hits, {}, static_cast<double>(st.lookup_hits));
  MetricFamily leases =
      Family("kvtier_leases", "Reservations and pins held for clients.", MetricType::Gauge);
  AddSample(leases, {}, static_cast<double>(dg.leases));
  MetricFamily grants =
      Family("kvtier_shm_grants_total", "Arena file descriptors handed to local clients.",
             MetricType::Counter);
  AddSample(grants, {}, static_cast<double>(dg.shm_grants));
  MetricFamily info =
      Family("kvtier_build_info", "Always 1; the version in a label.", MetricType::Gauge);
  AddSample(info, {{"version", version_}}, 1);
  MetricFamily start =
      Family("kvtier_start_time_seconds", "Unix time the daemon started.", MetricType::Gauge);
  AddSample(start, {}, start_time_);
  for (MetricFamily* f : {&hits, &misses, &bytes, &saves, &rejections, &evictions, &corrupt,
                          &res_chunks, &res_bytes, &pinned, &capacity, &lookups, &lookup_chunks,
                          &lookup_hits, &leases, &grants, &info, &start}) {
    families.push_back(std::move(*f));
  }
  std::string out = prometheus::TextSerializer().Serialize(families);
  for (const auto& section : sections_) out += section();
  return out;
}

}  // namespace kvtier::server
