#include "src/server/shm_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "src/server/accept_loop.h"
#include "src/server/shm_protocol.h"

namespace kvtier::server {

absl::Status PrepareSocketPath(const std::string& path, const std::string& field) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", path, "' is not a usable Unix socket path"));
  }
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(parent, ec)) {
      std::filesystem::create_directories(parent, ec);
      if (ec) {
        return absl::FailedPreconditionError(absl::StrCat(field, ": cannot create directory '",
                                                          parent.string(), "': ", ec.message()));
      }
      chmod(parent.c_str(), 0750);
    }
  }
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return absl::OkStatus();  // nothing there
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": '", path, "' exists and is not a socket"));
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const bool live = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  if (live) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": another process is serving '", path, "'"));
  }
  unlink(path.c_str());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShmServer>> ShmServer::Start(const ShmServerOptions& options,
                                                            const Authenticator* auth,
                                                            Logger* log) {
  if (absl::Status s = PrepareSocketPath(options.path, "listen.unix_socket (.shm)"); !s.ok()) {
    return s;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, options.path.c_str(), options.path.size() + 1);
  // The socket file is created with the umask: keep it private until the
  // chmod below, so no client connects (and is served) under a looser mode.
  const mode_t old_umask = umask(0177);
  const int bound = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old_umask);
  if (bound != 0 || listen(fd, 64) != 0) {
    absl::Status s =
        absl::FailedPreconditionError(absl::StrCat("listen.unix_socket (.shm): cannot listen on '",
                                                   options.path, "': ", std::strerror(errno)));
    close(fd);
    return s;
  }
  chmod(options.path.c_str(), options.mode);
  std::unique_ptr<ShmServer> server(new ShmServer(options, auth, log));
  absl::StatusOr<std::unique_ptr<AcceptLoop>> loop = AcceptLoop::Start(
      fd, [s = server.get()](int conn) { s->Serve(conn); }, "shared memory", log);
  if (!loop.ok()) {
    unlink(options.path.c_str());
    return loop.status();
  }
  server->loop_ = *std::move(loop);
  return server;
}

ShmServer::~ShmServer() { Stop(); }

void ShmServer::Stop() {
  if (stopped_.exchange(true)) return;
  if (loop_ != nullptr) loop_->Stop();  // null when Start failed
  std::list<Session> sessions;
  {
    absl::MutexLock lock(&sessions_mu_);
    sessions.swap(sessions_);
  }
  // Wakes each session's blocking read; a call being served finishes first.
  for (Session& s : sessions) {
    if (s.fd >= 0) shutdown(s.fd, SHUT_RDWR);
  }
  for (Session& s : sessions) {
    if (s.thread.joinable()) s.thread.join();
    if (s.fd >= 0) close(s.fd);
  }
  unlink(options_.path.c_str());
}

size_t ShmServer::sessions() const {
  absl::MutexLock lock(&sessions_mu_);
  size_t n = 0;
  for (const Session& s : sessions_) n += s.done.load() ? 0 : 1;
  return n;
}

void ShmServer::ReapSessions() {
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->done.load()) {
      if (it->thread.joinable()) it->thread.join();  // not so for a place given back
      if (it->fd >= 0) close(it->fd);
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
}

void ShmServer::RunSession(int fd, const Principal& who) {
  for (;;) {
    absl::StatusOr<shm::ControlRequest> req =
        shm::ReadControlRequest(fd, options_.max_control_bytes, options_.frame_timeout);
    if (!req.ok()) {
      if (absl::IsInvalidArgument(req.status()) || absl::IsDeadlineExceeded(req.status())) {
        (void)shm::WriteControlReply(fd, req.status(), "");
        log_->Warn("shared memory: bad control request",
                   {{"principal", who.name}, {"error", std::string(req.status().message())}});
      }
      return;
    }
    absl::StatusOr<std::string> resp = options_.control(who, req->method, req->body);
    if ((req->flags & shm::kNoReply) != 0) continue;
    if (!shm::WriteControlReply(fd, resp.status(), resp.ok() ? *resp : std::string()).ok()) return;
  }
}

void ShmServer::Serve(int conn) {
  absl::StatusOr<shm::ArenaRequest> request = shm::ReadRequest(conn);
  if (!request.ok()) {
    log_->Warn("shared memory: bad request", {{"error", std::string(request.status().message())}});
    (void)shm::SendRefusal(conn, request.status());
    return;
  }
  absl::StatusOr<Principal> who = auth_->AuthenticateToken(request->token);
  absl::Status verdict = who.status();
  if (verdict.ok() && !who->shared_memory) {
    verdict = absl::PermissionDeniedError(absl::StrCat(
        "shared memory: tenant '", who->name, "' is not allowed to map the arena (shared_memory)"));
  }
  // Handshakes are served concurrently: a session's place is taken when it
  // passes the limit, and given back (marked done) if it does not start.
  Session* session = nullptr;
  if (verdict.ok() && request->session) {
    if (!options_.control) {
      verdict = absl::UnimplementedError("shared memory: this daemon serves no control sessions");
    } else {
      absl::MutexLock lock(&sessions_mu_);
      ReapSessions();
      if (sessions_.size() >= options_.max_sessions) {
        verdict = absl::ResourceExhaustedError(absl::StrCat(
            "shared memory: ", sessions_.size(), " control sessions are open (the limit)"));
      } else {
        session = &sessions_.emplace_back();
      }
    }
  }
  auto give_back = [&] {
    if (session != nullptr) session->done.store(true);
  };
  if (!verdict.ok()) {
    log_->Warn("shared memory: refused", {{"error", std::string(verdict.message())}});
    (void)shm::SendRefusal(conn, verdict);
    return;
  }
  shm::ArenaGrant g{options_.arena_fd, options_.arena_id, options_.arena_bytes};
  if (absl::Status s = shm::SendGrant(conn, g); !s.ok()) {
    log_->Warn("shared memory: grant not delivered", {{"error", std::string(s.message())}});
    give_back();
    return;
  }
  grants_.fetch_add(1, std::memory_order_relaxed);
  log_->Debug("shared memory: arena granted",
              {{"principal", who->name}, {"session", request->session}});
  if (!request->session) return;
  // The session outlives this accept-loop call: it gets its own descriptor
  // (the loop closes `conn`), waits for calls without a receive timeout and
  // keeps the send timeout (a client that stops reading is dropped).
  const int fd = fcntl(conn, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    give_back();
    return;
  }
  timeval none{0, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
  absl::MutexLock lock(&sessions_mu_);
  if (stopped_.load()) {
    close(fd);
    give_back();
    return;
  }
  Session& s = *session;
  s.fd = fd;
  s.thread = std::thread([this, &s, fd, principal = *who] {
    RunSession(fd, principal);
    // The client sees the end at once; the descriptor is closed when the
    // session is reaped.
    shutdown(fd, SHUT_RDWR);
    s.done.store(true);
  });
}

}  // namespace kvtier::server
