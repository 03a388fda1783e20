// The operators' status page: a self-contained HTML page (uPlot and the
// page's own script and style are compiled into the binary, nothing is
// fetched from elsewhere) and the JSON document it reads, /api/v1/status.
// docs/status-api.md describes the document field by field.
//
// The page is not tied to kvtierd: a binary hands it a snapshot provider (a
// function returning its current counters as a StatusSnapshot) and routes
// its HTTP requests through Handle(). A sampler thread calls the provider
// every sample_interval and keeps a ring of derived figures (rates, hit rate,
// latency percentiles per interval) that the page charts.
//
// Access: read-only. With a bearer token configured, "/" and
// "/api/v1/status" need it (an "Authorization: Bearer" header, or a `token`
// query parameter for the page itself, which the page then sends as a
// header); with require_token and no token they answer 403. The static
// assets (public library code, no figures) need no token.
//
// Thread-safety: Handle, Json and SampleNow may be called from any thread.
#ifndef KVTIER_SRC_SERVER_STATUS_PAGE_H_
#define KVTIER_SRC_SERVER_STATUS_PAGE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "kvtier/cache.h"
#include "src/common/secret.h"
#include "src/server/http_server.h"
#include "src/server/metrics.h"
#include "src/server/namespace_stats.h"

namespace kvtier::server {

// A node this process talks to (another kvtierd, the index).
struct StatusPeer {
  std::string name;             // node name
  std::string address;          // where it is reached
  std::string transport;        // e.g. "ucx-rdma", "ucx-tcp", "grpc"
  bool up = false;              // reachable at the last check
  uint64_t bytes_sent = 0;      // monotonic
  uint64_t bytes_received = 0;  // monotonic
};

// What a binary reports at one instant. Counters are monotonic; the page
// derives rates from successive snapshots.
struct StatusSnapshot {
  std::string service;                               // "kvtierd", "kvtier-index"
  std::string node;                                  // node name
  std::string version;                               // build version
  double start_time_seconds = 0;                     // Unix time the process started
  bool ready = false;                                // /readyz would answer 200
  uint64_t lookups = 0;                              // Lookup calls
  uint64_t lookup_chunks = 0;                        // chunk keys asked about
  uint64_t lookup_hit_chunks = 0;                    // of those, cached
  uint64_t prefill_tokens_saved = 0;                 // tokens served from the cache
  std::vector<TierStats> tiers;                      // fastest first
  std::vector<NamespaceCounters> namespaces;         // per namespace
  std::vector<StatusPeer> peers;                     // empty when none
  std::vector<Metrics::MethodLatency> latencies;     // RPC durations by method
  std::map<std::string, uint64_t> requests_by_code;  // finished RPCs by status code name
  std::map<std::string, uint64_t> counters;          // the binary's own figures by name
};

struct StatusPageOptions {
  // Heading and <title> of the page.
  std::string title = "kvtier";
  // Returns the current figures; called on the sampler thread (and by
  // SampleNow). Required.
  std::function<StatusSnapshot()> snapshot;
  // Time between samples (10 ms .. 60 s).
  absl::Duration sample_interval = absl::Seconds(1);
  // Samples kept for the charts (2 .. 86400).
  uint32_t history_samples = 300;
  // Prefill throughput of one GPU, in tokens per second: saved tokens divided
  // by it give the GPU-seconds they stand for (> 0).
  double tokens_per_gpu_second = 10000;
  // Bearer token(s) for "/" and "/api/v1/status"; empty = none.
  Secret bearer_token;
  // Refuse "/" and "/api/v1/status" (403) while bearer_token is empty: set
  // when the listener is reachable from other hosts.
  bool require_token = false;
  // Start the sampler thread. Off: samples are taken only by SampleNow.
  bool start_sampler = true;

  // InvalidArgument naming the field.
  absl::Status Validate() const;
};

class StatusPage {
 public:
  static absl::StatusOr<std::unique_ptr<StatusPage>> Create(StatusPageOptions options);
  ~StatusPage();
  StatusPage(const StatusPage&) = delete;
  StatusPage& operator=(const StatusPage&) = delete;

  // Serves "/", "/index.html", "/api/v1/status" and "/static/*"; nullopt for
  // any other path (the caller serves it).
  std::optional<HttpResponse> Handle(const HttpRequest& request) const;

  // The /api/v1/status document; `with_history` false leaves out "history".
  std::string Json(bool with_history = true) const;

  // Takes one sample now (the sampler calls this every interval).
  void SampleNow();

  // Stops the sampler; safe to call twice.
  void Stop();

 private:
  // Figures derived from two successive snapshots.
  struct Sample {
    uint64_t seq = 0;
    double time = 0;  // Unix seconds
    std::optional<double> hit_rate;
    double requests_per_second = 0;
    double errors_per_second = 0;
    double evictions_per_second = 0;
    double checksum_failures_per_second = 0;
    double prefill_tokens_saved_per_second = 0;
    std::optional<double> p50, p90, p99;                                  // seconds
    std::map<std::string, double> read_bps, write_bps, occupancy;         // by tier name
    std::map<std::string, std::optional<double>> method_p50, method_p99;  // by method
    std::map<std::string, double> method_rps;                             // by method
  };

  explicit StatusPage(StatusPageOptions options) : options_(std::move(options)) {}
  bool Authorized(const HttpRequest& request) const;

  const StatusPageOptions options_;
  mutable absl::Mutex mu_;
  std::optional<StatusSnapshot> last_ ABSL_GUARDED_BY(mu_);
  absl::Time last_time_ ABSL_GUARDED_BY(mu_);
  std::deque<Sample> history_ ABSL_GUARDED_BY(mu_);
  uint64_t seq_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Notification stop_;
  std::thread sampler_;
};

// Quantile `q` (0..1) of a histogram given as cumulative bucket counts
// (`counts` has upper_bounds.size() + 1 entries, the last for +Inf), by
// linear interpolation inside the bucket as Prometheus' histogram_quantile
// does; nullopt when the histogram is empty. A quantile in the +Inf bucket
// is the largest finite bound.
std::optional<double> HistogramQuantile(double q, const std::vector<double>& upper_bounds,
                                        const std::vector<uint64_t>& counts);

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_STATUS_PAGE_H_
