#include "src/server/shm_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
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
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 64) != 0) {
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
  loop_->Stop();
  unlink(options_.path.c_str());
}

void ShmServer::Serve(int conn) {
  absl::StatusOr<std::string> token = shm::ReadRequest(conn);
  if (!token.ok()) {
    log_->Warn("shared memory: bad request", {{"error", std::string(token.status().message())}});
    (void)shm::SendRefusal(conn, token.status());
    return;
  }
  absl::StatusOr<Principal> who = auth_->AuthenticateToken(*token);
  absl::Status verdict = who.status();
  if (verdict.ok() && !who->shared_memory) {
    verdict = absl::PermissionDeniedError(absl::StrCat(
        "shared memory: tenant '", who->name, "' is not allowed to map the arena (shared_memory)"));
  }
  if (!verdict.ok()) {
    log_->Warn("shared memory: refused", {{"error", std::string(verdict.message())}});
    (void)shm::SendRefusal(conn, verdict);
    return;
  }
  shm::ArenaGrant g{options_.arena_fd, options_.arena_id, options_.arena_bytes};
  if (absl::Status s = shm::SendGrant(conn, g); !s.ok()) {
    log_->Warn("shared memory: grant not delivered", {{"error", std::string(s.message())}});
    return;
  }
  grants_.fetch_add(1, std::memory_order_relaxed);
  log_->Debug("shared memory: arena granted", {{"principal", who->name}});
}

}  // namespace kvtier::server
