// The kvtier.v1.Index gRPC service over a ClusterIndex: Lookup (token ids,
// chunk keys or vLLM block hashes -> per node matched prefix and tier mix),
// Nodes and Stats. kvtier-index serves it; `kvtier bench index` runs it
// alone over a preloaded index.
//
// Thread-safety: gRPC calls it from any number of threads.
#ifndef KVTIER_SRC_INDEX_INDEX_SERVICE_H_
#define KVTIER_SRC_INDEX_INDEX_SERVICE_H_

#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvtier/v1/index.grpc.pb.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "src/common/secret.h"
#include "src/index/cluster_index.h"
#include "src/index/event_ingest.h"
#include "src/server/metrics.h"

namespace prometheus {
class Histogram;
}

namespace kvtier::index {

class IndexService final : public v1::Index::Service {
 public:
  // `index` and `ingest` must outlive the service; `ready` says whether
  // Lookup may answer (UNAVAILABLE otherwise); `max_chain` bounds the keys
  // (or chunks of token ids) of one Lookup. With an `api_token` every call
  // must send "authorization: Bearer <api_token>": UNAUTHENTICATED when it
  // sends none, PERMISSION_DENIED for another token.
  IndexService(ClusterIndex* index, EventIngest* ingest, std::function<bool()> ready,
               uint32_t max_chain, Secret api_token = Secret());

  grpc::Status Lookup(grpc::ServerContext*, const v1::IndexLookupRequest* req,
                      v1::IndexLookupResponse* resp) override;
  grpc::Status Nodes(grpc::ServerContext*, const v1::NodesRequest*,
                     v1::NodesResponse* resp) override;
  grpc::Status Stats(grpc::ServerContext*, const v1::IndexStatsRequest*,
                     v1::IndexStatsResponse* resp) override;

  uint64_t lookup_errors() const { return lookup_errors_.load(); }
  // Calls refused for a missing or wrong token.
  uint64_t auth_failures() const { return auth_failures_.load(); }
  // The service's own metrics (the Lookup latency histogram).
  std::vector<prometheus::MetricFamily> Collect() const;
  // The Lookup latency histogram as the status page reads it.
  server::Metrics::MethodLatency LookupLatency() const;
  // Finished Lookups by status code name ("OK", "INVALID_ARGUMENT", ...).
  std::map<std::string, uint64_t> LookupsByCode() const;

 private:
  grpc::Status Authorize(const grpc::ServerContext* context);
  absl::Status DoLookup(const v1::IndexLookupRequest& req, v1::IndexLookupResponse& resp);

  ClusterIndex* const index_;
  EventIngest* const ingest_;
  const std::function<bool()> ready_;
  const uint32_t max_chain_;
  const Secret api_token_;  // the server may Set it (a re-read api_token_file)
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Histogram* lookup_seconds_ = nullptr;
  std::atomic<uint64_t> lookup_errors_{0};
  std::atomic<uint64_t> auth_failures_{0};
  std::array<std::atomic<uint64_t>, 17> lookups_by_code_{};  // by absl::StatusCode
};

}  // namespace kvtier::index

#endif  // KVTIER_SRC_INDEX_INDEX_SERVICE_H_
