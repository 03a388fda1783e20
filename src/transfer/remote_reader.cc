#include "src/transfer/remote_reader.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "src/common/status_macros.h"
#include "src/core/chunk_format.h"
#include "src/server/status_convert.h"
#include "src/server/wire.h"
#include "src/transfer/peer_calls.h"

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
  if (max_batch_chunks < 1 || max_batch_chunks > 4096) {
    return absl::InvalidArgumentError("ucx.max_batch_chunks: must be within 1..4096");
  }
  if (idle_peer_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ucx.idle_peer_seconds: must be positive");
  }
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
    if (options_.on_lookup_error != nullptr) options_.on_lookup_error(holders.status());
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
  Conn stale;  // a dropped endpoint closes after the lock is released
  {
    absl::MutexLock lock(&mu_);
    auto it = conns_.find(address);
    if (it != conns_.end()) {
      // A watched holder's exit is noticed by the pin's call and the sweep.
      if (!it->second.peer->failed()) {
        it->second.last_used = absl::Now();
        return it->second;
      }
      stale = std::move(it->second);
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
  if (!(*peer)->peer_error_handling()) {
    // Shared memory only: UCX reports no peer failure, but a holder whose
    // arena is mapped here runs on this host and can be watched.
    (void)(*peer)->WatchProcess(resp.pid(), resp.pid_namespace(), resp.start_time());
  }
  Conn conn{resp.node_id(), resp.boot_id(), std::move(*peer), resp.call_secret(), absl::Now()};
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = conns_.try_emplace(address, conn);
  if (!inserted) {
    // Another thread connected meanwhile; keep the newer boot.
    if (it->second.peer->failed() || it->second.boot_id != conn.boot_id) {
      stale = std::move(it->second);
      it->second = conn;
    }
  }
  return it->second;
}

bool RemoteReader::UseCalls(const Conn& conn) const {
  // Without peer failure detection (shared memory only, and no holder
  // process to watch) a call to a dead holder would wait for its deadline;
  // gRPC fails at once.
  return options_.pins_over_ucx && !conn.call_secret.empty() &&
         (conn.peer->peer_error_handling() || conn.peer->watches_process()) && !conn.peer->failed();
}

absl::Status RemoteReader::PinForRead(const Conn& conn, const std::string& address,
                                      const v1::PinForReadRequest& req,
                                      v1::PinForReadResponse& resp, absl::Time deadline) {
  if (UseCalls(conn)) {
    absl::StatusOr<std::string> reply = engine_->Call(
        *conn.peer, EncodePeerCall(PeerCallMethod::kPinForRead, conn.call_secret, req), deadline);
    if (reply.ok()) {
      ucx_pins_.fetch_add(1);
      absl::Status s = DecodePeerReply(*reply, resp);
      clients_->ReportContact(address, conn.node_id, s.ok());
      return s;
    }
    // The holder does not answer calls, or the endpoint failed (the holder
    // died, or restarted: then gRPC reaches the new process, whose boot id
    // makes the caller greet it again): gRPC, within the same deadline.
    if (absl::Now() >= deadline) {
      clients_->ReportContact(address, conn.node_id, false);
      return reply.status();
    }
  }
  grpc::ClientContext ctx;
  clients_->Prepare(ctx, deadline);
  grpc::Status gs = clients_->Stub(address)->PinForRead(&ctx, req, &resp);
  clients_->ReportContact(address, conn.node_id, gs.ok());
  if (!gs.ok()) return absl::UnavailableError(gs.error_message());
  return absl::OkStatus();
}

void RemoteReader::PinBatch(const Conn& conn, const std::string& address,
                            absl::Span<PinWaiter* const> batch, absl::Time deadline) {
  v1::PinForReadRequest req;
  req.set_namespace_id(batch.front()->ns_id);
  req.set_boot_id(conn.boot_id);
  for (const PinWaiter* w : batch) {
    for (const BlockKey& k : w->keys) req.add_keys(wire::KeyToBytes(k));
  }
  // Merged: every chunk held is pinned, so one fetch's miss does not cut
  // the keys of the fetches after it.
  if (batch.size() > 1) req.set_every_held(true);
  v1::PinForReadResponse resp;
  const absl::Status status = PinForRead(conn, address, req, resp, deadline);
  std::shared_ptr<void> lease;
  if (status.ok() && resp.lease_id() != 0) {
    const uint64_t id = resp.lease_id();
    lease =
        std::shared_ptr<void>(nullptr, [this, address, id](void*) { ReleaseLease(address, id); });
  }
  for (PinWaiter* w : batch) {
    w->result.status = status;
    w->result.boot_id = resp.boot_id();
  }
  if (status.ok() && batch.size() == 1) {
    batch.front()->result.slots.assign(resp.slots().begin(), resp.slots().end());
  } else if (status.ok()) {
    absl::flat_hash_map<std::string, int> by_key;
    for (int i = 0; i < resp.slots_size(); ++i) by_key.emplace(resp.slots(i).key(), i);
    for (PinWaiter* w : batch) {
      for (const BlockKey& k : w->keys) {
        auto it = by_key.find(wire::KeyToBytes(k));
        if (it == by_key.end()) break;  // a prefix per fetch, as unmerged
        w->result.slots.push_back(resp.slots(it->second));
      }
    }
  }
  for (PinWaiter* w : batch) {
    if (!w->result.slots.empty()) w->result.lease = lease;
  }
}

RemoteReader::PinResult RemoteReader::PinMerged(const Conn& conn, const std::string& address,
                                                uint64_t ns_id, absl::Span<const BlockKey> keys,
                                                absl::Time deadline) {
  PinWaiter me;
  me.ns_id = ns_id;
  me.keys = keys;
  if (UseCalls(conn) && !options_.merge_ucx_pins) {
    // Cheap enough alone: pinned without waiting for other fetches.
    PinWaiter* const alone[] = {&me};
    PinBatch(conn, address, alone, deadline);
    return std::move(me.result);
  }
  std::vector<PinWaiter*> batch;
  {
    absl::MutexLock lock(&pin_mu_);
    std::unique_ptr<PinQueue>& entry = pin_queues_[address];
    if (entry == nullptr) entry = std::make_unique<PinQueue>();
    PinQueue* q = entry.get();
    q->waiting.push_back(&me);
    auto ready = [&me, q] { return me.done || !q->in_flight; };
    if (!pin_mu_.AwaitWithDeadline(absl::Condition(&ready), deadline)) {
      auto it = std::find(q->waiting.begin(), q->waiting.end(), &me);
      if (it != q->waiting.end()) {
        q->waiting.erase(it);
        PinResult late;
        late.status = absl::DeadlineExceededError("waited past the deadline for a PinForRead");
        return late;
      }
      // Taken into a batch: its leader answers by its own deadline.
      pin_mu_.Await(absl::Condition(&me.done));
    }
    if (me.done) {
      merged_pins_.fetch_add(1);
      return std::move(me.result);
    }
    // This fetch leads: its keys first, then those of the fetches waiting
    // for the same namespace while they fit; the others wait for the next.
    q->in_flight = true;
    batch.push_back(&me);
    size_t total = keys.size();
    std::vector<PinWaiter*> rest;
    for (PinWaiter* w : q->waiting) {
      if (w == &me) continue;
      if (w->ns_id == ns_id && total + w->keys.size() <= options_.max_batch_chunks) {
        batch.push_back(w);
        total += w->keys.size();
      } else {
        rest.push_back(w);
      }
    }
    q->waiting.swap(rest);
  }
  PinBatch(conn, address, batch, deadline);
  absl::MutexLock lock(&pin_mu_);
  for (PinWaiter* w : batch) w->done = true;
  pin_queues_[address]->in_flight = false;
  return std::move(me.result);
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

void RemoteReader::SweepPeers() {
  const absl::Time now = absl::Now();
  absl::flat_hash_set<std::string> down;
  for (const PeerHealth& h : clients_->Health()) {
    if (!h.up) down.insert(h.address);
  }
  std::vector<Conn> closing;  // their endpoints close after the lock is released
  absl::MutexLock lock(&mu_);
  for (auto it = conns_.begin(); it != conns_.end();) {
    Conn& c = it->second;
    const bool failed = c.peer->CheckProcess();
    // A peer whose last contact (e.g. a Lookup) failed at two sweeps in a
    // row loses its endpoint once no fetch has used it for a second: one
    // slow Lookup does not cost a healthy holder its endpoint, and a fetch
    // in progress finds out for itself.
    c.down_sweeps = down.contains(it->first) ? c.down_sweeps + 1 : 0;
    const bool gone = c.down_sweeps >= 2 && now - c.last_used >= absl::Seconds(1);
    const bool idle = now - c.last_used >= options_.idle_peer_timeout;
    if (!failed && !gone && !idle) {
      ++it;
      continue;
    }
    // A holder taken for gone is not waited for when its endpoint closes.
    if (gone) c.peer->MarkFailed();
    (failed || gone ? stale_drops_ : idle_drops_).fetch_add(1);
    closing.push_back(std::move(c));
    conns_.erase(it++);
  }
}

void RemoteReader::ReleaseLoop() {
  absl::Time next_sweep = absl::Now() + absl::Seconds(1);
  for (;;) {
    // Everything queued goes out at once: one Release call per holder.
    std::deque<std::pair<std::string, uint64_t>> batch;
    {
      absl::MutexLock lock(&release_mu_);
      // Wakes at least once a second to sweep the endpoints.
      release_mu_.AwaitWithDeadline(
          absl::Condition(
              +[](RemoteReader* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->release_mu_) {
                return r->stopping_ || !r->releases_.empty();
              },
              this),
          next_sweep);
      if (stopping_ && releases_.empty()) return;  // nothing left
      batch.swap(releases_);
    }
    if (absl::Now() >= next_sweep) {
      SweepPeers();
      next_sweep = absl::Now() + absl::Seconds(1);
    }
    absl::flat_hash_map<std::string, v1::PeerReleaseRequest> by_holder;
    for (const auto& [address, lease] : batch) {
      v1::PeerReleaseRequest& req = by_holder[address];
      if (req.lease_id() == 0) {
        req.set_lease_id(lease);
      } else {
        req.add_lease_ids(lease);
      }
    }
    for (const auto& [address, req] : by_holder) {
      std::optional<Conn> conn;
      {
        absl::MutexLock lock(&mu_);
        auto it = conns_.find(address);
        if (it != conns_.end()) conn = it->second;
      }
      if (conn.has_value() && UseCalls(*conn)) {
        absl::StatusOr<std::string> reply = engine_->Call(
            *conn->peer, EncodePeerCall(PeerCallMethod::kRelease, conn->call_secret, req),
            absl::Now() + options_.transfer_timeout);
        v1::PeerReleaseResponse resp;
        if (reply.ok() && DecodePeerReply(*reply, resp).ok()) continue;
      }
      grpc::ClientContext ctx;
      clients_->Prepare(ctx, absl::Now() + absl::Seconds(1));
      v1::PeerReleaseResponse resp;
      (void)clients_->Stub(address)->Release(&ctx, req, &resp);
    }
  }
}

std::vector<absl::Status> RemoteReader::FetchFrom(const Namespace& ns,
                                                  absl::Span<const BlockKey> keys,
                                                  absl::Span<const BlockKey> parents,
                                                  const std::string& address, absl::Time deadline) {
  std::vector<absl::Status> out(keys.size());
  auto all = [&out](const absl::Status& s) {
    for (absl::Status& o : out) o = s;
    return out;
  };
  absl::StatusOr<Conn> conn = Connect(address, deadline);
  if (!conn.ok()) return all(conn.status());
  PinResult pin = PinMerged(*conn, address, ns.id(), keys, deadline);
  if (!pin.status.ok()) {
    // A fetch that only waited past its deadline behind other fetches' pins
    // leaves the endpoint alone (a call that timed out has closed it).
    if (!absl::IsDeadlineExceeded(pin.status)) Drop(address, conn->peer.get());
    return all(absl::UnavailableError(
        absl::StrCat("peer ", address, ": PinForRead failed: ", pin.status.message())));
  }
  if (pin.slots.empty()) {
    return all(
        absl::NotFoundError(absl::StrCat("peer ", conn->node_id, " no longer holds the chunk")));
  }
  if (pin.boot_id != conn->boot_id) {
    // The holder restarted: its arena and remote key are new. Say Hello again
    // and read under the lease just taken.
    Drop(address, conn->peer.get());
    conn = Connect(address, deadline);
    if (!conn.ok() || conn->boot_id != pin.boot_id) {
      pin.lease.reset();
      return all(conn.ok() ? absl::UnavailableError(
                                 absl::StrCat("peer ", address, " restarted again during the read"))
                           : conn.status());
    }
  }
  // The holder pinned a prefix of `keys`; the rest it no longer holds.
  const size_t pinned = std::min(pin.slots.size(), keys.size());
  for (size_t i = pinned; i < keys.size(); ++i) {
    out[i] =
        absl::NotFoundError(absl::StrCat("peer ", conn->node_id, " no longer holds the chunk"));
  }
  struct Pending {
    size_t index;
    uint64_t handle;
    absl::Span<std::byte> bytes;
  };
  std::vector<Pending> pending;
  std::vector<size_t> written_elsewhere;  // indices reserved by another read
  std::vector<UcxEngine::GetOp> ops;
  pending.reserve(pinned);
  ops.reserve(pinned);
  for (size_t i = 0; i < pinned; ++i) {
    const v1::PinnedSlot& slot = pin.slots[i];
    if (slot.key() != wire::KeyToBytes(keys[i])) {
      out[i] = absl::DataLossError(
          absl::StrCat("peer ", conn->node_id, ": pinned another chunk than asked for"));
      continue;
    }
    if (slot.length() < kChunkHeaderBytes) {
      out[i] = absl::DataLossError(absl::StrCat("peer ", conn->node_id, ": slot of ", slot.length(),
                                                " bytes is shorter than a chunk header"));
      continue;
    }
    ChunkRef ref;
    ref.key = keys[i];
    ref.parent = parents[i];
    ref.num_tokens = slot.num_tokens();
    absl::StatusOr<DramTier::SlotReservation> r = cache_->ReserveSlot(ns, ref);
    if (!r.ok()) {
      out[i] = r.status();
      continue;
    }
    if (r->already_present) {
      // In DRAM, or still being written by another read (a Load of the same
      // prefix): waited for below, so OK means readable now.
      written_elsewhere.push_back(i);
      continue;
    }
    if (r->payload_bytes + kChunkHeaderBytes != slot.length()) {
      cache_->AbortSlot(r->handle);
      out[i] = absl::DataLossError(absl::StrCat("peer ", conn->node_id, ": chunk of ",
                                                slot.length(), " bytes does not match its ",
                                                slot.num_tokens(), " tokens in this namespace"));
      continue;
    }
    std::byte* const dst = cache_->dram().arena().base() + r->payload_offset - kChunkHeaderBytes;
    pending.push_back(Pending{i, r->handle, absl::Span<std::byte>(dst, slot.length())});
    ops.push_back(UcxEngine::GetOp{slot.offset(), pending.back().bytes, absl::OkStatus()});
  }
  uint64_t read_bytes = 0;  // of the chunks committed
  // From a holder whose arena is mapped here the engine copies instead of
  // getting; the payload checksum is then taken while the bytes are copied
  // (in cache-sized pieces) instead of in a second pass over them.
  std::vector<std::optional<uint64_t>> copied_sums(ops.size());
  auto copy = [&](size_t j, const std::byte* src) {
    copied_sums[j] = CopyChunkWithPayloadChecksum(
        absl::Span<const std::byte>(src, ops[j].dst.size()), ops[j].dst.data());
    return absl::OkStatus();
  };
  // Checks and commits chunk j as soon as its get is done, while the other
  // gets are still in flight.
  auto finish = [&](size_t j) {
    const Pending& p = pending[j];
    const v1::PinnedSlot& slot = pin.slots[p.index];
    if (!ops[j].status.ok()) {
      cache_->AbortSlot(p.handle);
      out[p.index] = absl::Status(
          ops[j].status.code(),
          absl::StrCat("peer ", conn->node_id, ": read failed: ", ops[j].status.message()));
      return;
    }
    // The one pass over the payload on this side: the checksum of the
    // transferred bytes against the holder's.
    ChunkExpectation expect;
    expect.namespace_id = ns.id();
    expect.key = keys[p.index];
    expect.layout_signature = ns.layout_signature();
    expect.verify_payload_checksum = false;
    absl::StatusOr<DecodedChunk> decoded = DecodeChunk(p.bytes, expect);
    absl::Status check = decoded.status();
    if (check.ok() &&
        (copied_sums[j].has_value() && decoded->payload.size() + kChunkHeaderBytes == p.bytes.size()
             ? *copied_sums[j]
             : PayloadChecksum(decoded->header.checksum_type, decoded->payload)) !=
            slot.checksum()) {
      check = absl::DataLossError("payload checksum mismatch");
    }
    if (!check.ok()) {
      cache_->AbortSlot(p.handle);
      verify_failures_.fetch_add(1);
      out[p.index] = absl::DataLossError(
          absl::StrCat("peer ", conn->node_id, ": chunk failed its check: ", check.message()));
      return;
    }
    out[p.index] = cache_->CommitSlot(p.handle);
    if (out[p.index].ok()) {
      fetches_.fetch_add(1);
      fetched_bytes_.fetch_add(slot.length());
      read_bytes += slot.length();
    }
  };
  // Every get in flight at once; the lease is released once they are done.
  const absl::Status got =
      ops.empty() ? absl::OkStatus()
                  : engine_->GetMany(*conn->peer, absl::MakeSpan(ops), deadline, finish, copy);
  pin.lease.reset();
  if (read_bytes > 0) clients_->AddBytesRead(address, read_bytes);
  if (!got.ok()) {
    clients_->ReportContact(address, conn->node_id, false);
    Drop(address, conn->peer.get());
  }
  for (size_t i : written_elsewhere) {
    for (DramTier::Presence p;
         (p = cache_->dram().Find(ns.id(), keys[i])) != DramTier::Presence::kReady;) {
      // The other read failed its check (the slot is gone) or is late.
      if (p == DramTier::Presence::kAbsent || absl::Now() >= deadline) {
        out[i] = absl::UnavailableError(absl::StrCat(
            "chunk ", keys[i].ToHex(), ": another read of it did not complete in time"));
        break;
      }
      absl::SleepFor(absl::Microseconds(50));
    }
  }
  return out;
}

absl::Status RemoteReader::Fetch(const Namespace& ns, const BlockKey& key) {
  return FetchMany(ns, absl::MakeConstSpan(&key, 1)).front();
}

std::vector<absl::Status> RemoteReader::FetchMany(const Namespace& ns,
                                                  absl::Span<const BlockKey> keys) {
  if (keys.empty()) return {};
  const absl::Time deadline = absl::Now() + options_.transfer_timeout;
  std::string address;
  std::vector<BlockKey> parents;
  {
    absl::MutexLock lock(&mu_);
    auto it = hints_.find(HintKey{ns.id(), keys[0]});
    if (it != hints_.end()) {
      address = it->second.address;
      parents.push_back(it->second.parent);
      // The keys after it that Locate saw on the same holder join the batch.
      const size_t limit = std::min<size_t>(keys.size(), options_.max_batch_chunks);
      for (size_t i = 1; i < limit; ++i) {
        auto next = hints_.find(HintKey{ns.id(), keys[i]});
        if (next == hints_.end() || next->second.address != address) break;
        parents.push_back(next->second.parent);
      }
    }
  }
  if (address.empty()) {
    const BlockKey one[] = {keys[0]};
    absl::StatusOr<std::vector<RemoteHolder>> holders =
        source_->FindHolders(ns.id(), one, absl::Now() + options_.lookup_timeout);
    if (holders.ok()) {
      for (const RemoteHolder& h : *holders) {
        if (h.node_id != options_.node_id && h.matched_chunks > 0) {
          address = h.peer_address;
          break;
        }
      }
    } else if (options_.on_lookup_error != nullptr) {
      options_.on_lookup_error(holders.status());
    }
    if (address.empty()) {
      fetch_misses_.fetch_add(1);
      return {absl::NotFoundError("no other node holds the chunk")};
    }
    parents.push_back(BlockKey());
  }
  const absl::Span<const BlockKey> batch = keys.subspan(0, parents.size());
  std::vector<absl::Status> out = FetchFrom(ns, batch, parents, address, deadline);
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i].ok()) continue;
    {
      absl::MutexLock lock(&mu_);
      hints_.erase(HintKey{ns.id(), batch[i]});
    }
    (absl::IsNotFound(out[i]) ? fetch_misses_ : fetch_failures_).fetch_add(1);
  }
  return out;
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
  s.idle_drops = idle_drops_.load();
  s.ucx_pins = ucx_pins_.load();
  s.merged_pins = merged_pins_.load();
  absl::MutexLock lock(&mu_);
  for (const auto& [address, c] : conns_) {
    s.peers.push_back(
        RemotePeerInfo{c.node_id, address, c.boot_id, c.peer->transports(), c.peer->failed()});
  }
  return s;
}

}  // namespace kvtier::transfer
