#include "kvtier/client.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/sync_stream.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "src/common/status_macros.h"
#include "src/common/token_list.h"
#include "src/core/embedded_cache.h"
#include "src/server/frames.h"
#include "src/server/grpc_tls.h"
#include "src/server/shm_protocol.h"
#include "src/server/status_convert.h"
#include "src/server/wire.h"

namespace kvtier {
namespace {

using server::FromCode;
using server::FromGrpcStatus;

constexpr absl::Duration kShmTimeout = absl::Seconds(2);
// How long a call waits for a failing channel to reconnect before it is
// sent (and fails fast with UNAVAILABLE when the daemon is still away).
constexpr uint32_t kReconnectWaitMs = 200;

std::string DefaultSocketPath() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && *xdg != '\0') return absl::StrCat(xdg, "/kvtier/kvtierd.sock");
  return absl::StrCat("/tmp/kvtier-", getuid(), "/kvtierd.sock");
}

absl::Status StatusOf(const v1::ChunkStatus& s) { return FromCode(s.code(), s.message()); }

// The daemon's arena mapped into this process. Pins that point into it hold
// a reference, so a mapping outlives a daemon restart until they are gone.
class ArenaMapping {
 public:
  ArenaMapping(std::byte* base, uint64_t size, uint64_t id) : base_(base), size_(size), id_(id) {}
  ~ArenaMapping() { munmap(base_, size_); }
  ArenaMapping(const ArenaMapping&) = delete;
  ArenaMapping& operator=(const ArenaMapping&) = delete;

  std::byte* base() const { return base_; }
  uint64_t size() const { return size_; }
  uint64_t id() const { return id_; }
  bool Contains(uint64_t offset, uint64_t length) const {
    return offset <= size_ && length <= size_ - offset;
  }

 private:
  std::byte* const base_;
  const uint64_t size_;
  const uint64_t id_;
};

}  // namespace

absl::Status ClientOptions::Validate() const {
  if (!socket_path.empty() && !address.empty()) {
    return absl::InvalidArgumentError("socket_path, address: set one of them, not both");
  }
  if (address.empty() && !tls_ca_file.empty()) {
    return absl::InvalidArgumentError("tls_ca_file: TLS applies to a TCP address only");
  }
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file, tls_key_file: set both or neither");
  }
  if (!tls_cert_file.empty() && tls_ca_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file: mTLS needs tls_ca_file too");
  }
  if (!token.empty() && !token_file.empty()) {
    return absl::InvalidArgumentError("token, token_file: set one of them, not both");
  }
  if (token_reload_ms == 0) return absl::InvalidArgumentError("token_reload_ms: must be positive");
  if (rpc_timeout_ms == 0) return absl::InvalidArgumentError("rpc_timeout_ms: must be positive");
  if (max_message_bytes < 4096 || max_message_bytes > (64ull << 20)) {
    return absl::InvalidArgumentError("max_message_bytes: must be in [4 KiB, 64 MiB]");
  }
  return absl::OkStatus();
}

absl::Status CacheConfig::Validate() const {
  if (mode == "embedded") return embedded.Validate();
  if (mode == "daemon") return daemon.Validate();
  return absl::InvalidArgumentError(
      absl::StrCat("mode: '", mode, "' is neither \"embedded\" nor \"daemon\""));
}

namespace {

// The token of a token file: its first line (src/common/token_list.h).
absl::StatusOr<std::string> ReadClientToken(const std::string& path) {
  std::ifstream in(path);
  if (!in.is_open()) {
    return absl::InvalidArgumentError(absl::StrCat("token_file: cannot read '", path, "'"));
  }
  std::stringstream text;
  text << in.rdbuf();
  std::string token = SentToken(text.str());
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("token_file: '", path, "' holds no token"));
  }
  return token;
}

}  // namespace

// ---- Impl ---------------------------------------------------------------------

class Client::Impl : public ChunkPin::Releaser {
 public:
  Impl(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
      : options_(std::move(options)),
        channel_(std::move(channel)),
        stub_(v1::Cache::NewStub(channel_)),
        save_method_("/kvtier.v1.Cache/Save", grpc::internal::RpcMethod::CLIENT_STREAMING,
                     channel_),
        load_method_("/kvtier.v1.Cache/Load", grpc::internal::RpcMethod::SERVER_STREAMING,
                     channel_),
        shm_socket_(options_.socket_path + ".shm"),
        token_(options_.token),
        token_next_read_(absl::Now() + absl::Milliseconds(options_.token_reload_ms)) {}

  // The token to send: options_.token, or token_file's, read again once
  // token_reload_ms has passed (a failed read keeps the last one).
  // The file is read with no lock held: calls beside the one that reads it
  // go on with the last token.
  std::string Token() const {
    if (options_.token_file.empty()) return options_.token;
    {
      absl::MutexLock lock(&token_mu_);
      const absl::Time now = absl::Now();
      if (now < token_next_read_) return token_;
      token_next_read_ = now + absl::Milliseconds(options_.token_reload_ms);
    }
    absl::StatusOr<std::string> read = ReadClientToken(options_.token_file);
    absl::MutexLock lock(&token_mu_);
    if (read.ok()) token_ = *std::move(read);
    return token_;
  }

  // Save and Load streams with the zero-copy frames of src/server/frames.h
  // (the same wire messages as the generated stub's).
  std::unique_ptr<grpc::ClientWriter<wire::SaveFrame>> SaveStream(grpc::ClientContext* ctx,
                                                                  v1::SaveResponse* resp) {
    return std::unique_ptr<grpc::ClientWriter<wire::SaveFrame>>(
        grpc::internal::ClientWriterFactory<wire::SaveFrame>::Create(channel_.get(), save_method_,
                                                                     ctx, resp));
  }
  std::unique_ptr<grpc::ClientReader<wire::LoadFrame>> LoadStream(grpc::ClientContext* ctx,
                                                                  const v1::LoadRequest& req) {
    return std::unique_ptr<grpc::ClientReader<wire::LoadFrame>>(
        grpc::internal::ClientReaderFactory<wire::LoadFrame>::Create(channel_.get(), load_method_,
                                                                     ctx, req));
  }

  // Releases pins without waiting for the answer: a load returns as soon as
  // its bytes are copied. Best effort: an unreleased pin expires with its
  // lease.
  void ReleaseAsync(v1::ReleaseRequest req) {
    struct Call {
      std::unique_ptr<grpc::ClientContext> ctx;
      v1::ReleaseRequest req;
      v1::ReleaseResponse resp;
    };
    auto* call = new Call{Context(), std::move(req), {}};
    {
      absl::MutexLock lock(&mu_);
      ++async_calls_;
    }
    stub_->async()->Release(call->ctx.get(), &call->req, &call->resp,
                            [this, call](const grpc::Status&) {
                              delete call;
                              absl::MutexLock lock(&mu_);
                              --async_calls_;
                            });
  }

  std::unique_ptr<grpc::ClientContext> Context() const {
    // A channel whose daemon went away retries the connection on a timer
    // that only fires while something polls the channel; give it a moment
    // here, so the client finds a restarted daemon within a call or two.
    const grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_CONNECTING) {
      channel_->WaitForConnected(
          std::chrono::system_clock::now() +
          std::chrono::milliseconds(std::min<uint32_t>(kReconnectWaitMs, options_.rpc_timeout_ms)));
    }
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(options_.rpc_timeout_ms));
    if (std::string token = Token(); !token.empty()) {
      ctx->AddMetadata("authorization", "Bearer " + token);
    }
    return ctx;
  }

  v1::Cache::Stub& stub() { return *stub_; }
  const ClientOptions& options() const { return options_; }

  bool ShmWanted() const {
    if (!options_.shared_memory || !options_.address.empty()) return false;
    absl::MutexLock lock(&mu_);
    return ShmAllowed();
  }

  bool using_shared_memory() const {
    absl::MutexLock lock(&mu_);
    return mapping_ != nullptr && ShmAllowed();
  }

  // The current mapping; maps the arena when there is none or when the
  // daemon's arena is not `want_id` (0: any).
  absl::StatusOr<std::shared_ptr<ArenaMapping>> Mapping(uint64_t want_id) {
    const std::string token = Token();  // before mu_: it may read a file
    absl::MutexLock lock(&mu_);
    if (mapping_ != nullptr && (want_id == 0 || mapping_->id() == want_id)) return mapping_;
    absl::StatusOr<shm::ArenaGrant> g = shm::RequestArena(shm_socket_, token, kShmTimeout);
    if (!g.ok()) return Refused(g.status());
    KVTIER_RETURN_IF_ERROR(Adopt(*g));
    if (want_id != 0 && mapping_->id() != want_id) {
      return absl::UnavailableError("shared memory: the daemon restarted during the call");
    }
    return mapping_;
  }

  // A way to make shared-memory control calls: a control session with the
  // arena mapping it was granted with, or, where the daemon serves no
  // sessions, the gRPC stub and the current mapping.
  struct Control {
    int fd = -1;  // the session; -1: use gRPC
    std::shared_ptr<ArenaMapping> mapping;
    bool reused = false;  // an idle session (which the daemon may have closed since)
  };

  // An idle session (unless `fresh`), or a new one. Errors as Mapping's:
  // the caller then streams over gRPC (which reports a daemon that is down).
  absl::StatusOr<Control> TakeControl(bool fresh = false) {
    bool sessions = false;
    {
      absl::MutexLock lock(&mu_);
      if (!idle_.empty() && !fresh) {
        Control c = std::move(idle_.back());
        idle_.pop_back();
        c.reused = true;
        return c;
      }
      sessions = !sessions_refused_;
    }
    if (sessions) {
      absl::StatusOr<shm::ArenaGrant> g =
          shm::RequestArena(shm_socket_, Token(), kShmTimeout, /*session=*/true);
      absl::MutexLock lock(&mu_);
      if (g.ok()) {
        const int fd = g->session_fd;
        if (mapping_ != nullptr && mapping_->id() == g->arena_id) {
          close(g->fd);
        } else if (absl::Status s = Adopt(*g); !s.ok()) {
          close(fd);
          return s;
        }
        // A daemon that stops answering fails the call instead of hanging it.
        timeval tv{static_cast<time_t>(options_.rpc_timeout_ms / 1000),
                   static_cast<suseconds_t>((options_.rpc_timeout_ms % 1000) * 1000)};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        return Control{fd, mapping_};
      }
      // A daemon without sessions, or with all of them taken: control
      // calls go over gRPC (from now on, or for this call).
      if (absl::IsUnimplemented(g.status())) {
        sessions_refused_ = true;
      } else if (!absl::IsResourceExhausted(g.status())) {
        return Refused(g.status());
      }
    }
    KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<ArenaMapping> m, Mapping(0));
    return Control{-1, std::move(m)};
  }

  // Hands a session back for reuse (`broken`: closes it instead).
  void ReturnControl(Control c, bool broken) {
    if (c.fd < 0) return;
    absl::MutexLock lock(&mu_);
    if (broken || idle_.size() >= kMaxIdleSessions) {
      close(c.fd);
      return;
    }
    idle_.push_back(std::move(c));
  }

  // One control call: over the session, or as a gRPC call. A session that
  // fails is closed; when it was an idle one that the daemon closed (it may
  // have restarted since), the call is sent once more on a new session (which
  // maps the new arena: callers read c.mapping after the call), else it
  // reports Unavailable. A call that got no answer in time is not sent again:
  // the daemon may still carry it out (a second Reserve of the same chunks
  // would find them "already present" and the client would skip writing
  // them), so it reports DeadlineExceeded.
  template <typename Req, typename Resp, typename Rpc>
  absl::Status Call(Control& c, shm::ControlMethod method, const Req& req, Resp* resp, Rpc rpc) {
    if (c.fd < 0) return FromGrpcStatus(rpc(Context().get(), req, resp));
    const std::string body = req.SerializeAsString();
    absl::Status s = shm::WriteControlRequest(c.fd, method, 0, body);
    absl::StatusOr<shm::ControlReply> reply =
        s.ok() ? shm::ReadControlReply(c.fd) : absl::StatusOr<shm::ControlReply>(s);
    if (!reply.ok() && c.reused && !absl::IsDeadlineExceeded(reply.status())) {
      close(c.fd);
      c.fd = -1;
      absl::StatusOr<Control> fresh = TakeControl(/*fresh=*/true);
      if (!fresh.ok()) return fresh.status();
      c = *std::move(fresh);
      if (c.fd < 0) return FromGrpcStatus(rpc(Context().get(), req, resp));
      s = shm::WriteControlRequest(c.fd, method, 0, body);
      reply = s.ok() ? shm::ReadControlReply(c.fd) : absl::StatusOr<shm::ControlReply>(s);
    }
    if (!reply.ok()) {
      close(c.fd);
      c.fd = -1;
      return absl::Status(absl::IsDeadlineExceeded(reply.status())
                              ? absl::StatusCode::kDeadlineExceeded
                              : absl::StatusCode::kUnavailable,
                          absl::StrCat("kvtierd control session: ", reply.status().message()));
    }
    KVTIER_RETURN_IF_ERROR(reply->status);
    if (!resp->ParseFromString(reply->body)) {
      close(c.fd);
      c.fd = -1;
      return absl::DataLossError("kvtierd control session: a reply that does not parse");
    }
    return absl::OkStatus();
  }

  absl::Status Lookup(Control& c, const v1::LookupRequest& req, v1::LookupResponse* resp) {
    return Call(c, shm::ControlMethod::kLookup, req, resp,
                [this](grpc::ClientContext* ctx, const v1::LookupRequest& r,
                       v1::LookupResponse* o) { return stub_->Lookup(ctx, r, o); });
  }
  absl::Status Reserve(Control& c, const v1::ReserveRequest& req, v1::ReserveResponse* resp) {
    return Call(c, shm::ControlMethod::kReserve, req, resp,
                [this](grpc::ClientContext* ctx, const v1::ReserveRequest& r,
                       v1::ReserveResponse* o) { return stub_->Reserve(ctx, r, o); });
  }
  absl::Status Commit(Control& c, const v1::CommitRequest& req, v1::CommitResponse* resp) {
    return Call(c, shm::ControlMethod::kCommit, req, resp,
                [this](grpc::ClientContext* ctx, const v1::CommitRequest& r,
                       v1::CommitResponse* o) { return stub_->Commit(ctx, r, o); });
  }
  absl::Status Pin(Control& c, const v1::PinRequest& req, v1::PinResponse* resp) {
    return Call(c, shm::ControlMethod::kPin, req, resp,
                [this](grpc::ClientContext* ctx, const v1::PinRequest& r, v1::PinResponse* o) {
                  return stub_->Pin(ctx, r, o);
                });
  }

  // Releases pins without waiting for the answer (best effort: an
  // unreleased pin expires with its lease).
  void Release(Control& c, v1::ReleaseRequest req) {
    if (c.fd < 0) {
      ReleaseAsync(std::move(req));
      return;
    }
    if (!shm::WriteControlRequest(c.fd, shm::ControlMethod::kRelease, shm::kNoReply,
                                  req.SerializeAsString())
             .ok()) {
      close(c.fd);
      c.fd = -1;
    }
  }

  // Keeps `pin` alive until ReleasePin(handle).
  uint64_t AddPin(std::shared_ptr<ArenaMapping> mapping, uint64_t pin_id,
                  std::vector<std::byte> copy) {
    absl::MutexLock lock(&mu_);
    const uint64_t handle = ++next_pin_;
    pins_[handle] = PinState{std::move(mapping), pin_id, std::move(copy)};
    return handle;
  }
  const std::byte* PinCopy(uint64_t handle) {
    absl::MutexLock lock(&mu_);
    return pins_[handle].copy.data();
  }

  void ReleasePin(uint64_t handle) override {
    PinState state;
    {
      absl::MutexLock lock(&mu_);
      auto it = pins_.find(handle);
      if (it == pins_.end()) return;
      state = std::move(it->second);
      pins_.erase(it);
    }
    if (state.pin_id != 0) {
      v1::ReleaseRequest req;
      req.add_pin_ids(state.pin_id);
      absl::StatusOr<Control> c = ShmWanted() ? TakeControl() : absl::StatusOr<Control>(Control{});
      if (!c.ok()) {
        ReleaseAsync(std::move(req));
        return;
      }
      Release(*c, std::move(req));
      ReturnControl(*std::move(c), false);
    }
  }

  ~Impl() override;

 private:
  // At most this many sessions stay open for reuse.
  static constexpr size_t kMaxIdleSessions = 8;

  // Notes a refusal: PermissionDenied or Unauthenticated mean streaming
  // over gRPC from now on.
  // Shared memory may be asked for: the arena could be mapped, and no
  // refusal of the token stands.
  bool ShmAllowed() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !shm_unmappable_ && absl::Now() >= shm_refused_until_;
  }
  // A refused grant stands for good with a fixed token; with a token file,
  // until the file is read again (the token may have been replaced).
  absl::Status Refused(absl::Status s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (absl::IsPermissionDenied(s) || absl::IsUnauthenticated(s)) {
      shm_refused_until_ = options_.token_file.empty()
                               ? absl::InfiniteFuture()
                               : absl::Now() + absl::Milliseconds(options_.token_reload_ms);
    }
    return s;
  }
  // Maps the arena of `g` (taking its fd) as the current mapping.
  absl::Status Adopt(const shm::ArenaGrant& g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int flags = MAP_SHARED | (options_.prefault_arena ? MAP_POPULATE : 0);
    void* p = mmap(nullptr, g.arena_bytes, PROT_READ | PROT_WRITE, flags, g.fd, 0);
    close(g.fd);
    if (p == MAP_FAILED) {
      shm_unmappable_ = true;
      return absl::ResourceExhaustedError(
          absl::StrCat("shared memory: cannot map the arena: ", std::strerror(errno)));
    }
    mapping_ =
        std::make_shared<ArenaMapping>(static_cast<std::byte*>(p), g.arena_bytes, g.arena_id);
    return absl::OkStatus();
  }

  struct PinState {
    std::shared_ptr<ArenaMapping> mapping;
    uint64_t pin_id = 0;
    std::vector<std::byte> copy;  // without shared memory: the chunk's bytes
  };

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Cache::Stub> stub_;
  const grpc::internal::RpcMethod save_method_;
  const grpc::internal::RpcMethod load_method_;
  const std::string shm_socket_;
  mutable absl::Mutex token_mu_;
  mutable std::string token_ ABSL_GUARDED_BY(token_mu_);
  mutable absl::Time token_next_read_ ABSL_GUARDED_BY(token_mu_);
  mutable absl::Mutex mu_;
  std::shared_ptr<ArenaMapping> mapping_ ABSL_GUARDED_BY(mu_);
  bool shm_unmappable_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time shm_refused_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool sessions_refused_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Control> idle_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, PinState> pins_ ABSL_GUARDED_BY(mu_);
  uint64_t next_pin_ ABSL_GUARDED_BY(mu_) = 0;
  int async_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

namespace {

// Holds a control channel for one Client call and hands it back after.
class ControlScope {
 public:
  ControlScope(Client::Impl& impl, Client::Impl::Control c) : impl_(impl), c_(std::move(c)) {}
  ~ControlScope() { impl_.ReturnControl(std::move(c_), false); }
  ControlScope(const ControlScope&) = delete;
  ControlScope& operator=(const ControlScope&) = delete;
  Client::Impl::Control& get() { return c_; }

 private:
  Client::Impl& impl_;
  Client::Impl::Control c_;
};

// Lookup over a control session when the client uses shared memory, else
// as a gRPC call.
absl::Status LookupCall(Client::Impl& impl, const v1::LookupRequest& req,
                        v1::LookupResponse* resp) {
  if (impl.ShmWanted()) {
    absl::StatusOr<Client::Impl::Control> control = impl.TakeControl();
    if (control.ok()) {
      ControlScope scope(impl, *std::move(control));
      return impl.Lookup(scope.get(), req, resp);
    }
  }
  return FromGrpcStatus(impl.stub().Lookup(impl.Context().get(), req, resp));
}

}  // namespace

Client::Impl::~Impl() {
  // Asynchronous releases still in flight use the stub and this object.
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &async_calls_));
  for (const Control& c : idle_) close(c.fd);
}

// ---- construction -----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& given) {
  KVTIER_RETURN_IF_ERROR(given.Validate());
  ClientOptions options = given;
  if (!options.token_file.empty()) {
    KVTIER_ASSIGN_OR_RETURN(options.token, ReadClientToken(options.token_file));
  }
  if (options.socket_path.empty() && options.address.empty()) {
    options.socket_path = DefaultSocketPath();
  }
  grpc::ChannelArguments args;
  const int max_msg =
      static_cast<int>(std::max<uint64_t>(64ull << 20, 2 * options.max_message_bytes));
  args.SetMaxReceiveMessageSize(max_msg);
  args.SetMaxSendMessageSize(max_msg);
  // Bulk transfers: as the daemon (src/server/daemon.cc), large frames and
  // windows.
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 4 << 20);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  // Each client gets its own connection (parallel clients do not share one).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Reconnect quickly after a daemon restart. (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS
  // is also the connect timeout: it keeps its default.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  std::string target = options.address.empty() ? "unix:" + options.socket_path : options.address;
  if (!options.tls_ca_file.empty()) {
    KVTIER_ASSIGN_OR_RETURN(creds,
                            server::ChannelCredentials({options.tls_ca_file, "tls_ca_file"},
                                                       {options.tls_cert_file, "tls_cert_file"},
                                                       {options.tls_key_file, "tls_key_file"}));
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  auto channel = grpc::CreateCustomChannel(target, creds, args);
  return std::unique_ptr<Client>(
      new Client(std::make_unique<Impl>(std::move(options), std::move(channel))));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

bool Client::using_shared_memory() const { return impl_->using_shared_memory(); }

absl::StatusOr<std::unique_ptr<Cache>> OpenCache(const CacheConfig& config) {
  KVTIER_RETURN_IF_ERROR(config.Validate());
  if (config.mode == "embedded") return Cache::Create(config.embedded);
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Create(config.daemon));
  absl::StatusOr<DaemonHealth> health = client->Health();
  if (!health.ok()) {
    return absl::Status(health.status().code(),
                        absl::StrCat("kvtierd: ", health.status().message()));
  }
  return std::unique_ptr<Cache>(std::move(client));
}

// ---- Lookup -----------------------------------------------------------------------

absl::StatusOr<LookupResult> Client::Lookup(const Namespace& ns, absl::Span<const BlockKey> chain) {
  v1::LookupRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  for (const BlockKey& k : chain) req.add_keys(wire::KeyToBytes(k));
  v1::LookupResponse resp;
  KVTIER_RETURN_IF_ERROR(LookupCall(*impl_, req, &resp));
  LookupResult r;
  r.matched = resp.matched();
  for (int t : resp.tiers()) r.chunks.push_back(ChunkLocation{static_cast<Tier>(t), ""});
  for (int i = 0; i < resp.holders_size() && i < static_cast<int>(r.chunks.size()); ++i) {
    r.chunks[i].holder = resp.holders(i);
  }
  return r;
}

absl::StatusOr<TokenLookup> Client::LookupTokens(const Namespace& ns,
                                                 absl::Span<const TokenId> tokens,
                                                 bool include_partial) {
  v1::LookupRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  req.mutable_token_ids()->Add(tokens.begin(), tokens.end());
  req.set_include_partial(include_partial);
  v1::LookupResponse resp;
  KVTIER_RETURN_IF_ERROR(LookupCall(*impl_, req, &resp));
  TokenLookup out;
  out.result.matched = resp.matched();
  for (int t : resp.tiers()) out.result.chunks.push_back(ChunkLocation{static_cast<Tier>(t), ""});
  for (int i = 0; i < resp.holders_size() && i < static_cast<int>(out.result.chunks.size()); ++i) {
    out.result.chunks[i].holder = resp.holders(i);
  }
  for (int i = 0; i < resp.chunks_size(); ++i) {
    KVTIER_ASSIGN_OR_RETURN(ChunkRef c,
                            wire::ChunkFromProto(resp.chunks(i), absl::StrCat("chunks[", i, "]")));
    out.chunks.push_back(c);
  }
  return out;
}

absl::StatusOr<DaemonPrefetchResult> Client::DaemonPrefetch(const Namespace& ns,
                                                            absl::Span<const BlockKey> chain) {
  v1::PrefetchRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  for (const BlockKey& k : chain) req.add_keys(wire::KeyToBytes(k));
  v1::PrefetchResponse resp;
  KVTIER_RETURN_IF_ERROR(
      FromGrpcStatus(impl_->stub().Prefetch(impl_->Context().get(), req, &resp)));
  return DaemonPrefetchResult{resp.matched(), resp.resident_in_dram(), resp.scheduled()};
}

// ---- Save -------------------------------------------------------------------------

namespace {

// Saves through the arena. Returns nullopt when the arena cannot be used for
// this call (the caller streams instead).
std::optional<absl::StatusOr<std::vector<absl::Status>>> SaveShm(
    Client::Impl& impl, const Namespace& ns, absl::Span<const ChunkRef> chunks,
    absl::Span<const absl::Span<const std::byte>> payloads, std::vector<absl::Status> results,
    const std::vector<size_t>& todo);

}  // namespace

absl::StatusOr<std::vector<absl::Status>> Client::SaveBatch(
    const Namespace& ns, absl::Span<const ChunkRef> chunks,
    absl::Span<const absl::Span<const std::byte>> payloads) {
  if (chunks.size() != payloads.size()) {
    return absl::InvalidArgumentError("payloads: one payload per chunk");
  }
  std::vector<absl::Status> results(chunks.size());
  std::vector<size_t> todo;
  for (size_t i = 0; i < chunks.size(); ++i) {
    results[i] = ValidateChunk(ns, chunks[i], payloads[i].size());
    if (results[i].ok()) todo.push_back(i);
  }
  if (todo.empty()) return results;

  if (impl_->ShmWanted()) {
    auto r = SaveShm(*impl_, ns, chunks, payloads, results, todo);
    if (r.has_value()) return *std::move(r);
  }

  // Stream the bytes over gRPC, straight from the caller's buffers (they
  // outlive the call: Finish returns after the daemon has read everything).
  auto ctx = impl_->Context();
  v1::SaveResponse resp;
  std::unique_ptr<grpc::ClientWriter<wire::SaveFrame>> writer = impl_->SaveStream(ctx.get(), &resp);
  wire::SaveFrame msg;
  msg.has_namespace = true;
  wire::NamespaceToProto(ns.options(), &msg.ns);
  const uint64_t slice = impl_->options().max_message_bytes;
  bool open = true;
  for (size_t j = 0; j < todo.size() && open; ++j) {
    const size_t i = todo[j];
    msg.has_chunk = true;
    wire::ChunkToProto(chunks[i], &msg.chunk);
    absl::Span<const std::byte> p = payloads[i];
    for (size_t off = 0; off < p.size() && open; off += slice) {
      msg.data = p.subspan(off, std::min<size_t>(slice, p.size() - off));
      open = writer->Write(msg);  // false: the daemon ended the call; Finish tells why
      msg.has_namespace = false;
      msg.has_chunk = false;
    }
  }
  writer->WritesDone();
  KVTIER_RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
  if (static_cast<size_t>(resp.results_size()) != todo.size()) {
    return absl::InternalError(absl::StrCat("Save: the daemon answered ", resp.results_size(),
                                            " results for ", todo.size(), " chunks"));
  }
  for (size_t j = 0; j < todo.size(); ++j) results[todo[j]] = StatusOf(resp.results(j));
  return results;
}

namespace {

std::optional<absl::StatusOr<std::vector<absl::Status>>> SaveShm(
    Client::Impl& impl, const Namespace& ns, absl::Span<const ChunkRef> chunks,
    absl::Span<const absl::Span<const std::byte>> payloads, std::vector<absl::Status> results,
    const std::vector<size_t>& todo) {
  absl::StatusOr<Client::Impl::Control> control = impl.TakeControl();
  // Refused, or no side channel: stream (which reports a down daemon as
  // Unavailable).
  if (!control.ok()) return std::nullopt;
  ControlScope scope(impl, *std::move(control));
  v1::ReserveRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  for (size_t i : todo) wire::ChunkToProto(chunks[i], req.add_chunks());
  v1::ReserveResponse resp;
  absl::Status s = impl.Reserve(scope.get(), req, &resp);
  if (absl::IsPermissionDenied(s) && absl::StrContains(s.message(), "shared_memory")) {
    return std::nullopt;
  }
  if (!s.ok()) return absl::StatusOr<std::vector<absl::Status>>(s);
  if (static_cast<size_t>(resp.reservations_size()) != todo.size()) {
    return absl::StatusOr<std::vector<absl::Status>>(
        absl::InternalError(absl::StrCat("Reserve: the daemon answered ", resp.reservations_size(),
                                         " reservations for ", todo.size(), " chunks")));
  }
  std::shared_ptr<ArenaMapping> m = scope.get().mapping;
  absl::Status remap = absl::OkStatus();
  if (m->id() != resp.arena_id()) {
    absl::StatusOr<std::shared_ptr<ArenaMapping>> fresh = impl.Mapping(resp.arena_id());
    if (fresh.ok()) {
      m = *fresh;
    } else {
      remap = fresh.status();
    }
  }
  v1::CommitRequest commit;
  std::vector<size_t> committed;
  for (size_t j = 0; j < todo.size(); ++j) {
    const size_t i = todo[j];
    const v1::Reservation& r = resp.reservations(j);
    results[i] = StatusOf(r.status());
    if (!results[i].ok() || r.already_present()) continue;
    if (!remap.ok() || !m->Contains(r.offset(), r.length()) || r.length() != payloads[i].size()) {
      results[i] =
          remap.ok() ? absl::InternalError("Reserve: the daemon's slot does not fit") : remap;
      commit.add_aborts(r.handle());
      continue;
    }
    std::memcpy(m->base() + r.offset(), payloads[i].data(), r.length());
    commit.add_handles(r.handle());
    committed.push_back(i);
  }
  if (commit.handles_size() == 0 && commit.aborts_size() == 0) return results;
  v1::CommitResponse cresp;
  s = impl.Commit(scope.get(), commit, &cresp);
  if (!s.ok()) {
    for (size_t i : committed) results[i] = s;
    return results;
  }
  for (size_t j = 0; j < committed.size() && static_cast<int>(j) < cresp.results_size(); ++j) {
    results[committed[j]] = StatusOf(cresp.results(j));
  }
  return results;
}

}  // namespace

absl::Status Client::Save(const Namespace& ns, const ChunkRef& chunk,
                          absl::Span<const std::byte> payload) {
  const absl::Span<const std::byte> payloads[] = {payload};
  KVTIER_ASSIGN_OR_RETURN(std::vector<absl::Status> r,
                          SaveBatch(ns, absl::MakeConstSpan(&chunk, 1), payloads));
  return r[0];
}

// ---- Load -------------------------------------------------------------------------

absl::StatusOr<std::vector<absl::StatusOr<size_t>>> Client::LoadBatch(
    const Namespace& ns, absl::Span<const BlockKey> keys,
    absl::Span<const absl::Span<std::byte>> outs) {
  if (keys.size() != outs.size()) {
    return absl::InvalidArgumentError("outs: one buffer per key");
  }
  std::vector<absl::StatusOr<size_t>> results(
      keys.size(), absl::StatusOr<size_t>(absl::InternalError("Load: no answer for this key")));
  if (keys.empty()) return results;

  if (impl_->ShmWanted()) {
    absl::StatusOr<Impl::Control> control = impl_->TakeControl();
    if (control.ok()) {
      ControlScope scope(*impl_, *std::move(control));
      v1::PinRequest req;
      wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
      for (const BlockKey& k : keys) req.add_keys(wire::KeyToBytes(k));
      v1::PinResponse resp;
      KVTIER_RETURN_IF_ERROR(impl_->Pin(scope.get(), req, &resp));
      std::shared_ptr<ArenaMapping> m = scope.get().mapping;
      absl::Status remap = absl::OkStatus();
      if (m->id() != resp.arena_id()) {
        absl::StatusOr<std::shared_ptr<ArenaMapping>> fresh = impl_->Mapping(resp.arena_id());
        if (fresh.ok()) {
          m = *fresh;
        } else {
          remap = fresh.status();
        }
      }
      v1::ReleaseRequest release;
      for (int i = 0; i < resp.chunks_size() && static_cast<size_t>(i) < keys.size(); ++i) {
        const v1::PinnedChunk& c = resp.chunks(i);
        absl::Status s = StatusOf(c.status());
        if (c.pin_id() != 0) release.add_pin_ids(c.pin_id());
        if (!s.ok()) {
          results[i] = s;
        } else if (!remap.ok()) {
          results[i] = remap;
        } else if (!m->Contains(c.offset(), c.length())) {
          results[i] = absl::InternalError("Pin: the daemon's slot lies outside the arena");
        } else if (outs[i].size() < c.length()) {
          results[i] = absl::InvalidArgumentError(
              absl::StrCat("out: buffer of ", outs[i].size(), " bytes is smaller than the ",
                           c.length(), "-byte payload of chunk ", keys[i].ToHex()));
        } else {
          std::memcpy(outs[i].data(), m->base() + c.offset(), c.length());
          results[i] = static_cast<size_t>(c.length());
        }
      }
      if (release.pin_ids_size() > 0) impl_->Release(scope.get(), std::move(release));
      return results;
    }
    // Not mapped (refused, or the daemon is down): stream, which reports a
    // down daemon as Unavailable.
  }

  v1::LoadRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  for (const BlockKey& k : keys) req.add_keys(wire::KeyToBytes(k));
  auto ctx = impl_->Context();
  std::unique_ptr<grpc::ClientReader<wire::LoadFrame>> reader = impl_->LoadStream(ctx.get(), req);
  wire::LoadFrame msg;
  int cur = -1;
  uint64_t want = 0, got = 0;
  bool writing = false;
  absl::Status protocol;
  while (reader->Read(&msg)) {
    if (msg.has_chunk) {
      if (static_cast<size_t>(++cur) >= keys.size()) {
        protocol = absl::InternalError("Load: the daemon sent more chunks than asked for");
        break;
      }
      const v1::LoadedChunk& c = msg.chunk;
      absl::Status s = FromCode(c.code(), c.message());
      want = c.payload_bytes();
      got = 0;
      writing = false;
      if (!s.ok()) {
        results[cur] = s;
      } else if (outs[cur].size() < want) {
        results[cur] = absl::InvalidArgumentError(
            absl::StrCat("out: buffer of ", outs[cur].size(), " bytes is smaller than the ", want,
                         "-byte payload of chunk ", keys[cur].ToHex()));
      } else {
        writing = true;
      }
    }
    const size_t n = msg.received.size();
    if (n > 0) {
      if (cur < 0 || got + n > want) {
        protocol = absl::InternalError("Load: the daemon sent more bytes than announced");
        break;
      }
      // The one copy of a streamed load: from gRPC's buffers to the caller's.
      if (writing) msg.received.CopyTo(outs[cur].data() + got);
      got += n;
      if (writing && got == want) results[cur] = static_cast<size_t>(want);
    }
  }
  if (!protocol.ok()) {
    ctx->TryCancel();
    (void)reader->Finish();
    return protocol;
  }
  KVTIER_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  return results;
}

absl::StatusOr<size_t> Client::Load(const Namespace& ns, const BlockKey& key,
                                    absl::Span<std::byte> out) {
  const absl::Span<std::byte> outs[] = {out};
  KVTIER_ASSIGN_OR_RETURN(auto r, LoadBatch(ns, absl::MakeConstSpan(&key, 1), outs));
  return r[0];
}

// ---- Pin --------------------------------------------------------------------------

absl::StatusOr<ChunkPin> Client::Pin(const Namespace& ns, const BlockKey& key) {
  if (impl_->ShmWanted()) {
    absl::StatusOr<Impl::Control> control = impl_->TakeControl();
    if (control.ok()) {
      std::shared_ptr<ArenaMapping> mapping = control->mapping;
      v1::PinRequest req;
      wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
      req.add_keys(wire::KeyToBytes(key));
      v1::PinResponse resp;
      {
        ControlScope scope(*impl_, *std::move(control));
        KVTIER_RETURN_IF_ERROR(impl_->Pin(scope.get(), req, &resp));
      }
      if (resp.chunks_size() != 1) return absl::InternalError("Pin: no answer for the key");
      const v1::PinnedChunk& c = resp.chunks(0);
      KVTIER_RETURN_IF_ERROR(StatusOf(c.status()));
      std::shared_ptr<ArenaMapping> m = mapping;
      absl::StatusOr<std::shared_ptr<ArenaMapping>> fresh =
          m->id() == resp.arena_id() ? absl::StatusOr<std::shared_ptr<ArenaMapping>>(m)
                                     : impl_->Mapping(resp.arena_id());
      if (!fresh.ok() || !(*fresh)->Contains(c.offset(), c.length())) {
        const uint64_t h = impl_->AddPin(nullptr, c.pin_id(), {});
        impl_->ReleasePin(h);
        return fresh.ok() ? absl::InternalError("Pin: the daemon's slot lies outside the arena")
                          : fresh.status();
      }
      m = *fresh;
      const std::byte* data = m->base() + c.offset();
      const uint64_t handle = impl_->AddPin(m, c.pin_id(), {});
      return ChunkPin(impl_.get(), handle, {data, c.length()}, c.num_tokens());
    }
  }
  // Without the arena: copy the chunk into memory the pin owns.
  v1::LoadRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  req.add_keys(wire::KeyToBytes(key));
  auto ctx = impl_->Context();
  auto reader = impl_->LoadStream(ctx.get(), req);
  wire::LoadFrame msg;
  std::vector<std::byte> bytes;
  uint32_t num_tokens = 0;
  absl::Status chunk_status = absl::InternalError("Pin: no answer for the key");
  while (reader->Read(&msg)) {
    if (msg.has_chunk) {
      chunk_status = FromCode(msg.chunk.code(), msg.chunk.message());
      num_tokens = msg.chunk.num_tokens();
      bytes.reserve(msg.chunk.payload_bytes());
    }
    const size_t at = bytes.size();
    if (at + msg.received.size() > bytes.capacity()) {
      chunk_status = absl::InternalError("Pin: the daemon sent more bytes than announced");
      continue;
    }
    bytes.resize(at + msg.received.size());
    msg.received.CopyTo(bytes.data() + at);
  }
  KVTIER_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  KVTIER_RETURN_IF_ERROR(chunk_status);
  const size_t n = bytes.size();
  const uint64_t handle = impl_->AddPin(nullptr, 0, std::move(bytes));
  return ChunkPin(impl_.get(), handle, {impl_->PinCopy(handle), n}, num_tokens);
}

// ---- admin and stats ------------------------------------------------------------------

absl::StatusOr<uint64_t> Client::Evict(const Namespace& ns, absl::Span<const BlockKey> keys) {
  v1::EvictRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  for (const BlockKey& k : keys) req.add_keys(wire::KeyToBytes(k));
  v1::EvictResponse resp;
  KVTIER_RETURN_IF_ERROR(FromGrpcStatus(impl_->stub().Evict(impl_->Context().get(), req, &resp)));
  return resp.removed();
}

absl::StatusOr<uint64_t> Client::EvictNamespaceId(uint64_t namespace_id) {
  v1::EvictRequest req;
  req.set_namespace_id(namespace_id);
  v1::EvictResponse resp;
  KVTIER_RETURN_IF_ERROR(FromGrpcStatus(impl_->stub().Evict(impl_->Context().get(), req, &resp)));
  return resp.removed();
}

absl::StatusOr<size_t> Client::Remove(const Namespace& ns, const BlockKey& key) {
  KVTIER_ASSIGN_OR_RETURN(uint64_t removed, Evict(ns, absl::MakeConstSpan(&key, 1)));
  if (removed == 0) {
    return absl::NotFoundError(absl::StrCat("chunk ", key.ToHex(), " is not cached (or pinned)"));
  }
  return static_cast<size_t>(removed);
}

absl::StatusOr<CacheStats> Client::FetchStats() const {
  v1::StatsResponse resp;
  KVTIER_RETURN_IF_ERROR(
      FromGrpcStatus(impl_->stub().Stats(impl_->Context().get(), v1::StatsRequest(), &resp)));
  CacheStats s;
  s.lookups = resp.lookups();
  s.lookup_chunks = resp.lookup_chunks();
  s.lookup_hits = resp.lookup_hits();
  s.huge_pages = resp.huge_pages();
  for (const v1::TierStats& t : resp.tiers()) s.tiers.push_back(wire::TierStatsFromProto(t));
  return s;
}

CacheStats Client::Stats() const {
  absl::StatusOr<CacheStats> s = FetchStats();
  return s.ok() ? *s : CacheStats{};
}

absl::StatusOr<DaemonHealth> Client::Health() const {
  v1::HealthResponse resp;
  KVTIER_RETURN_IF_ERROR(
      FromGrpcStatus(impl_->stub().Health(impl_->Context().get(), v1::HealthRequest(), &resp)));
  DaemonHealth h;
  h.serving = resp.status() == v1::HealthResponse::SERVING;
  h.version = resp.version();
  h.shm_socket = resp.shm_socket();
  h.arena_id = resp.arena_id();
  h.arena_bytes = resp.arena_bytes();
  return h;
}

absl::StatusOr<std::string> Client::DaemonConfigYaml() const {
  v1::ConfigResponse resp;
  KVTIER_RETURN_IF_ERROR(
      FromGrpcStatus(impl_->stub().Config(impl_->Context().get(), v1::ConfigRequest(), &resp)));
  return resp.yaml();
}

}  // namespace kvtier
