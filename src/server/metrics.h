// kvtierd's Prometheus metrics.
//
// Cache counters are read from Cache::Stats() at scrape time (they already
// live in the tiers as atomics), so the hot path pays nothing for them. RPCs
// are timed into a histogram per method. Names follow Prometheus conventions
// (base units, _total for counters); docs/daemon.md lists them.
//
// Thread-safety: every method is thread-safe.
#ifndef KVTIER_SRC_SERVER_METRICS_H_
#define KVTIER_SRC_SERVER_METRICS_H_

#include <array>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "kvtier/cache.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "src/server/namespace_stats.h"

namespace kvtier::server {

// RPC methods, for per-method metrics.
enum class Method {
  kLookup,
  kSave,
  kLoad,
  kReserve,
  kCommit,
  kPin,
  kRelease,
  kPrefetch,
  kEvict,
  kStats,
  kHealth,
  kConfig,
  kCount,
};
absl::string_view MethodName(Method m);

// What the exposition adds beside the cache's own counters.
struct DaemonGauges {
  uint64_t leases = 0;      // reservations and pins held for clients
  uint64_t shm_grants = 0;  // arena fds handed out
};

class Metrics {
 public:
  Metrics(std::function<CacheStats()> cache_stats, std::function<DaemonGauges()> daemon_gauges,
          std::string version);

  // Times one RPC: counts it in flight while alive, then records its
  // duration and status code.
  class RpcTimer {
   public:
    RpcTimer(Metrics* m, Method method);
    ~RpcTimer();
    void set_code(int grpc_code) { code_ = grpc_code; }

   private:
    Metrics* m_;
    Method method_;
    int code_ = 0;
    std::chrono::steady_clock::time_point start_;
  };

  // The text exposition format (version 0.0.4).
  std::string Render() const;

  // One method's RPC duration histogram, as the exposition has it.
  struct MethodLatency {
    std::string method;
    std::vector<double> upper_bounds;     // seconds, ascending; +Inf not included
    std::vector<uint64_t> bucket_counts;  // cumulative; upper_bounds.size() + 1 (last: +Inf)
    uint64_t count = 0;
    double sum_seconds = 0;
  };
  // Adds per-namespace series (kvtier_namespace_*, kvtier_prefill_tokens_saved_total)
  // read from `source` at each Render. Call before the first Render.
  void SetNamespaceSource(std::function<std::vector<NamespaceCounters>()> source);

  // Every method's histogram (methods never called included, all zero).
  std::vector<MethodLatency> Latencies() const;
  // Finished RPCs by gRPC status code name ("OK", "NOT_FOUND", ...), all
  // methods together.
  std::map<std::string, uint64_t> RequestsByCode() const;
  // Appends the text `render` returns (exposition format, complete families)
  // to every Render. Call before serving; `render` must be thread-safe.
  void AddSection(std::function<std::string()> render) { sections_.push_back(std::move(render)); }

 private:
  std::function<CacheStats()> cache_stats_;
  std::function<DaemonGauges()> daemon_gauges_;
  std::string version_;
  std::function<std::vector<NamespaceCounters>()> namespaces_;
  std::vector<std::function<std::string()>> sections_;
  double start_time_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* rpc_total_;
  prometheus::Gauge* inflight_;
  std::array<prometheus::Histogram*, static_cast<size_t>(Method::kCount)> rpc_duration_{};
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_METRICS_H_
