#include "src/server/cache_service.h"

#include <sys/random.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/impl/codegen/method_handler.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/impl/codegen/rpc_service_method.h"
#include "src/common/status_macros.h"
#include "src/server/status_convert.h"
#include "src/server/wire.h"

namespace kvtier::server {
namespace {

using v1::ChunkStatus;

void SetChunkStatus(ChunkStatus* out, const BlockKey& key, const absl::Status& s) {
  out->set_key(wire::KeyToBytes(key));
  out->set_code(static_cast<int>(s.code()));
  if (!s.ok()) out->set_message(std::string(s.message()));
}

absl::Status TooMany(absl::string_view field, size_t n, size_t max, absl::string_view limit) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": ", n, " entries exceed the limit of ", max, " (", limit, ")"));
}

uint64_t RandomU64() {
  uint64_t v = 0;
  while (getrandom(&v, sizeof(v), 0) != static_cast<ssize_t>(sizeof(v))) {
  }
  return v;
}

// Aborts a DRAM slot reservation unless released. (0 is a valid handle.)
class SlotGuard {
 public:
  explicit SlotGuard(EmbeddedCache* cache) : cache_(cache) {}
  ~SlotGuard() { Abort(); }
  void Hold(uint64_t handle) {
    Abort();
    handle_ = handle;
    held_ = true;
  }
  uint64_t Release() {
    held_ = false;
    return handle_;
  }
  void Abort() {
    if (held_) cache_->AbortSlot(handle_);
    held_ = false;
  }
  bool held() const { return held_; }

 private:
  EmbeddedCache* cache_;
  uint64_t handle_ = 0;
  bool held_ = false;
};

}  // namespace

template <typename Req, typename Resp>
void CacheService::AddUnary(const char* name, grpc::Status (CacheService::*fn)(grpc::ServerContext*,
                                                                               const Req*, Resp*)) {
  AddMethod(new grpc::internal::RpcServiceMethod(
      name, grpc::internal::RpcMethod::NORMAL_RPC,
      new grpc::internal::RpcMethodHandler<CacheService, Req, Resp, grpc::protobuf::MessageLite,
                                           grpc::protobuf::MessageLite>(
          [fn](CacheService* s, grpc::ServerContext* ctx, const Req* req, Resp* resp) {
            return (s->*fn)(ctx, req, resp);
          },
          this)));
}

CacheService::CacheService(EmbeddedCache* cache, const Authenticator* auth, Metrics* metrics,
                           Logger* log, ServiceOptions options)
    : cache_(cache), auth_(auth), metrics_(metrics), log_(log), options_(std::move(options)) {
  AddUnary("/kvtier.v1.Cache/Lookup", &CacheService::Lookup);
  AddMethod(new grpc::internal::RpcServiceMethod(
      "/kvtier.v1.Cache/Save", grpc::internal::RpcMethod::CLIENT_STREAMING,
      new grpc::internal::ClientStreamingHandler<CacheService, wire::SaveFrame, v1::SaveResponse>(
          [](CacheService* s, grpc::ServerContext* ctx, grpc::ServerReader<wire::SaveFrame>* reader,
             v1::SaveResponse* resp) { return s->Save(ctx, reader, resp); },
          this)));
  AddMethod(new grpc::internal::RpcServiceMethod(
      "/kvtier.v1.Cache/Load", grpc::internal::RpcMethod::SERVER_STREAMING,
      new grpc::internal::ServerStreamingHandler<CacheService, v1::LoadRequest, wire::LoadFrame>(
          [](CacheService* s, grpc::ServerContext* ctx, const v1::LoadRequest* req,
             grpc::ServerWriter<wire::LoadFrame>* writer) { return s->Load(ctx, req, writer); },
          this)));
  AddUnary("/kvtier.v1.Cache/Reserve", &CacheService::Reserve);
  AddUnary("/kvtier.v1.Cache/Commit", &CacheService::Commit);
  AddUnary("/kvtier.v1.Cache/Pin", &CacheService::Pin);
  AddUnary("/kvtier.v1.Cache/Release", &CacheService::Release);
  AddUnary("/kvtier.v1.Cache/Prefetch", &CacheService::Prefetch);
  AddUnary("/kvtier.v1.Cache/Evict", &CacheService::Evict);
  AddUnary("/kvtier.v1.Cache/Stats", &CacheService::Stats);
  AddUnary("/kvtier.v1.Cache/Health", &CacheService::Health);
  AddUnary("/kvtier.v1.Cache/Config", &CacheService::Config);
}

CacheService::~CacheService() {
  absl::flat_hash_map<uint64_t, Lease> leases;
  {
    absl::MutexLock lock(&leases_mu_);
    leases.swap(leases_);
  }
  for (auto& [id, lease] : leases) {
    if (lease.kind == Lease::Kind::kReservation) cache_->AbortSlot(lease.slot_handle);
  }
}

// ---- common ---------------------------------------------------------------

absl::StatusOr<Principal> CacheService::Authenticate(grpc::ServerContext* ctx) const {
  if (draining_.load()) return absl::UnavailableError("kvtierd is shutting down");
  std::string authorization;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) authorization.assign(it->second.data(), it->second.size());
  return auth_->Authenticate(authorization);
}

absl::StatusOr<Namespace> CacheService::OpenNamespace(const Principal& who, bool present,
                                                      const v1::Namespace& ns) const {
  if (!present) return absl::InvalidArgumentError("namespace: required");
  KVTIER_ASSIGN_OR_RETURN(NamespaceOptions options, wire::NamespaceFromProto(ns));
  KVTIER_RETURN_IF_ERROR(auth_->AuthorizeNamespace(who, options));
  return Namespace::Create(std::move(options));
}

grpc::Status CacheService::Finish(Metrics::RpcTimer& timer, Method method, const Principal* who,
                                  const absl::Status& status) const {
  timer.set_code(static_cast<int>(status.code()));
  if (!status.ok()) {
    const LogLevel level = absl::IsPermissionDenied(status) || absl::IsUnauthenticated(status) ||
                                   absl::IsInternal(status) || absl::IsDataLoss(status)
                               ? LogLevel::kWarn
                               : LogLevel::kDebug;
    log_->Log(level, "rpc failed",
              {{"method", MethodName(method)},
               {"principal", who != nullptr ? who->name : std::string()},
               {"code", absl::StatusCodeToString(status.code())},
               {"error", std::string(status.message())}});
  }
  return ToGrpcStatus(status);
}

absl::Status CacheService::RequireArena(const Principal& who, absl::string_view method) {
  if (who.shared_memory) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      method, ": tenant '", who.name, "' may not use the shared arena (shared_memory)"));
}

uint64_t CacheService::NewLeaseId() {
  for (;;) {
    uint64_t id = RandomU64();
    if (id != 0 && !leases_.contains(id)) return id;
  }
}

absl::Status CacheService::TakeLeaseRoom(size_t wanted, const std::string& owner) {
  absl::MutexLock lock(&leases_mu_);
  if (lease_room_ + wanted > options_.max_leases) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "leases: ", lease_room_, " held and ", wanted, " more asked for; the limit is ",
        options_.max_leases, " (limits.max_leases): commit or release some first"));
  }
  auto it = lease_room_by_owner_.find(owner);
  const uint64_t held = it == lease_room_by_owner_.end() ? 0 : it->second;
  if (held + wanted > options_.max_leases_per_principal) {
    return absl::ResourceExhaustedError(
        absl::StrCat("leases: '", owner, "' holds ", held, " and asked for ", wanted,
                     " more; the limit per principal is ", options_.max_leases_per_principal,
                     " (limits.max_leases_per_principal): commit or release some first"));
  }
  lease_room_ += wanted;
  lease_room_by_owner_[owner] += wanted;
  return absl::OkStatus();
}

void CacheService::GiveBackLeaseRoom(size_t unused, const std::string& owner) {
  if (unused == 0) return;
  absl::MutexLock lock(&leases_mu_);
  lease_room_ -= unused;
  auto it = lease_room_by_owner_.find(owner);
  if ((it->second -= unused) == 0) lease_room_by_owner_.erase(it);
}

uint64_t CacheService::AddLeaseLocked(Lease lease) {
  const uint64_t id = NewLeaseId();
  leases_.emplace(id, std::move(lease));
  return id;
}

CacheService::Lease CacheService::EraseLeaseLocked(
    absl::flat_hash_map<uint64_t, Lease>::iterator it) {
  Lease lease = std::move(it->second);
  leases_.erase(it);
  --lease_room_;
  auto owner = lease_room_by_owner_.find(lease.owner);
  if (--owner->second == 0) lease_room_by_owner_.erase(owner);
  return lease;
}

std::optional<CacheService::Lease> CacheService::TakeLease(uint64_t id, Lease::Kind kind,
                                                           const std::string& owner) {
  absl::MutexLock lock(&leases_mu_);
  auto it = leases_.find(id);
  if (it == leases_.end() || it->second.kind != kind || it->second.owner != owner) {
    return std::nullopt;
  }
  return EraseLeaseLocked(it);
}

size_t CacheService::ExpireLeases(absl::Time now) {
  std::vector<Lease> expired;
  {
    absl::MutexLock lock(&leases_mu_);
    for (auto it = leases_.begin(); it != leases_.end();) {
      if (it->second.expires <= now) {
        expired.push_back(EraseLeaseLocked(it++));
      } else {
        ++it;
      }
    }
  }
  for (Lease& l : expired) {
    if (l.kind == Lease::Kind::kReservation) cache_->AbortSlot(l.slot_handle);
    log_->Info("lease expired",
               {{"kind", l.kind == Lease::Kind::kPin ? "pin" : "reservation"}, {"owner", l.owner}});
  }
  return expired.size();  // pins are released as `expired` goes out of scope
}

uint64_t CacheService::leases() const {
  absl::MutexLock lock(&leases_mu_);
  return leases_.size();
}

// ---- handlers ---------------------------------------------------------------

#define KVTIER_RPC_BODY(method, call)                                 \
  InflightScope inflight(inflight_);                                  \
  Metrics::RpcTimer timer(metrics_, method);                          \
  absl::StatusOr<Principal> who = Authenticate(ctx);                  \
  if (!who.ok()) return Finish(timer, method, nullptr, who.status()); \
  return Finish(timer, method, &*who, call)

grpc::Status CacheService::Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* req,
                                  v1::LookupResponse* resp) {
  KVTIER_RPC_BODY(Method::kLookup, DoLookup(ctx, *req, *resp, *who));
}
grpc::Status CacheService::Save(grpc::ServerContext* ctx,
                                grpc::ServerReader<wire::SaveFrame>* reader,
                                v1::SaveResponse* resp) {
  KVTIER_RPC_BODY(Method::kSave, DoSave(ctx, reader, *resp, *who));
}
grpc::Status CacheService::Load(grpc::ServerContext* ctx, const v1::LoadRequest* req,
                                grpc::ServerWriter<wire::LoadFrame>* writer) {
  KVTIER_RPC_BODY(Method::kLoad, DoLoad(ctx, *req, writer, *who));
}
grpc::Status CacheService::Reserve(grpc::ServerContext* ctx, const v1::ReserveRequest* req,
                                   v1::ReserveResponse* resp) {
  KVTIER_RPC_BODY(Method::kReserve, DoReserve(ctx, *req, *resp, *who));
}
grpc::Status CacheService::Commit(grpc::ServerContext* ctx, const v1::CommitRequest* req,
                                  v1::CommitResponse* resp) {
  KVTIER_RPC_BODY(Method::kCommit, DoCommit(ctx, *req, *resp, *who));
}
grpc::Status CacheService::Pin(grpc::ServerContext* ctx, const v1::PinRequest* req,
                               v1::PinResponse* resp) {
  KVTIER_RPC_BODY(Method::kPin, DoPin(ctx, *req, *resp, *who));
}
grpc::Status CacheService::Release(grpc::ServerContext* ctx, const v1::ReleaseRequest* req,
                                   v1::ReleaseResponse* resp) {
  KVTIER_RPC_BODY(Method::kRelease, DoRelease(ctx, *req, *resp, *who));
}
grpc::Status CacheService::Prefetch(grpc::ServerContext* ctx, const v1::PrefetchRequest* req,
                                    v1::PrefetchResponse* resp) {
  KVTIER_RPC_BODY(Method::kPrefetch, DoPrefetch(ctx, *req, *resp, *who));
}
grpc::Status CacheService::Evict(grpc::ServerContext* ctx, const v1::EvictRequest* req,
                                 v1::EvictResponse* resp) {
  KVTIER_RPC_BODY(Method::kEvict, DoEvict(ctx, *req, *resp, *who));
}

#undef KVTIER_RPC_BODY

grpc::Status CacheService::Stats(grpc::ServerContext* ctx, const v1::StatsRequest*,
                                 v1::StatsResponse* resp) {
  InflightScope inflight(inflight_);
  Metrics::RpcTimer timer(metrics_, Method::kStats);
  absl::StatusOr<Principal> who = Authenticate(ctx);
  if (!who.ok()) return Finish(timer, Method::kStats, nullptr, who.status());
  const CacheStats st = cache_->Stats();
  resp->set_lookups(st.lookups);
  resp->set_lookup_chunks(st.lookup_chunks);
  resp->set_lookup_hits(st.lookup_hits);
  for (const TierStats& t : st.tiers) wire::TierStatsToProto(t, resp->add_tiers());
  resp->set_huge_pages(st.huge_pages);
  resp->set_version(options_.version);
  resp->set_leases(leases());
  return Finish(timer, Method::kStats, &*who, absl::OkStatus());
}

grpc::Status CacheService::Health(grpc::ServerContext*, const v1::HealthRequest*,
                                  v1::HealthResponse* resp) {
  InflightScope inflight(inflight_);
  Metrics::RpcTimer timer(metrics_, Method::kHealth);
  resp->set_status(draining_.load() ? v1::HealthResponse::DRAINING : v1::HealthResponse::SERVING);
  resp->set_version(options_.version);
  resp->set_shm_socket(options_.shm_socket);
  resp->set_arena_id(options_.arena_id);
  resp->set_arena_bytes(cache_->dram().arena().size());
  return Finish(timer, Method::kHealth, nullptr, absl::OkStatus());
}

grpc::Status CacheService::Config(grpc::ServerContext* ctx, const v1::ConfigRequest*,
                                  v1::ConfigResponse* resp) {
  InflightScope inflight(inflight_);
  Metrics::RpcTimer timer(metrics_, Method::kConfig);
  absl::StatusOr<Principal> who = Authenticate(ctx);
  if (!who.ok()) return Finish(timer, Method::kConfig, nullptr, who.status());
  absl::Status s = auth_->RequireAdmin(*who, "Config");
  if (s.ok()) resp->set_yaml(options_.config_yaml);
  return Finish(timer, Method::kConfig, &*who, s);
}

// ---- shared-memory control sessions ---------------------------------------------

absl::StatusOr<std::string> CacheService::Control(const Principal& principal,
                                                  shm::ControlMethod method,
                                                  absl::string_view body) {
  InflightScope inflight(inflight_);
  Principal who = principal;
  auto serve = [&](Method m, auto req, auto resp, auto handler) -> absl::StatusOr<std::string> {
    Metrics::RpcTimer timer(metrics_, m);
    absl::Status s;
    if (draining_.load()) {
      s = absl::UnavailableError("kvtierd is shutting down");
    } else if (!req.ParseFromArray(body.data(), static_cast<int>(body.size()))) {
      s = absl::InvalidArgumentError(
          absl::StrCat("request: not a valid ", req.GetTypeName(), " message"));
    } else {
      s = (this->*handler)(nullptr, req, resp, who);
    }
    (void)Finish(timer, m, &who, s);
    if (!s.ok()) return s;
    return resp.SerializeAsString();
  };
  switch (method) {
    case shm::ControlMethod::kLookup:
      return serve(Method::kLookup, v1::LookupRequest(), v1::LookupResponse(),
                   &CacheService::DoLookup);
    case shm::ControlMethod::kReserve:
      return serve(Method::kReserve, v1::ReserveRequest(), v1::ReserveResponse(),
                   &CacheService::DoReserve);
    case shm::ControlMethod::kCommit:
      return serve(Method::kCommit, v1::CommitRequest(), v1::CommitResponse(),
                   &CacheService::DoCommit);
    case shm::ControlMethod::kPin:
      return serve(Method::kPin, v1::PinRequest(), v1::PinResponse(), &CacheService::DoPin);
    case shm::ControlMethod::kRelease:
      return serve(Method::kRelease, v1::ReleaseRequest(), v1::ReleaseResponse(),
                   &CacheService::DoRelease);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("method: ", static_cast<int>(method), " is not a control method"));
}

// ---- Lookup -------------------------------------------------------------------

absl::Status CacheService::DoLookup(grpc::ServerContext*, const v1::LookupRequest& req,
                                    v1::LookupResponse& resp, Principal& who) {
  if (req.keys_size() > 0 && req.token_ids_size() > 0) {
    return absl::InvalidArgumentError("keys, token_ids: set one of them, not both");
  }
  if (static_cast<size_t>(req.token_ids_size()) > options_.max_tokens_per_request) {
    return TooMany("token_ids", req.token_ids_size(), options_.max_tokens_per_request,
                   "limits.max_tokens_per_request");
  }
  KVTIER_ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                          wire::KeysFromProto(req.keys(), "keys", options_.max_keys_per_request));
  KVTIER_ASSIGN_OR_RETURN(Namespace ns, OpenNamespace(who, req.has_namespace_(), req.namespace_()));
  if (req.token_ids_size() > 0) {
    std::vector<TokenId> tokens(req.token_ids().begin(), req.token_ids().end());
    KVTIER_ASSIGN_OR_RETURN(std::vector<ChunkRef> chunks, ns.Chunks(tokens, req.include_partial()));
    for (const ChunkRef& c : chunks) wire::ChunkToProto(c, resp.add_chunks());
    keys = Namespace::Keys(chunks);
  } else if (absl::Status s = ValidateChain(keys); !s.ok()) {
    // ValidateChain names positions as chain[i]; the wire field is keys[i].
    std::string msg(s.message());
    if (msg.rfind("chain", 0) == 0) msg.replace(0, 5, "keys");
    return absl::InvalidArgumentError(msg);
  }
  KVTIER_ASSIGN_OR_RETURN(LookupResult r, cache_->Lookup(ns, keys));
  if (remote_ != nullptr && r.matched < keys.size()) {
    std::vector<ChunkLocation> more = remote_->Locate(ns, keys, r.matched);
    r.matched += more.size();
    r.chunks.insert(r.chunks.end(), more.begin(), more.end());
  }
  if (options_.namespace_stats != nullptr) {
    options_.namespace_stats->AddLookup(ns, keys.size(), r.matched);
  }
  resp.set_matched(static_cast<uint32_t>(r.matched));
  bool any_remote = false;
  for (const ChunkLocation& loc : r.chunks) {
    resp.add_tiers(static_cast<v1::Tier>(loc.tier));
    any_remote |= !loc.holder.empty();
  }
  if (any_remote) {
    for (const ChunkLocation& loc : r.chunks) resp.add_holders(loc.holder);
  }
  return absl::OkStatus();
}

// ---- Save ---------------------------------------------------------------------

absl::Status CacheService::DoSave(grpc::ServerContext*, grpc::ServerReader<wire::SaveFrame>* reader,
                                  v1::SaveResponse& resp, Principal& who) {
  wire::SaveFrame msg;
  std::optional<Namespace> ns;
  std::byte* const arena = cache_->dram().arena().base();
  // The chunk being received.
  bool active = false;
  ChunkRef ref;
  uint64_t expected = 0, got = 0;
  std::byte* dst = nullptr;  // its slot's payload, when one is reserved
  absl::Status chunk_status;
  SlotGuard slot(cache_);
  uint32_t chunks = 0, saved = 0;
  uint64_t saved_bytes = 0;

  while (reader->Read(&msg)) {
    if (!ns.has_value()) {
      KVTIER_ASSIGN_OR_RETURN(ns, OpenNamespace(who, msg.has_namespace, msg.ns));
    } else if (msg.has_namespace) {
      return absl::InvalidArgumentError("namespace: only the first message of a stream has it");
    }
    const size_t data_bytes = msg.received.size();
    if (data_bytes > options_.max_message_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("data: ", data_bytes, " bytes in one message exceed the limit of ",
                       options_.max_message_bytes, " (limits.max_message_bytes)"));
    }
    if (msg.has_chunk) {
      if (active) {
        return absl::InvalidArgumentError(absl::StrCat("chunk: a new chunk started before chunk ",
                                                       ref.key.ToHex(), " had its ", expected,
                                                       " bytes (got ", got, ")"));
      }
      if (++chunks > options_.max_keys_per_request) {
        return TooMany("chunk", chunks, options_.max_keys_per_request,
                       "limits.max_keys_per_request, chunks per stream");
      }
      KVTIER_ASSIGN_OR_RETURN(ref, wire::ChunkFromProto(msg.chunk, "chunk"));
      expected = ns->PayloadBytes(ref.num_tokens);
      got = 0;
      dst = nullptr;
      chunk_status = absl::OkStatus();
      absl::StatusOr<DramTier::SlotReservation> r = cache_->ReserveSlot(*ns, ref);
      if (absl::IsInvalidArgument(r.status())) return r.status();  // the request is wrong
      if (!r.ok()) {
        chunk_status = r.status();  // no room: this chunk's bytes are dropped
      } else if (!r->already_present) {
        slot.Hold(r->handle);
        dst = arena + r->payload_offset;
      }
      active = true;
    }
    if (data_bytes > 0) {
      if (!active) return absl::InvalidArgumentError("data: payload bytes before any chunk");
      if (got + data_bytes > expected) {
        return absl::InvalidArgumentError(absl::StrCat("data: chunk ", ref.key.ToHex(),
                                                       " gets more than its ", expected, " bytes (",
                                                       ref.num_tokens, " tokens)"));
      }
      // The one copy of a streamed save: from gRPC's buffers into the slot.
      if (dst != nullptr) msg.received.CopyTo(dst + got);
      got += data_bytes;
    }
    if (active && got == expected) {
      if (slot.held()) chunk_status = cache_->CommitSlot(slot.Release());
      if (chunk_status.ok()) {
        ++saved;
        saved_bytes += expected;
      }
      SetChunkStatus(resp.add_results(), ref.key, chunk_status);
      active = false;
    }
  }
  if (active) {
    return absl::InvalidArgumentError(absl::StrCat("data: the stream ended with chunk ",
                                                   ref.key.ToHex(), " incomplete (", got, " of ",
                                                   expected, " bytes)"));
  }
  if (!ns.has_value()) return absl::InvalidArgumentError("namespace: required (empty stream)");
  if (options_.namespace_stats != nullptr) {
    options_.namespace_stats->AddSaved(*ns, saved, saved_bytes);
  }
  resp.set_saved(saved);
  return absl::OkStatus();
}

// ---- Load ---------------------------------------------------------------------

absl::StatusOr<ChunkPin> CacheService::PinLocalOrRemote(const Namespace& ns,
                                                        absl::Span<const BlockKey> rest) {
  const BlockKey& key = rest.front();
  absl::StatusOr<ChunkPin> pin = cache_->Pin(ns, key);
  if (remote_ == nullptr || !absl::IsNotFound(pin.status())) return pin;
  const absl::Status fetched = remote_->FetchMany(ns, rest).front();
  if (!fetched.ok()) {
    return absl::NotFoundError(
        absl::StrCat("not cached here, and not read from another node: ", fetched.message()));
  }
  return cache_->Pin(ns, key);
}

absl::Status CacheService::DoLoad(grpc::ServerContext* ctx, const v1::LoadRequest& req,
                                  grpc::ServerWriter<wire::LoadFrame>* writer, Principal& who) {
  KVTIER_ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                          wire::KeysFromProto(req.keys(), "keys", options_.max_keys_per_request));
  KVTIER_ASSIGN_OR_RETURN(Namespace ns, OpenNamespace(who, req.has_namespace_(), req.namespace_()));
  wire::LoadFrame msg;
  uint64_t loaded = 0, loaded_bytes = 0, loaded_tokens = 0;
  absl::Cleanup count = [&] {
    if (options_.namespace_stats != nullptr && loaded > 0) {
      options_.namespace_stats->AddLoaded(ns, loaded, loaded_bytes, loaded_tokens);
    }
  };
  for (size_t i = 0; i < keys.size(); ++i) {
    const BlockKey& key = keys[i];
    if (ctx->IsCancelled()) return absl::CancelledError("Load: the client went away");
    absl::StatusOr<ChunkPin> pin = PinLocalOrRemote(ns, absl::MakeConstSpan(keys).subspan(i));
    msg.Clear();
    msg.has_chunk = true;
    msg.chunk.set_key(wire::KeyToBytes(key));
    if (!pin.ok()) {
      msg.chunk.set_code(static_cast<int>(pin.status().code()));
      msg.chunk.set_message(std::string(pin.status().message()));
      if (!writer->Write(msg)) return absl::CancelledError("Load: the client went away");
      if (req.stop_at_miss()) break;
      continue;
    }
    // The payload is sent from the pinned slot itself; the pin lives until
    // gRPC has written the last byte.
    auto held = std::make_shared<ChunkPin>(std::move(*pin));
    const absl::Span<const std::byte> payload = held->payload();
    msg.chunk.set_num_tokens(held->num_tokens());
    msg.chunk.set_payload_bytes(payload.size());
    ++loaded;
    loaded_bytes += payload.size();
    loaded_tokens += held->num_tokens();
    msg.data_owner = held;
    size_t sent = 0;
    do {
      const size_t n = std::min<size_t>(options_.max_message_bytes, payload.size() - sent);
      msg.data = payload.subspan(sent, n);
      sent += n;
      if (!writer->Write(msg)) return absl::CancelledError("Load: the client went away");
      msg.has_chunk = false;
    } while (sent < payload.size());
  }
  return absl::OkStatus();
}

// ---- Reserve / Commit -----------------------------------------------------------

absl::Status CacheService::DoReserve(grpc::ServerContext*, const v1::ReserveRequest& req,
                                     v1::ReserveResponse& resp, Principal& who) {
  KVTIER_RETURN_IF_ERROR(RequireArena(who, "Reserve"));
  if (static_cast<size_t>(req.chunks_size()) > options_.max_keys_per_request) {
    return TooMany("chunks", req.chunks_size(), options_.max_keys_per_request,
                   "limits.max_keys_per_request");
  }
  std::vector<ChunkRef> refs;
  refs.reserve(req.chunks_size());
  for (int i = 0; i < req.chunks_size(); ++i) {
    KVTIER_ASSIGN_OR_RETURN(ChunkRef r,
                            wire::ChunkFromProto(req.chunks(i), absl::StrCat("chunks[", i, "]")));
    refs.push_back(r);
  }
  KVTIER_ASSIGN_OR_RETURN(Namespace ns, OpenNamespace(who, req.has_namespace_(), req.namespace_()));
  KVTIER_RETURN_IF_ERROR(TakeLeaseRoom(refs.size(), who.name));
  size_t leased = 0;
  absl::Cleanup room = [&] { GiveBackLeaseRoom(refs.size() - leased, who.name); };
  // Reserve everything first; a request that turns out invalid gives back
  // what it took.
  std::vector<std::pair<absl::StatusOr<DramTier::SlotReservation>, size_t>> got;
  got.reserve(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    absl::StatusOr<DramTier::SlotReservation> r = cache_->ReserveSlot(ns, refs[i]);
    if (absl::IsInvalidArgument(r.status())) {
      for (auto& [prev, j] : got) {
        if (prev.ok() && !prev->already_present) cache_->AbortSlot(prev->handle);
      }
      return absl::InvalidArgumentError(absl::StrCat("chunks[", i, "].", r.status().message()));
    }
    got.emplace_back(std::move(r), i);
  }
  const absl::Time expires = absl::Now() + absl::Seconds(options_.lease_seconds);
  absl::MutexLock lock(&leases_mu_);
  for (auto& [r, i] : got) {
    v1::Reservation* out = resp.add_reservations();
    SetChunkStatus(out->mutable_status(), refs[i].key, r.status());
    if (!r.ok()) continue;
    if (r->already_present) {
      out->set_already_present(true);
      continue;
    }
    if (options_.namespace_stats != nullptr) {
      options_.namespace_stats->AddSaved(ns, 1, r->payload_bytes);
    }
    Lease lease;
    lease.kind = Lease::Kind::kReservation;
    lease.owner = who.name;
    lease.slot_handle = r->handle;
    lease.expires = expires;
    out->set_handle(AddLeaseLocked(std::move(lease)));
    ++leased;
    out->set_offset(r->payload_offset);
    out->set_length(r->payload_bytes);
  }
  resp.set_arena_id(options_.arena_id);
  return absl::OkStatus();
}

absl::Status CacheService::DoCommit(grpc::ServerContext*, const v1::CommitRequest& req,
                                    v1::CommitResponse& resp, Principal& who) {
  if (static_cast<size_t>(req.handles_size()) > options_.max_keys_per_request) {
    return TooMany("handles", req.handles_size(), options_.max_keys_per_request,
                   "limits.max_keys_per_request");
  }
  if (static_cast<size_t>(req.aborts_size()) > options_.max_keys_per_request) {
    return TooMany("aborts", req.aborts_size(), options_.max_keys_per_request,
                   "limits.max_keys_per_request");
  }
  uint32_t committed = 0;
  auto missing = [](absl::string_view field, int i) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, "[", i, "]: no outstanding reservation (expired, already used, or not yours)"));
  };
  for (int i = 0; i < req.handles_size(); ++i) {
    ChunkStatus* out = resp.add_results();
    std::optional<Lease> lease = TakeLease(req.handles(i), Lease::Kind::kReservation, who.name);
    absl::Status s =
        lease.has_value() ? cache_->CommitSlot(lease->slot_handle) : missing("handles", i);
    if (s.ok()) ++committed;
    out->set_code(static_cast<int>(s.code()));
    if (!s.ok()) out->set_message(std::string(s.message()));
  }
  for (int i = 0; i < req.aborts_size(); ++i) {
    ChunkStatus* out = resp.add_results();
    std::optional<Lease> lease = TakeLease(req.aborts(i), Lease::Kind::kReservation, who.name);
    absl::Status s = absl::OkStatus();
    if (lease.has_value()) {
      cache_->AbortSlot(lease->slot_handle);
    } else {
      s = missing("aborts", i);
    }
    out->set_code(static_cast<int>(s.code()));
    if (!s.ok()) out->set_message(std::string(s.message()));
  }
  resp.set_committed(committed);
  return absl::OkStatus();
}

// ---- Pin / Release ----------------------------------------------------------------

absl::Status CacheService::DoPin(grpc::ServerContext*, const v1::PinRequest& req,
                                 v1::PinResponse& resp, Principal& who) {
  // A pin hands out an offset in the mapped arena: of no use to a caller
  // that cannot map it, and it holds chunks in DRAM.
  KVTIER_RETURN_IF_ERROR(RequireArena(who, "Pin"));
  KVTIER_ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                          wire::KeysFromProto(req.keys(), "keys", options_.max_keys_per_request));
  KVTIER_ASSIGN_OR_RETURN(Namespace ns, OpenNamespace(who, req.has_namespace_(), req.namespace_()));
  KVTIER_RETURN_IF_ERROR(TakeLeaseRoom(keys.size(), who.name));
  size_t leased = 0;
  absl::Cleanup room = [&] { GiveBackLeaseRoom(keys.size() - leased, who.name); };
  const std::byte* arena = cache_->dram().arena().base();
  const absl::Time expires = absl::Now() + absl::Seconds(options_.lease_seconds);
  uint64_t pinned = 0, pinned_bytes = 0, pinned_tokens = 0;
  absl::Cleanup count = [&] {
    if (options_.namespace_stats != nullptr && pinned > 0) {
      options_.namespace_stats->AddLoaded(ns, pinned, pinned_bytes, pinned_tokens);
    }
  };
  for (size_t i = 0; i < keys.size(); ++i) {
    const BlockKey& key = keys[i];
    absl::StatusOr<ChunkPin> pin = PinLocalOrRemote(ns, absl::MakeConstSpan(keys).subspan(i));
    v1::PinnedChunk* out = resp.add_chunks();
    SetChunkStatus(out->mutable_status(), key, pin.status());
    if (!pin.ok()) {
      if (req.stop_at_miss()) break;
      continue;
    }
    out->set_offset(static_cast<uint64_t>(pin->payload().data() - arena));
    out->set_length(pin->payload().size());
    out->set_num_tokens(pin->num_tokens());
    ++pinned;
    pinned_bytes += pin->payload().size();
    pinned_tokens += pin->num_tokens();
    Lease lease;
    lease.kind = Lease::Kind::kPin;
    lease.owner = who.name;
    lease.pin = std::move(*pin);
    lease.expires = expires;
    absl::MutexLock lock(&leases_mu_);
    out->set_pin_id(AddLeaseLocked(std::move(lease)));
    ++leased;
  }
  resp.set_arena_id(options_.arena_id);
  return absl::OkStatus();
}

absl::Status CacheService::DoRelease(grpc::ServerContext*, const v1::ReleaseRequest& req,
                                     v1::ReleaseResponse& resp, Principal& who) {
  if (static_cast<size_t>(req.pin_ids_size()) > options_.max_keys_per_request) {
    return TooMany("pin_ids", req.pin_ids_size(), options_.max_keys_per_request,
                   "limits.max_keys_per_request");
  }
  uint32_t released = 0;
  for (uint64_t id : req.pin_ids()) {
    // The pin is released when the taken lease goes out of scope.
    if (TakeLease(id, Lease::Kind::kPin, who.name).has_value()) ++released;
  }
  resp.set_released(released);
  return absl::OkStatus();
}

// ---- Prefetch / Evict ----------------------------------------------------------------

absl::Status CacheService::DoPrefetch(grpc::ServerContext*, const v1::PrefetchRequest& req,
                                      v1::PrefetchResponse& resp, Principal& who) {
  KVTIER_ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                          wire::KeysFromProto(req.keys(), "keys", options_.max_keys_per_request));
  KVTIER_ASSIGN_OR_RETURN(Namespace ns, OpenNamespace(who, req.has_namespace_(), req.namespace_()));
  if (absl::Status s = ValidateChain(keys); !s.ok()) {
    std::string msg(s.message());
    if (msg.rfind("chain", 0) == 0) msg.replace(0, 5, "keys");
    return absl::InvalidArgumentError(msg);
  }
  KVTIER_ASSIGN_OR_RETURN(LookupResult r, cache_->Lookup(ns, keys));
  uint32_t in_dram = 0;
  for (const ChunkLocation& loc : r.chunks) {
    resp.add_tiers(static_cast<v1::Tier>(loc.tier));
    if (loc.tier == Tier::kDram) ++in_dram;
  }
  resp.set_matched(static_cast<uint32_t>(r.matched));
  resp.set_resident_in_dram(in_dram);
  // The NVMe-resident chunks of the matched prefix come up in the background;
  // the reply does not wait for the disk.
  const uint32_t to_move = static_cast<uint32_t>(r.matched) - in_dram;
  if (to_move > 0) {
    KVTIER_RETURN_IF_ERROR(cache_->Prefetch(ns, keys, [](PrefetchResult) {}));
  }
  resp.set_scheduled(to_move);
  return absl::OkStatus();
}

absl::Status CacheService::DoEvict(grpc::ServerContext*, const v1::EvictRequest& req,
                                   v1::EvictResponse& resp, Principal& who) {
  KVTIER_RETURN_IF_ERROR(auth_->RequireAdmin(who, "Evict"));
  if (req.has_namespace_() && req.namespace_id() != 0) {
    return absl::InvalidArgumentError("namespace, namespace_id: set one of them, not both");
  }
  if (!req.has_namespace_() && req.namespace_id() == 0) {
    return absl::InvalidArgumentError("namespace: required (or namespace_id)");
  }
  KVTIER_ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                          wire::KeysFromProto(req.keys(), "keys", options_.max_keys_per_request));
  uint64_t ns_id = req.namespace_id();
  if (req.has_namespace_()) {
    KVTIER_ASSIGN_OR_RETURN(Namespace ns, OpenNamespace(who, true, req.namespace_()));
    ns_id = ns.id();
  }
  uint64_t removed = 0;
  if (keys.empty()) {
    removed = cache_->RemoveNamespace(ns_id);
  } else {
    // Every tier: Cache::Remove drops the key's subtree from DRAM and the
    // key from NVMe.
    for (const BlockKey& key : keys) {
      absl::StatusOr<size_t> n = cache_->RemoveById(ns_id, key);
      if (n.ok()) removed += *n;
    }
  }
  resp.set_removed(removed);
  log_->Info("evicted", {{"principal", who.name},
                         {"namespace_id", absl::StrCat(absl::Hex(ns_id, absl::kZeroPad16))},
                         {"keys", static_cast<uint64_t>(keys.size())},
                         {"removed", removed}});
  return absl::OkStatus();
}

}  // namespace kvtier::server
