#include "src/server/accept_loop.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace kvtier::server {

absl::StatusOr<std::unique_ptr<AcceptLoop>> AcceptLoop::Start(int listen_fd, Serve serve,
                                                              std::string name, Logger* log,
                                                              AcceptLoopOptions options) {
  if (options.max_connections == 0 || options.deadline <= absl::ZeroDuration()) {
    close(listen_fd);
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": max_connections and deadline must be positive"));
  }
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(listen_fd);
    return absl::InternalError(absl::StrCat(name, ": eventfd: ", std::strerror(errno)));
  }
  std::unique_ptr<AcceptLoop> loop(
      new AcceptLoop(listen_fd, wake, std::move(serve), std::move(name), log, options));
  loop->thread_ = std::thread([p = loop.get()] { p->Run(); });
  return loop;
}

AcceptLoop::~AcceptLoop() {
  Stop();
  close(listen_fd_);
  close(wake_fd_);
}

void AcceptLoop::Wake() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

void AcceptLoop::Stop() {
  if (stopped_.exchange(true)) return;
  Wake();
  if (thread_.joinable()) thread_.join();
  std::list<Conn> conns;
  {
    absl::MutexLock lock(&mu_);
    for (Conn& c : conns_) {
      if (!c.done) shutdown(c.fd, SHUT_RD);
    }
    conns.swap(conns_);  // the nodes, which the serving threads point to, stay put
  }
  for (Conn& c : conns) {
    c.thread.join();
    close(c.fd);
  }
}

size_t AcceptLoop::Reap() {
  for (auto it = conns_.begin(); it != conns_.end();) {
    if (!it->done) {
      ++it;
      continue;
    }
    it->thread.join();  // it has set `done`, its last use of the lock
    close(it->fd);
    it = conns_.erase(it);
  }
  return conns_.size();
}

absl::Duration AcceptLoop::CutOverdue(absl::Time now) {
  absl::Duration next = absl::InfiniteDuration();
  for (Conn& c : conns_) {
    if (c.done || c.cut) continue;
    if (c.deadline <= now) {
      shutdown(c.fd, SHUT_RDWR);
      c.cut = true;
      cut_.fetch_add(1, std::memory_order_relaxed);
      log_->Warn(absl::StrCat(name_, ": connection cut at its deadline"),
                 {{"deadline_ms", absl::ToInt64Milliseconds(options_.deadline)}});
      continue;
    }
    next = std::min(next, c.deadline - now);
  }
  return next;
}

void AcceptLoop::Run() {
  while (!stopped_.load()) {
    size_t active = 0;
    absl::Duration next;
    {
      absl::MutexLock lock(&mu_);
      active = Reap();
      next = CutOverdue(absl::Now());
    }
    // At the limit only the wake-up is watched: new connections wait in the
    // backlog.
    const bool full = active >= options_.max_connections;
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    const int timeout_ms =
        next == absl::InfiniteDuration()
            ? -1
            : static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(next) + 1, INT_MAX));
    int r = poll(fds, full ? 1 : 2, timeout_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      log_->Error(absl::StrCat(name_, ": poll failed"), {{"error", std::strerror(errno)}});
      return;
    }
    if (fds[0].revents != 0) {
      uint64_t count = 0;
      [[maybe_unused]] ssize_t n = read(wake_fd_, &count, sizeof(count));
      continue;  // Stop, or a connection ended: look again
    }
    if (full || (fds[1].revents & POLLIN) == 0) continue;
    int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        log_->Warn(absl::StrCat(name_, ": accept failed"), {{"error", std::strerror(errno)}});
        usleep(50'000);  // out of descriptors or memory: do not spin on the ready backlog
      }
      continue;
    }
    timeval tv{2, 0};
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    absl::MutexLock lock(&mu_);
    Conn& c = conns_.emplace_back();
    c.fd = conn;
    c.deadline = absl::Now() + options_.deadline;
    try {
      c.thread = std::thread([this, &c] {
        serve_(c.fd);
        {
          absl::MutexLock done_lock(&mu_);
          c.done = true;
        }
        Wake();
      });
    } catch (const std::system_error& e) {
      log_->Warn(absl::StrCat(name_, ": no thread for a connection"), {{"error", e.what()}});
      conns_.pop_back();
      close(conn);
    }
  }
}

}  // namespace kvtier::server
