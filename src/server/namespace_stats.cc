#include "src/server/namespace_stats.h"

namespace kvtier::server {

NamespaceCounters& NamespaceStats::Entry(const Namespace& ns) {
  auto it = index_.find(ns.id());
  if (it != index_.end()) return entries_[it->second];
  if (entries_.size() >= max_namespaces_) {
    if (!has_other_) {
      other_.id = "other";
      has_other_ = true;
    }
    return other_;
  }
  NamespaceCounters c;
  c.id = ns.IdHex();
  c.model_id = ns.options().model_id;
  c.model_revision = ns.options().model_revision;
  c.salted = !ns.options().cache_salt.empty();
  index_.emplace(ns.id(), entries_.size());
  entries_.push_back(std::move(c));
  return entries_.back();
}

void NamespaceStats::AddLookup(const Namespace& ns, uint64_t chunks, uint64_t hit_chunks) {
  absl::MutexLock lock(&mu_);
  NamespaceCounters& c = Entry(ns);
  c.lookups += 1;
  c.lookup_chunks += chunks;
  c.lookup_hit_chunks += hit_chunks;
}

void NamespaceStats::AddSaved(const Namespace& ns, uint64_t chunks, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  NamespaceCounters& c = Entry(ns);
  c.saved_chunks += chunks;
  c.saved_bytes += bytes;
}

void NamespaceStats::AddLoaded(const Namespace& ns, uint64_t chunks, uint64_t bytes,
                               uint64_t tokens) {
  absl::MutexLock lock(&mu_);
  NamespaceCounters& c = Entry(ns);
  c.loaded_chunks += chunks;
  c.loaded_bytes += bytes;
  c.loaded_tokens += tokens;
}

std::vector<NamespaceCounters> NamespaceStats::Snapshot() const {
  absl::MutexLock lock(&mu_);
  std::vector<NamespaceCounters> out = entries_;
  if (has_other_) out.push_back(other_);
  return out;
}

}  // namespace kvtier::server
