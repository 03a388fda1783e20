#include "src/server/metrics.h"

#include <cmath>
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
  if (st.tiering.blob_enabled) {
    const TieringStats& t = st.tiering;
    MetricFamily up =
        Family("kvtier_blob_bytes_total",
               "HTTP body bytes to and from Blob, by direction (up, down).", MetricType::Counter);
    AddSample(up, {{"direction", "up"}}, static_cast<double>(t.blob_bytes_sent));
    AddSample(up, {{"direction", "down"}}, static_cast<double>(t.blob_bytes_received));
    MetricFamily req = Family("kvtier_blob_requests_total",
                              "Blob HTTP requests (attempts), by result.", MetricType::Counter);
    for (const auto& [result, n] : std::initializer_list<std::pair<const char*, uint64_t>>{
             {"ok", t.blob_requests_ok},
             {"not_found", t.blob_requests_not_found},
             {"denied", t.blob_requests_denied},
             {"client_error", t.blob_requests_client_error},
             {"throttled", t.blob_requests_throttled},
             {"server_error", t.blob_requests_server_error},
             {"connection_error", t.blob_requests_connection_error}}) {
      AddSample(req, {{"result", result}}, static_cast<double>(n));
    }
    MetricFamily retries =
        Family("kvtier_blob_retries_total", "Blob requests sent again after a retryable failure.",
               MetricType::Counter);
    AddSample(retries, {}, static_cast<double>(t.blob_retries));
    MetricFamily degraded = Family(
        "kvtier_blob_degraded",
        "1 while Blob is unreachable and the cache serves DRAM and NVMe only.", MetricType::Gauge);
    AddSample(degraded, {}, t.blob_degraded ? 1 : 0);
    MetricFamily degraded_events =
        Family("kvtier_blob_degraded_events_total", "Times the Blob tier became degraded.",
               MetricType::Counter);
    AddSample(degraded_events, {}, static_cast<double>(t.blob_degraded_events));
    MetricFamily uploads =
        Family("kvtier_blob_uploads_total", "Chunks offered to Blob write-behind, by outcome.",
               MetricType::Counter);
    AddSample(uploads, {{"result", "ok"}}, static_cast<double>(t.blob_uploaded));
    AddSample(uploads, {{"result", "failed"}}, static_cast<double>(t.blob_upload_failures));
    AddSample(uploads, {{"result", "skipped_queue_full"}},
              static_cast<double>(t.blob_skipped_queue_full));
    AddSample(uploads, {{"result", "skipped_deleting"}},
              static_cast<double>(t.blob_skipped_deleting));
    AddSample(uploads, {{"result", "skipped_degraded"}},
              static_cast<double>(t.blob_skipped_degraded));
    MetricFamily queued =
        Family("kvtier_blob_queued_chunks", "Chunks waiting in the Blob write-behind queue.",
               MetricType::Gauge);
    AddSample(queued, {}, static_cast<double>(t.blob_queued));
    MetricFamily promoted = Family("kvtier_blob_promoted_total",
                                   "Chunks downloaded from Blob into DRAM.", MetricType::Counter);
    AddSample(promoted, {}, static_cast<double>(t.blob_promoted));
    MetricFamily probes =
        Family("kvtier_blob_probes_total",
               "Get Blob Properties sent by Lookup, by result (hit, sent).", MetricType::Counter);
    AddSample(probes, {{"result", "sent"}}, static_cast<double>(t.blob_probes));
    AddSample(probes, {{"result", "hit"}}, static_cast<double>(t.blob_probe_hits));
    MetricFamily late =
        Family("kvtier_blob_deadline_misses_total",
               "Blob reads and probes cut short by their deadline (misses).", MetricType::Counter);
    AddSample(late, {}, static_cast<double>(t.blob_deadline_misses));
    for (MetricFamily* f : {&up, &req, &retries, &degraded, &degraded_events, &uploads, &queued,
                            &promoted, &probes, &late}) {
      families.push_back(std::move(*f));
    }
  }
  for (MetricFamily* f : {&hits, &misses, &bytes, &saves, &rejections, &evictions, &corrupt,
                          &res_chunks, &res_bytes, &pinned, &capacity, &lookups, &lookup_chunks,
                          &lookup_hits, &leases, &grants, &info, &start}) {
    families.push_back(std::move(*f));
  }
  if (namespaces_) {
    MetricFamily ns_lookup =
        Family("kvtier_namespace_lookup_chunks_total",
               "Chunk keys asked about by Lookup, by namespace.", MetricType::Counter);
    MetricFamily ns_hit =
        Family("kvtier_namespace_lookup_hit_chunks_total",
               "Chunks Lookup reported cached, by namespace.", MetricType::Counter);
    MetricFamily ns_saved =
        Family("kvtier_namespace_saved_bytes_total",
               "Payload bytes stored (Save, Reserve), by namespace.", MetricType::Counter);
    MetricFamily ns_loaded =
        Family("kvtier_namespace_loaded_bytes_total",
               "Payload bytes served (Load, Pin), by namespace.", MetricType::Counter);
    MetricFamily ns_tokens = Family(
        "kvtier_namespace_loaded_tokens_total",
        "Tokens of the chunks served (prefill not redone), by namespace.", MetricType::Counter);
    MetricFamily saved_tokens = Family("kvtier_prefill_tokens_saved_total",
                                       "Tokens of the chunks served by Load and Pin, all "
                                       "namespaces: prefill the engines did not redo.",
                                       MetricType::Counter);
    uint64_t total_tokens = 0;
    for (const NamespaceCounters& n : namespaces_()) {
      std::vector<ClientMetric::Label> l = {{"model", n.model_id}, {"namespace", n.id}};
      AddSample(ns_lookup, l, static_cast<double>(n.lookup_chunks));
      AddSample(ns_hit, l, static_cast<double>(n.lookup_hit_chunks));
      AddSample(ns_saved, l, static_cast<double>(n.saved_bytes));
      AddSample(ns_loaded, l, static_cast<double>(n.loaded_bytes));
      AddSample(ns_tokens, l, static_cast<double>(n.loaded_tokens));
      total_tokens += n.loaded_tokens;
    }
    AddSample(saved_tokens, {}, static_cast<double>(total_tokens));
    for (MetricFamily* f :
         {&ns_lookup, &ns_hit, &ns_saved, &ns_loaded, &ns_tokens, &saved_tokens}) {
      families.push_back(std::move(*f));
    }
  }
  std::string out = prometheus::TextSerializer().Serialize(families);
  for (const auto& section : sections_) out += section();
  return out;
}

void Metrics::SetNamespaceSource(std::function<std::vector<NamespaceCounters>()> source) {
  namespaces_ = std::move(source);
}

std::vector<Metrics::MethodLatency> Metrics::Latencies() const {
  std::vector<MethodLatency> out;
  for (size_t i = 0; i < rpc_duration_.size(); ++i) {
    const ClientMetric m = rpc_duration_[i]->Collect();
    MethodLatency l;
    l.method = std::string(MethodName(static_cast<Method>(i)));
    l.count = m.histogram.sample_count;
    l.sum_seconds = m.histogram.sample_sum;
    for (const ClientMetric::Bucket& b : m.histogram.bucket) {
      if (!std::isinf(b.upper_bound)) l.upper_bounds.push_back(b.upper_bound);
      l.bucket_counts.push_back(b.cumulative_count);
    }
    out.push_back(std::move(l));
  }
  return out;
}

std::map<std::string, uint64_t> Metrics::RequestsByCode() const {
  std::map<std::string, uint64_t> out;
  for (const MetricFamily& f : rpc_total_->Collect()) {
    for (const ClientMetric& m : f.metric) {
      for (const ClientMetric::Label& label : m.label) {
        if (label.name == "code") out[label.value] += static_cast<uint64_t>(m.counter.value);
      }
    }
  }
  return out;
}

}  // namespace kvtier::server
