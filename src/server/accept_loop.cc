#include "src/server/accept_loop.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvtier::server {

absl::StatusOr<std::unique_ptr<AcceptLoop>> AcceptLoop::Start(int listen_fd, Serve serve,
                                                              std::string name, Logger* log) {
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(listen_fd);
    return absl::InternalError(absl::StrCat(name, ": eventfd: ", std::strerror(errno)));
  }
  std::unique_ptr<AcceptLoop> loop(
      new AcceptLoop(listen_fd, wake, std::move(serve), std::move(name), log));
  loop->thread_ = std::thread([p = loop.get()] { p->Run(); });
  return loop;
}

AcceptLoop::~AcceptLoop() {
  Stop();
  close(listen_fd_);
  close(wake_fd_);
}

void AcceptLoop::Stop() {
  if (stopped_.exchange(true)) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void AcceptLoop::Run() {
  while (!stopped_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int r = poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      log_->Error(absl::StrCat(name_, ": poll failed"), {{"error", std::strerror(errno)}});
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    timeval tv{2, 0};
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    serve_(conn);
    close(conn);
  }
}

}  // namespace kvtier::server
