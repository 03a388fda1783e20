// Per-namespace traffic counters of kvtierd, for the status page's namespace
// table and its "saved" panel. The cache's own counters are per tier only;
// these are kept by the RPC layer, keyed by Namespace::id().
//
// A namespace is known by its id, model id and revision; its cache salt (a
// tenant secret) is never kept, only whether it has one. At most
// `max_namespaces` are tracked one by one; traffic of any later namespace is
// added to a single entry with id "other".
//
// Thread-safety: every method is thread-safe (one mutex; the RPC paths take
// it once per call).
#ifndef KVTIER_SRC_SERVER_NAMESPACE_STATS_H_
#define KVTIER_SRC_SERVER_NAMESPACE_STATS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "kvtier/namespace.h"

namespace kvtier::server {

// Counters of one namespace; monotonic.
struct NamespaceCounters {
  std::string id;                  // 16 hex digits of Namespace::id(), or "other"
  std::string model_id;            // "" for "other"
  std::string model_revision;      // "" when unversioned
  bool salted = false;             // has a cache salt (a tenant's private space)
  uint64_t lookups = 0;            // Lookup calls
  uint64_t lookup_chunks = 0;      // chunk keys asked about
  uint64_t lookup_hit_chunks = 0;  // chunks Lookup reported cached
  uint64_t saved_chunks = 0;       // chunks stored by Save or Commit
  uint64_t saved_bytes = 0;        // their payload bytes
  uint64_t loaded_chunks = 0;      // chunks served by Load or Pin
  uint64_t loaded_bytes = 0;       // their payload bytes
  uint64_t loaded_tokens = 0;      // their tokens: prefill the engine did not redo
};

class NamespaceStats {
 public:
  // `max_namespaces` >= 1.
  explicit NamespaceStats(size_t max_namespaces = 1024) : max_namespaces_(max_namespaces) {}

  void AddLookup(const Namespace& ns, uint64_t chunks, uint64_t hit_chunks);
  void AddSaved(const Namespace& ns, uint64_t chunks, uint64_t bytes);
  void AddLoaded(const Namespace& ns, uint64_t chunks, uint64_t bytes, uint64_t tokens);

  // Every namespace seen, in the order first seen ("other" last when present).
  std::vector<NamespaceCounters> Snapshot() const;

 private:
  NamespaceCounters& Entry(const Namespace& ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_namespaces_;
  mutable absl::Mutex mu_;
  std::vector<NamespaceCounters> entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, size_t> index_ ABSL_GUARDED_BY(mu_);  // id -> entries_ index
  NamespaceCounters other_ ABSL_GUARDED_BY(mu_);
  bool has_other_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_NAMESPACE_STATS_H_
