#include "src/transfer/remote_reader.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "src/common/status_macros.h"
#include "src/core/chunk_format.h"
#include "src/server/status_convert.h"
#include "src/server/wire.h"

namespace kvtier::transfer {

absl::Status RemoteReaderOptions::Validate() const {
  if (node_id.empty()) return absl::InvalidArgumentError("node_id: required");
  if (lookup_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ucx.lookup_timeout_ms: must be positive");
  }
  if (transfer_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ucx.transfer_timeout_ms: must be positive");
  }
  if (max_hints == 0) return absl::InvalidArgumentError("ucx.max_hints: must be positive");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RemoteReader>> RemoteReader::Create(
    EmbeddedCache* cache, UcxEngine* engine, HolderSource* source, PeerClients* clients,
    const RemoteReaderOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::unique_ptr<RemoteReader>(new RemoteReader(cache, engine, source, clients, options));
}

RemoteReader::~RemoteReader() {
  {
    absl::MutexLock lock(&release_mu_);
    stopping_ = true;
  }
  if (releaser_.joinable()) releaser_.join();
  absl::flat_hash_map<std::string, Conn> conns;
  absl::MutexLock lock(&mu_);
  conns.swap(conns_);
}

void RemoteReader::Remember(uint64_t ns, absl::Span<const BlockKey> keys, const BlockKey& before,
                            const std::string& address) {
  absl::MutexLock lock(&mu_);
  if (hints_.size() + keys.size() > options_.max_hints) hints_.clear();
  BlockKey parent = before;
  for (const BlockKey& k : keys) {
    hints_[HintKey{ns, k}] = Hint{address, parent};
    parent = k;
  }
}

std::vector<ChunkLocation> RemoteReader::Locate(const Namespace& ns,
                                                absl::Span<const BlockKey> chain, size_t from) {
  std::vector<ChunkLocation> out;
  if (from >= chain.size()) return out;
  lookups_.fetch_add(1);
  absl::StatusOr<std::vector<RemoteHolder>> holders =
      source_->FindHolders(ns.id(), chain.subspan(from), absl::Now() + options_.lookup_timeout);
  if (!holders.ok()) {
    lookup_errors_.fetch_add(1);
    return out;
  }
  for (const RemoteHolder& h : *holders) {
    if (h.node_id == options_.node_id || h.matched_chunks == 0) continue;
    const size_t n = std::min(h.matched_chunks, chain.size() - from);
    Remember(ns.id(), chain.subspan(from, n), from > 0 ? chain[from - 1] : BlockKey(),
             h.peer_address);
    out.assign(n, ChunkLocation{Tier::kRemote, h.node_id});
    break;  // longest first
  }
  remote_chunks_.fetch_add(out.size());
  return out;
}

absl::StatusOr<RemoteReader::Conn> RemoteReader::Connect(const std::string& address,
                                                         absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    auto it = conns_.find(address);
    if (it != conns_.end()) {
      if (!it->second.peer->failed()) return it->second;
      conns_.erase(it);
      stale_drops_.fetch_add(1);
    }
  }
  grpc::ClientContext ctx;
  clients_->Prepare(ctx, deadline);
  v1::HelloRequest req;
  req.set_node_id(options_.node_id);
  v1::HelloResponse resp;
  grpc::Status gs = clients_->Stub(address)->Hello(&ctx, req, &resp);
  clients_->ReportContact(address, resp.node_id(), gs.ok());
  if (!gs.ok()) {
    return absl::UnavailableError(
        absl::StrCat("peer ", address, ": Hello failed: ", gs.error_message()));
  }
  if (resp.worker_addresses().empty()) {
    return absl::UnavailableError(absl::StrCat("peer ", address, ": no UCX worker address"));
  }
  // Spread readers over the holder's workers.
  const std::string& worker =
      resp.worker_addresses(static_cast<int>(hellos_.load() % resp.worker_addresses_size()));
  absl::StatusOr<std::shared_ptr<UcxPeer>> peer =
      engine_->Connect(worker, resp.arena_rkey(), resp.arena_base(), resp.arena_bytes());
  if (!peer.ok()) {
    return absl::UnavailableError(
        absl::StrCat("peer ", address, " (", resp.node_id(), "): ", peer.status().message()));
  }
  hellos_.fetch_add(1);
  Conn conn{resp.node_id(), resp.boot_id(), std::move(*peer)};
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = conns_.try_emplace(address, conn);
  if (!inserted) {
    // Another thread connected meanwhile; keep the newer boot.
    if (it->second.peer->failed() || it->second.boot_id != conn.boot_id) it->second = conn;
  }
  return it->second;
}

void RemoteReader::Drop(const std::string& address, const UcxPeer* peer) {
  Conn dropped;  // its endpoint closes after the lock is released
  absl::MutexLock lock(&mu_);
  auto it = conns_.find(address);
  if (it == conns_.end() || it->second.peer.get() != peer) return;
  dropped = std::move(it->second);
  conns_.erase(it);
  stale_drops_.fetch_add(1);
}

void RemoteReader::ReleaseLease(const std::string& address, uint64_t lease_id) {
  if (lease_id == 0) return;
  absl::MutexLock lock(&release_mu_);
  releases_.emplace_back(address, lease_id);
}

void RemoteReader::ReleaseLoop() {
  for (;;) {
    std::pair<std::string, uint64_t> next;
    {
      absl::MutexLock lock(&release_mu_);
      release_mu_.Await(absl::Condition(
          +[](RemoteReader* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->release_mu_) {
            return r->stopping_ || !r->releases_.empty();
          },
          this));
      if (releases_.empty()) return;  // stopping, and nothing left
      next = std::move(releases_.front());
      releases_.pop_front();
    }
    grpc::ClientContext ctx;
    clients_->Prepare(ctx, absl::Now() + absl::Seconds(1));
    v1::PeerReleaseRequest req;
    req.set_lease_id(next.second);
    v1::PeerReleaseResponse resp;
    (void)clients_->Stub(next.first)->Release(&ctx, req, &resp);
  }
}

absl::Status RemoteReader::FetchFrom(const Namespace& ns, const BlockKey& key,
                                     const std::string& address, const BlockKey& parent,
                                     absl::Time deadline) {
  absl::StatusOr<Conn> conn = Connect(address, deadline);
  if (!conn.ok()) return conn.status();
  v1::PinForReadRequest req;
  req.set_namespace_id(ns.id());
  req.add_keys(wire::KeyToBytes(key));
  req.set_boot_id(conn->boot_id);
  v1::PinForReadResponse resp;
  {
    grpc::ClientContext ctx;
    clients_->Prepare(ctx, deadline);
    grpc::Status gs = clients_->Stub(address)->PinForRead(&ctx, req, &resp);
    clients_->ReportContact(address, conn->node_id, gs.ok());
    if (!gs.ok()) {
      Drop(address, conn->peer.get());
      return absl::UnavailableError(
          absl::StrCat("peer ", address, ": PinForRead failed: ", gs.error_message()));
    }
  }
  if (resp.slots_size() == 0) {
    return absl::NotFoundError(absl::StrCat("peer ", conn->node_id, " no longer holds the chunk"));
  }
  if (resp.boot_id() != conn->boot_id) {
    // The holder restarted: its arena and remote key are new. Say Hello again
    // and read under the lease just taken.
    Drop(address, conn->peer.get());
    conn = Connect(address, deadline);
    if (!conn.ok() || conn->boot_id != resp.boot_id()) {
      ReleaseLease(address, resp.lease_id());
      return conn.ok() ? absl::UnavailableError(
                             absl::StrCat("peer ", address, " restarted again during the read"))
                       : conn.status();
    }
  }
  const v1::PinnedSlot& slot = resp.slots(0);
  if (slot.length() < kChunkHeaderBytes) {
    ReleaseLease(address, resp.lease_id());
    return absl::DataLossError(absl::StrCat("peer ", conn->node_id, ": slot of ", slot.length(),
                                            " bytes is shorter than a chunk header"));
  }
  ChunkRef ref;
  ref.key = key;
  ref.parent = parent;
  ref.num_tokens = slot.num_tokens();
  absl::StatusOr<DramTier::SlotReservation> r = cache_->ReserveSlot(ns, ref);
  if (!r.ok()) {
    ReleaseLease(address, resp.lease_id());
    return r.status();
  }
  if (r->already_present) {
    ReleaseLease(address, resp.lease_id());
    return absl::OkStatus();
  }
  if (r->payload_bytes + kChunkHeaderBytes != slot.length()) {
    cache_->AbortSlot(r->handle);
    ReleaseLease(address, resp.lease_id());
    return absl::DataLossError(absl::StrCat("peer ", conn->node_id, ": chunk of ", slot.length(),
                                            " bytes does not match its ", slot.num_tokens(),
                                            " tokens in this namespace"));
  }
  std::byte* const dst = cache_->dram().arena().base() + r->payload_offset - kChunkHeaderBytes;
  const absl::Span<std::byte> bytes(dst, slot.length());
  absl::Status got = engine_->Get(*conn->peer, slot.offset(), bytes, deadline);
  ReleaseLease(address, resp.lease_id());
  if (!got.ok()) {
    clients_->ReportContact(address, conn->node_id, false);
    cache_->AbortSlot(r->handle);
    Drop(address, conn->peer.get());
    return absl::Status(got.code(),
                        absl::StrCat("peer ", conn->node_id, ": read failed: ", got.message()));
  }
  clients_->AddBytesRead(address, slot.length());
  ChunkExpectation expect;
  expect.namespace_id = ns.id();
  expect.key = key;
  expect.layout_signature = ns.layout_signature();
  expect.verify_payload_checksum = false;
  absl::StatusOr<DecodedChunk> decoded = DecodeChunk(bytes, expect);
  absl::Status check = decoded.status();
  if (check.ok() &&
      PayloadChecksum(decoded->header.checksum_type, decoded->payload) != slot.checksum()) {
    check = absl::DataLossError("payload checksum mismatch");
  }
  if (!check.ok()) {
    cache_->AbortSlot(r->handle);
    verify_failures_.fetch_add(1);
    return absl::DataLossError(
        absl::StrCat("peer ", conn->node_id, ": chunk failed its check: ", check.message()));
  }
  KVTIER_RETURN_IF_ERROR(cache_->CommitSlot(r->handle));
  fetches_.fetch_add(1);
  fetched_bytes_.fetch_add(slot.length());
  return absl::OkStatus();
}

absl::Status RemoteReader::Fetch(const Namespace& ns, const BlockKey& key) {
  const absl::Time deadline = absl::Now() + options_.transfer_timeout;
  std::string address;
  BlockKey parent;
  {
    absl::MutexLock lock(&mu_);
    auto it = hints_.find(HintKey{ns.id(), key});
    if (it != hints_.end()) {
      address = it->second.address;
      parent = it->second.parent;
    }
  }
  if (address.empty()) {
    const BlockKey one[] = {key};
    absl::StatusOr<std::vector<RemoteHolder>> holders =
        source_->FindHolders(ns.id(), one, absl::Now() + options_.lookup_timeout);
    if (holders.ok()) {
      for (const RemoteHolder& h : *holders) {
        if (h.node_id != options_.node_id && h.matched_chunks > 0) {
          address = h.peer_address;
          break;
        }
      }
    }
    if (address.empty()) {
      fetch_misses_.fetch_add(1);
      return absl::NotFoundError("no other node holds the chunk");
    }
  }
  absl::Status s = FetchFrom(ns, key, address, parent, deadline);
  if (s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    hints_.erase(HintKey{ns.id(), key});
  }
  (absl::IsNotFound(s) ? fetch_misses_ : fetch_failures_).fetch_add(1);
  return s;
}

RemoteReaderStats RemoteReader::Stats() const {
  RemoteReaderStats s;
  s.lookups = lookups_.load();
  s.lookup_errors = lookup_errors_.load();
  s.remote_chunks = remote_chunks_.load();
  s.fetches = fetches_.load();
  s.fetched_bytes = fetched_bytes_.load();
  s.fetch_misses = fetch_misses_.load();
  s.fetch_failures = fetch_failures_.load();
  s.verify_failures = verify_failures_.load();
  s.hellos = hellos_.load();
  s.stale_drops = stale_drops_.load();
  absl::MutexLock lock(&mu_);
  for (const auto& [address, c] : conns_) {
    s.peers.push_back(
        RemotePeerInfo{c.node_id, address, c.boot_id, c.peer->transports(), c.peer->failed()});
  }
  return s;
}

}  // namespace kvtier::transfer
