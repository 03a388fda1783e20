#include "tests/integration/fault_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvtier::testing {

namespace {

// Reads until the end of the request head (or EOF / error / 2 s).
std::string ReadHead(int fd) {
  std::string head;
  char buf[4096];
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < (1 << 16)) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) break;
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    head.append(buf, static_cast<size_t>(n));
  }
  return head;
}

int ConnectLoopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const char* data, size_t len) {
  while (len > 0) {
    const ssize_t n = ::send(fd, data, len, MSG_NOSIGNAL);
    if (n <= 0) return false;
    data += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(int upstream_port) {
  std::unique_ptr<FaultProxy> p(new FaultProxy());
  p->upstream_port_ = upstream_port;
  p->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->listen_fd_ < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  int one = 1;
  ::setsockopt(p->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(p->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(p->listen_fd_, 128) != 0 ||
      ::getsockname(p->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::InternalError(absl::StrCat("bind/listen: ", strerror(errno)));
  }
  p->port_ = ntohs(addr.sin_port);
  p->acceptor_ = std::thread([raw = p.get()] { raw->AcceptLoop(); });
  return p;
}

FaultProxy::~FaultProxy() {
  stopping_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  ::close(listen_fd_);
  std::vector<std::thread> handlers;
  {
    absl::MutexLock lock(&mu_);
    for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
    handlers.swap(handlers_);
  }
  for (std::thread& t : handlers) t.join();
}

void FaultProxy::Push(Fault fault, int times) {
  absl::MutexLock lock(&mu_);
  for (int i = 0; i < times; ++i) script_.push_back(fault);
}

void FaultProxy::SetDefault(Fault fault) {
  absl::MutexLock lock(&mu_);
  default_ = fault;
}

void FaultProxy::DropConnections() {
  absl::MutexLock lock(&mu_);
  for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
}

void FaultProxy::AcceptLoop() {
  while (!stopping_) {
    const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      if (stopping_) return;
      continue;
    }
    ++connections_;
    absl::MutexLock lock(&mu_);
    Fault fault = default_;
    if (!script_.empty()) {
      fault = script_.front();
      script_.pop_front();
    }
    open_fds_.push_back(client);
    handlers_.emplace_back([this, client, fault] { Serve(client, fault); });
  }
}

void FaultProxy::Serve(int client, Fault fault) {
  int upstream = -1;
  auto done = [&] {
    absl::MutexLock lock(&mu_);
    open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), client), open_fds_.end());
    if (upstream >= 0) {
      open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), upstream), open_fds_.end());
      ::close(upstream);
    }
    ::close(client);
  };
  switch (fault.kind) {
    case Fault::Kind::kStatus503:
    case Fault::Kind::kStatus500: {
      (void)ReadHead(client);
      const std::string answer =
          fault.kind == Fault::Kind::kStatus503
              ? "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
              : "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: "
                "close\r\n\r\n";
      (void)SendAll(client, answer.data(), answer.size());
      ::shutdown(client, SHUT_WR);
      done();
      return;
    }
    case Fault::Kind::kReset: {
      (void)ReadHead(client);
      linger l{1, 0};
      ::setsockopt(client, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
      done();
      return;
    }
    case Fault::Kind::kHang: {
      char buf[4096];
      while (!stopping_) {
        pollfd p{client, POLLIN, 0};
        if (::poll(&p, 1, 100) > 0 && ::recv(client, buf, sizeof(buf), 0) <= 0) break;
      }
      done();
      return;
    }
    case Fault::Kind::kDelay: {
      const absl::Time until = absl::Now() + fault.delay;
      while (!stopping_ && absl::Now() < until) absl::SleepFor(absl::Milliseconds(5));
      break;
    }
    case Fault::Kind::kPass:
      break;
  }
  upstream = ConnectLoopback(upstream_port_);
  if (upstream < 0) {
    done();
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    open_fds_.push_back(upstream);
  }
  char buf[1 << 16];
  pollfd fds[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
  while (!stopping_) {
    if (::poll(fds, 2, 100) < 0) break;
    bool closed = false;
    for (int i = 0; i < 2 && !closed; ++i) {
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      const ssize_t n = ::recv(fds[i].fd, buf, sizeof(buf), 0);
      if (n <= 0 || !SendAll(fds[1 - i].fd, buf, static_cast<size_t>(n))) closed = true;
    }
    if (closed) break;
  }
  done();
}

}  // namespace kvtier::testing
