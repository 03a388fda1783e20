#include "src/index/index_service.h"

#include <chrono>
#include <cmath>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "kvtier/namespace.h"
#include "prometheus/histogram.h"
#include "src/common/status_macros.h"
#include "src/server/status_convert.h"
#include "src/server/wire.h"

namespace kvtier::index {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

}  // namespace

// ---- the gRPC service ---------------------------------------------------------

IndexService::IndexService(ClusterIndex* index, EventIngest* ingest, std::function<bool()> ready,
                           uint32_t max_chain, Secret api_token)
    : index_(index),
      ingest_(ingest),
      ready_(std::move(ready)),
      max_chain_(max_chain),
      api_token_(std::move(api_token)) {
  registry_ = std::make_shared<prometheus::Registry>();
  auto& family = prometheus::BuildHistogram()
                     .Name("kvtier_index_lookup_duration_seconds")
                     .Help("Time to answer an Index/Lookup.")
                     .Register(*registry_);
  lookup_seconds_ = &family.Add(
      {}, prometheus::Histogram::BucketBoundaries{0.00001, 0.000025, 0.00005, 0.0001, 0.00025,
                                                  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25});
}

grpc::Status IndexService::Authorize(const grpc::ServerContext* context) {
  if (api_token_.empty()) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    auth_failures_.fetch_add(1, std::memory_order_relaxed);
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "kvtier-index needs a token: send 'authorization: Bearer <token>'");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ") || !api_token_.Accepts(value)) {
    auth_failures_.fetch_add(1, std::memory_order_relaxed);
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "unknown token");
  }
  return grpc::Status::OK;
}

grpc::Status IndexService::Lookup(grpc::ServerContext* context, const v1::IndexLookupRequest* req,
                                  v1::IndexLookupResponse* resp) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = DoLookup(*req, *resp);
  lookup_seconds_->Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (!s.ok()) lookup_errors_.fetch_add(1, std::memory_order_relaxed);
  const size_t code = static_cast<size_t>(s.code());
  if (code < lookups_by_code_.size()) {
    lookups_by_code_[code].fetch_add(1, std::memory_order_relaxed);
  }
  return server::ToGrpcStatus(s);
}

grpc::Status IndexService::Nodes(grpc::ServerContext* context, const v1::NodesRequest*,
                                 v1::NodesResponse* resp) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  for (const NodeStatus& n : index_->Nodes(absl::Now())) {
    v1::NodeInfo* out = resp->add_nodes();
    out->set_node_id(n.node_id);
    out->set_grpc_address(n.grpc_address);
    out->set_ucx_address(n.ucx_address);
    out->set_incarnation(n.incarnation);
    out->set_alive(n.alive);
    out->set_seconds_since_heartbeat(n.heartbeat_seen ? absl::ToDoubleSeconds(n.since_heartbeat)
                                                      : -1.0);
    out->set_chunks(n.entries);
    out->set_last_sequence(n.last_sequence);
    out->set_sequence_gaps(n.sequence_gaps);
    out->set_source(n.source == NodeSource::kVllm ? "vllm" : "kvtier");
  }
  return grpc::Status::OK;
}

grpc::Status IndexService::Stats(grpc::ServerContext* context, const v1::IndexStatsRequest*,
                                 v1::IndexStatsResponse* resp) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  const ClusterIndexStats s = index_->Stats(absl::Now());
  const IngestCounters c = ingest_->Counters();
  const uint64_t mem = index_->MemoryBytes();
  resp->set_keys(s.keys);
  resp->set_entries(s.entries);
  resp->set_max_entries(s.max_entries);
  resp->set_dropped_entries(s.dropped_entries);
  resp->set_memory_bytes(mem);
  resp->set_bytes_per_entry(s.entries == 0 ? 0.0 : double(mem) / double(s.entries));
  resp->set_batches(c.batches);
  resp->set_events(c.events);
  resp->set_malformed(c.malformed);
  resp->set_duplicates(c.duplicates);
  resp->set_sequence_gaps(c.gaps);
  resp->set_lookups(s.lookups);
  resp->set_vllm_batches(c.vllm_batches);
  resp->set_ready(ready_());
  return grpc::Status::OK;
}

std::vector<prometheus::MetricFamily> IndexService::Collect() const { return registry_->Collect(); }

absl::Status IndexService::DoLookup(const v1::IndexLookupRequest& req,
                                    v1::IndexLookupResponse& resp) {
  if (!ready_()) {
    return absl::UnavailableError("the index is replaying the event stream; retry shortly");
  }
  const int sources =
      (req.keys_size() > 0) + (req.token_ids_size() > 0) + (req.vllm_block_hashes_size() > 0);
  if (sources != 1) {
    return Invalid("keys", "give exactly one of keys, token_ids and vllm_block_hashes");
  }
  const uint32_t max_chain = max_chain_;
  uint64_t ns_id = req.namespace_id();
  std::vector<BlockKey> chain;
  std::vector<uint32_t> chunk_tokens;  // tokens of each chunk (token_ids only)
  uint32_t tokens_per_key = req.tokens_per_key();
  std::optional<Namespace> ns;
  if (req.has_namespace_()) {
    KVTIER_ASSIGN_OR_RETURN(NamespaceOptions opts, wire::NamespaceFromProto(req.namespace_()));
    KVTIER_ASSIGN_OR_RETURN(Namespace n, Namespace::Create(std::move(opts)));
    if (ns_id != 0 && ns_id != n.id()) {
      return Invalid("namespace_id", "does not match the namespace's id");
    }
    ns_id = n.id();
    if (tokens_per_key == 0 && req.vllm_block_hashes_size() == 0) {
      tokens_per_key = n.tokens_per_chunk();
    }
    ns = std::move(n);
  }
  if (req.token_ids_size() > 0) {
    if (!ns.has_value()) return Invalid("namespace", "required with token_ids");
    if (static_cast<uint64_t>(req.token_ids_size()) >
        uint64_t{max_chain} * ns->tokens_per_chunk()) {
      return Invalid("token_ids", absl::StrCat("more than ", max_chain, " chunks"));
    }
    std::vector<TokenId> tokens(req.token_ids().begin(), req.token_ids().end());
    KVTIER_ASSIGN_OR_RETURN(std::vector<ChunkRef> chunks, ns->Chunks(tokens));
    for (const ChunkRef& c : chunks) {
      chain.push_back(c.key);
      chunk_tokens.push_back(c.num_tokens);
      resp.add_keys(wire::KeyToBytes(c.key));
    }
  } else if (req.keys_size() > 0) {
    if (ns_id == 0) return Invalid("namespace_id", "required with keys (or give namespace)");
    KVTIER_ASSIGN_OR_RETURN(chain, wire::KeysFromProto(req.keys(), "keys", max_chain));
  } else {
    if (static_cast<uint32_t>(req.vllm_block_hashes_size()) > max_chain) {
      return Invalid("vllm_block_hashes", absl::StrCat("more than ", max_chain, " hashes"));
    }
    if (ns_id == 0) ns_id = VllmNamespaceId();
    for (int i = 0; i < req.vllm_block_hashes_size(); ++i) {
      if (req.vllm_block_hashes(i).empty()) {
        return Invalid(absl::StrCat("vllm_block_hashes[", i, "]"), "empty");
      }
      chain.push_back(VllmKey(ns_id, req.vllm_block_hashes(i)));
    }
  }
  resp.set_chain_chunks(static_cast<uint32_t>(chain.size()));
  LookupOptions lo;
  lo.max_nodes = req.max_nodes();
  lo.include_tiers = req.include_tiers();
  lo.exclude_nodes.assign(req.exclude_nodes().begin(), req.exclude_nodes().end());
  std::vector<NodeMatchResult> matches = index_->Lookup(ns_id, chain, lo, absl::Now());
  for (NodeMatchResult& m : matches) {
    v1::NodeMatch* out = resp.add_nodes();
    out->set_node_id(m.node_id);
    out->set_matched_chunks(m.matched);
    uint64_t tokens = 0;
    if (!chunk_tokens.empty()) {
      for (uint32_t i = 0; i < m.matched; ++i) tokens += chunk_tokens[i];
    } else {
      tokens = uint64_t{m.matched} * tokens_per_key;
    }
    out->set_matched_tokens(tokens);
    for (size_t t = 1; t < m.tier_counts.size(); ++t) {
      if (m.tier_counts[t] == 0) continue;
      v1::TierCount* tc = out->add_tier_mix();
      tc->set_tier(static_cast<v1::Tier>(t));
      tc->set_chunks(m.tier_counts[t]);
    }
    for (Tier t : m.tiers) out->add_tiers(static_cast<v1::Tier>(t));
    out->set_grpc_address(m.grpc_address);
    out->set_ucx_address(m.ucx_address);
  }
  return absl::OkStatus();
}

server::Metrics::MethodLatency IndexService::LookupLatency() const {
  server::Metrics::MethodLatency m;
  m.method = "Lookup";
  const prometheus::ClientMetric c = lookup_seconds_->Collect();
  for (const prometheus::ClientMetric::Bucket& b : c.histogram.bucket) {
    if (!std::isinf(b.upper_bound)) m.upper_bounds.push_back(b.upper_bound);
    m.bucket_counts.push_back(b.cumulative_count);
  }
  m.count = c.histogram.sample_count;
  m.sum_seconds = c.histogram.sample_sum;
  return m;
}

std::map<std::string, uint64_t> IndexService::LookupsByCode() const {
  std::map<std::string, uint64_t> out;
  for (size_t i = 0; i < lookups_by_code_.size(); ++i) {
    const uint64_t n = lookups_by_code_[i].load(std::memory_order_relaxed);
    if (n > 0) out[absl::StatusCodeToString(static_cast<absl::StatusCode>(i))] = n;
  }
  return out;
}

}  // namespace kvtier::index
