#include "src/transfer/peer_service.h"

#include <sys/random.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "src/common/status_macros.h"
#include "src/core/chunk_format.h"
#include "src/server/status_convert.h"
#include "src/server/wire.h"
#include "src/transfer/peer_calls.h"

namespace kvtier::transfer {

absl::Status PeerServiceOptions::Validate() const {
  if (node_id.empty()) return absl::InvalidArgumentError("node_id: required");
  if (boot_id == 0) return absl::InvalidArgumentError("boot_id: must not be 0");
  if (lease_timeout <= absl::ZeroDuration() || lease_timeout > absl::Hours(1)) {
    return absl::InvalidArgumentError("ucx.lease_seconds: must be within (0, 3600]");
  }
  if (max_leases == 0) return absl::InvalidArgumentError("ucx.max_leases: must be positive");
  if (max_keys_per_request == 0) {
    return absl::InvalidArgumentError("limits.max_keys_per_request: must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PeerService>> PeerService::Create(
    EmbeddedCache* cache, UcxEngine* engine, const PeerServiceOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (engine->packed_rkey().empty()) {
    return absl::FailedPreconditionError("ucx: the DRAM arena is not mapped (MapArena)");
  }
  std::unique_ptr<PeerService> p(new PeerService(cache, engine, options));
  PeerService* raw = p.get();
  p->call_secret_.resize(kCallSecretBytes);
  if (getrandom(p->call_secret_.data(), kCallSecretBytes, 0) !=
      static_cast<ssize_t>(kCallSecretBytes)) {
    return absl::InternalError("getrandom: no call secret");
  }
  // Lease ids start at a random value: a release a reader queued for this
  // address before a restart cannot free another reader's lease here.
  uint64_t first_lease = 0;
  if (getrandom(&first_lease, sizeof(first_lease), 0) != sizeof(first_lease)) {
    return absl::InternalError("getrandom: no lease ids");
  }
  {
    absl::MutexLock lock(&p->mu_);
    p->next_lease_ = (first_lease >> 1) | 1;  // never 0, far from wrapping
  }
  engine->SetCallHandler([raw](absl::string_view call) { return raw->ServeCall(call); });
  p->reaper_ = std::thread([raw] {
    const absl::Duration period = std::min(absl::Seconds(1), raw->options_.lease_timeout / 4);
    while (!raw->stop_.WaitForNotificationWithTimeout(period)) raw->ExpireLeases(absl::Now());
  });
  return p;
}

PeerService::~PeerService() {
  if (!call_secret_.empty()) engine_->SetCallHandler(nullptr);
  stop_.Notify();
  if (reaper_.joinable()) reaper_.join();
  absl::flat_hash_map<uint64_t, Lease> leases;
  {
    absl::MutexLock lock(&mu_);
    leases.swap(leases_);
  }
}

absl::Status PeerService::CheckAuth(grpc::ServerContext* ctx) const {
  if (options_.peer_token.empty()) return absl::OkStatus();
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    auth_failures_.fetch_add(1, std::memory_order_relaxed);
    return absl::UnauthenticatedError("Peer: no authorization (ucx.peer_token is set)");
  }
  absl::string_view presented(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&presented, "Bearer ") || !options_.peer_token.Accepts(presented)) {
    auth_failures_.fetch_add(1, std::memory_order_relaxed);
    return absl::PermissionDeniedError("Peer: wrong peer token");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<BlockKey>> PeerService::Keys(
    const google::protobuf::RepeatedPtrField<std::string>& keys) const {
  return wire::KeysFromProto(keys, "keys", options_.max_keys_per_request);
}

grpc::Status PeerService::Hello(grpc::ServerContext* ctx, const v1::HelloRequest*,
                                v1::HelloResponse* resp) {
  if (absl::Status s = CheckAuth(ctx); !s.ok()) return server::ToGrpcStatus(s);
  hellos_.fetch_add(1);
  const Arena& arena = cache_->dram().arena();
  resp->set_node_id(options_.node_id);
  resp->set_boot_id(options_.boot_id);
  for (const std::string& a : engine_->worker_addresses()) resp->add_worker_addresses(a);
  resp->set_arena_rkey(engine_->packed_rkey());
  resp->set_arena_base(reinterpret_cast<uint64_t>(arena.base()));
  resp->set_arena_bytes(arena.size());
  const char* tls = std::getenv("UCX_TLS");
  resp->set_transports(tls != nullptr ? tls : "all");
  resp->set_call_secret(call_secret_);
  resp->set_pid(static_cast<uint32_t>(getpid()));
  resp->set_pid_namespace(UcxEngine::PidNamespace());
  resp->set_start_time(UcxEngine::ProcessStartTime(getpid()));
  return grpc::Status::OK;
}

grpc::Status PeerService::Lookup(grpc::ServerContext* ctx, const v1::PeerLookupRequest* req,
                                 v1::PeerLookupResponse* resp) {
  if (absl::Status s = CheckAuth(ctx); !s.ok()) return server::ToGrpcStatus(s);
  absl::StatusOr<std::vector<BlockKey>> keys = Keys(req->keys());
  if (!keys.ok()) return server::ToGrpcStatus(keys.status());
  lookups_.fetch_add(1);
  resp->set_matched(static_cast<uint32_t>(cache_->dram().MatchPrefix(req->namespace_id(), *keys)));
  resp->set_boot_id(options_.boot_id);
  resp->set_node_id(options_.node_id);
  return grpc::Status::OK;
}

grpc::Status PeerService::PinForRead(grpc::ServerContext* ctx, const v1::PinForReadRequest* req,
                                     v1::PinForReadResponse* resp) {
  if (absl::Status s = CheckAuth(ctx); !s.ok()) return server::ToGrpcStatus(s);
  return server::ToGrpcStatus(DoPinForRead(*req, *resp));
}

std::string PeerService::ServeCall(absl::string_view call) {
  DecodedPeerCall c;
  absl::Status s = DecodePeerCall(call, call_secret_, c);
  if (s.ok() && c.method == PeerCallMethod::kPinForRead) {
    v1::PinForReadRequest req;
    v1::PinForReadResponse resp;
    if (!req.ParseFromArray(c.message.data(), static_cast<int>(c.message.size()))) {
      s = absl::InvalidArgumentError("PinForRead: the request does not parse");
    } else {
      s = DoPinForRead(req, resp);
    }
    return EncodePeerReply(s, resp);
  }
  v1::PeerReleaseResponse resp;
  if (s.ok() && c.method == PeerCallMethod::kRelease) {
    v1::PeerReleaseRequest req;
    if (!req.ParseFromArray(c.message.data(), static_cast<int>(c.message.size()))) {
      s = absl::InvalidArgumentError("Release: the request does not parse");
    } else {
      DoRelease(req, resp);
    }
  } else if (s.ok()) {
    s = absl::InvalidArgumentError(
        absl::StrCat("peer call: unknown method ", static_cast<int>(c.method)));
  }
  return EncodePeerReply(s, resp);
}

absl::Status PeerService::DoPinForRead(const v1::PinForReadRequest& request,
                                       v1::PinForReadResponse& response) {
  const v1::PinForReadRequest* req = &request;
  v1::PinForReadResponse* resp = &response;
  KVTIER_ASSIGN_OR_RETURN(std::vector<BlockKey> key_list, Keys(req->keys()));
  const std::vector<BlockKey>* keys = &key_list;
  resp->set_boot_id(options_.boot_id);
  resp->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.lease_timeout)));
  {
    absl::MutexLock lock(&mu_);
    if (leases_.size() >= options_.max_leases) {
      return absl::ResourceExhaustedError(
          absl::StrCat("PinForRead: ", leases_.size(), " leases held (ucx.max_leases)"));
    }
  }
  const std::byte* base = cache_->dram().arena().base();
  Lease lease;
  for (const BlockKey& key : *keys) {
    absl::StatusOr<DramTier::TransferPin> pinned =
        cache_->dram().PinChunkForTransfer(req->namespace_id(), key);
    if (!pinned.ok()) {
      if (req->every_held()) continue;
      break;
    }
    ChunkPin& pin = pinned->pin;
    const std::byte* encoded = pin.payload().data() - kChunkHeaderBytes;
    v1::PinnedSlot* slot = resp->add_slots();
    slot->set_key(wire::KeyToBytes(key));
    slot->set_offset(static_cast<uint64_t>(encoded - base));
    slot->set_length(kChunkHeaderBytes + pin.payload().size());
    slot->set_num_tokens(pin.num_tokens());
    slot->set_checksum(pinned->payload_checksum);
    pinned_bytes_.fetch_add(kChunkHeaderBytes + pin.payload().size());
    lease.pins.push_back(std::move(pin));
  }
  if (lease.pins.empty()) return absl::OkStatus();
  pin_requests_.fetch_add(1);
  pinned_chunks_.fetch_add(lease.pins.size());
  lease.expires = absl::Now() + options_.lease_timeout;
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_lease_++;
  leases_.emplace(id, std::move(lease));
  resp->set_lease_id(id);
  return absl::OkStatus();
}

grpc::Status PeerService::Release(grpc::ServerContext* ctx, const v1::PeerReleaseRequest* req,
                                  v1::PeerReleaseResponse* resp) {
  if (absl::Status s = CheckAuth(ctx); !s.ok()) return server::ToGrpcStatus(s);
  DoRelease(*req, *resp);
  return grpc::Status::OK;
}

void PeerService::DoRelease(const v1::PeerReleaseRequest& request,
                            v1::PeerReleaseResponse& response) {
  const v1::PeerReleaseRequest* req = &request;
  v1::PeerReleaseResponse* resp = &response;
  std::vector<Lease> taken;  // released after the lock is dropped
  uint32_t released = 0;
  absl::MutexLock lock(&mu_);
  auto release = [&](uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = leases_.find(id);
    if (it == leases_.end()) return false;
    taken.push_back(std::move(it->second));
    leases_.erase(it);
    ++released;
    return true;
  };
  resp->set_released(req->lease_id() != 0 && release(req->lease_id()));
  for (uint64_t id : req->lease_ids()) release(id);
  resp->set_released_leases(released);
}

size_t PeerService::ExpireLeases(absl::Time now) {
  std::vector<Lease> expired;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = leases_.begin(); it != leases_.end();) {
      if (it->second.expires <= now) {
        expired.push_back(std::move(it->second));
        leases_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  expired_.fetch_add(expired.size());
  return expired.size();
}

PeerServiceStats PeerService::Stats() const {
  PeerServiceStats s;
  s.hellos = hellos_.load();
  s.lookups = lookups_.load();
  s.pin_requests = pin_requests_.load();
  s.pinned_chunks = pinned_chunks_.load();
  s.pinned_bytes = pinned_bytes_.load();
  s.leases_expired = expired_.load();
  s.auth_failures = auth_failures_.load();
  absl::MutexLock lock(&mu_);
  s.leases_held = leases_.size();
  return s;
}

}  // namespace kvtier::transfer
