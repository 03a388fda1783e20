#include "src/server/shm_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
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
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  std::unique_ptr<ShmServer> server(new ShmServer(options, auth, log, fd, wake));
  server->thread_ = std::thread([s = server.get()] { s->Run(); });
  return server;
}

ShmServer::~ShmServer() {
  Stop();
  close(listen_fd_);
  close(wake_fd_);
}

void ShmServer::Stop() {
  if (stopped_.exchange(true)) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  unlink(options_.path.c_str());
}

void ShmServer::Run() {
  while (!stopped_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int r = poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      log_->Error("shared memory: poll failed", {{"error", std::strerror(errno)}});
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    // A client that stalls mid-request cannot hold the loop for long.
    timeval tv{2, 0};
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    Serve(conn);
    close(conn);
  }
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
