#include "src/server/shm_protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "src/common/status_macros.h"

namespace kvtier::shm {
namespace {

void PutLE(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t GetLE(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat("shared memory: ", what, ": ", std::strerror(errno)));
}

// Reads exactly n bytes. `deadline` bounds the wait when not infinite.
absl::Status ReadFull(int fd, char* out, size_t n, absl::Time deadline) {
  size_t got = 0;
  while (got < n) {
    if (deadline != absl::InfiniteFuture()) {
      // Rounded up: a poll that times out has reached the deadline.
      const int64_t ms =
          static_cast<int64_t>(std::ceil(absl::ToDoubleMilliseconds(deadline - absl::Now())));
      if (ms <= 0) return absl::DeadlineExceededError("shared memory: no answer in time");
      pollfd p{fd, POLLIN, 0};
      int r = poll(&p, 1, static_cast<int>(ms));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Errno("poll");
      if (r == 0) return absl::DeadlineExceededError("shared memory: no answer in time");
    }
    ssize_t r = recv(fd, out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // The socket's receive timeout: the peer may still be working on it.
      return absl::DeadlineExceededError("shared memory: no answer within the receive timeout");
    }
    if (r < 0) return Errno("recv");
    if (r == 0) return absl::UnavailableError("shared memory: connection closed early");
    got += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t r = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Errno("send");
    sent += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

std::string Reply(uint32_t code, uint64_t arena_id, uint64_t arena_bytes, absl::string_view msg) {
  std::string out(kMagic, sizeof(kMagic));
  PutLE(out, code, 4);
  PutLE(out, arena_id, 8);
  PutLE(out, arena_bytes, 8);
  msg = msg.substr(0, kMaxMessageBytes);
  PutLE(out, msg.size(), 4);
  out.append(msg.data(), msg.size());
  return out;
}

}  // namespace

absl::StatusOr<ArenaGrant> RequestArena(const std::string& socket_path, absl::string_view token,
                                        absl::Duration timeout, bool session) {
  if (token.size() > kMaxTokenBytes) {
    return absl::InvalidArgumentError("token: longer than 4096 bytes");
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared memory socket path '", socket_path, "' is too long"));
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) close(fd);
    }
  } closer{fd};
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("shared memory: cannot connect to '", socket_path,
                                               "': ", std::strerror(errno)));
  }
  std::string req(session ? kSessionMagic : kMagic, sizeof(kMagic));
  PutLE(req, token.size(), 4);
  req.append(token.data(), token.size());
  KVTIER_RETURN_IF_ERROR(WriteAll(fd, req));

  const absl::Time deadline = absl::Now() + timeout;
  // The fixed part arrives with the fd attached to it.
  constexpr size_t kFixed = 8 + 4 + 8 + 8 + 4;
  char head[kFixed];
  int received_fd = -1;
  {
    pollfd p{fd, POLLIN, 0};
    int64_t ms = absl::ToInt64Milliseconds(timeout);
    int r;
    do {
      r = poll(&p, 1, static_cast<int>(ms));
    } while (r < 0 && errno == EINTR);
    if (r < 0) return Errno("poll");
    if (r == 0) return absl::DeadlineExceededError("shared memory: no answer in time");
    iovec iov{head, kFixed};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n;
    do {
      n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return Errno("recvmsg");
    if (n == 0) return absl::UnavailableError("shared memory: connection closed early");
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        std::memcpy(&received_fd, CMSG_DATA(c), sizeof(int));
      }
    }
    absl::Status rest = ReadFull(fd, head + n, kFixed - static_cast<size_t>(n), deadline);
    if (!rest.ok()) {
      if (received_fd >= 0) close(received_fd);
      return rest;
    }
  }
  auto fail = [&](absl::Status s) {
    if (received_fd >= 0) close(received_fd);
    return s;
  };
  if (std::memcmp(head, kMagic, sizeof(kMagic)) != 0) {
    return fail(absl::DataLossError("shared memory: the daemon's answer has a bad magic"));
  }
  const uint32_t code = static_cast<uint32_t>(GetLE(head + 8, 4));
  ArenaGrant g;
  g.arena_id = GetLE(head + 12, 8);
  g.arena_bytes = GetLE(head + 20, 8);
  const uint32_t msg_len = static_cast<uint32_t>(GetLE(head + 28, 4));
  if (msg_len > kMaxMessageBytes) {
    return fail(absl::DataLossError("shared memory: the daemon's message is too long"));
  }
  std::string message(msg_len, '\0');
  if (absl::Status s = ReadFull(fd, message.data(), msg_len, deadline); !s.ok()) return fail(s);
  if (code != 0) {
    return fail(absl::Status(
        code <= 16 ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown, message));
  }
  if (received_fd < 0) {
    return absl::DataLossError("shared memory: the daemon granted the arena but sent no fd");
  }
  g.fd = received_fd;
  if (session) {
    g.session_fd = fd;
    closer.fd = -1;
  }
  return g;
}

absl::StatusOr<ArenaRequest> ReadRequest(int conn) {
  char head[12];
  KVTIER_RETURN_IF_ERROR(ReadFull(conn, head, sizeof(head), absl::InfiniteFuture()));
  ArenaRequest req;
  if (std::memcmp(head, kSessionMagic, sizeof(kSessionMagic)) == 0) {
    req.session = true;
  } else if (std::memcmp(head, kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("magic: not a kvtier shared-memory request");
  }
  const uint32_t len = static_cast<uint32_t>(GetLE(head + 8, 4));
  if (len > kMaxTokenBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("token: ", len, " bytes exceed the limit of ", kMaxTokenBytes));
  }
  req.token.assign(len, '\0');
  KVTIER_RETURN_IF_ERROR(ReadFull(conn, req.token.data(), len, absl::InfiniteFuture()));
  return req;
}

absl::Status SendGrant(int conn, const ArenaGrant& grant) {
  std::string bytes = Reply(0, grant.arena_id, grant.arena_bytes, "");
  iovec iov{bytes.data(), bytes.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &grant.fd, sizeof(int));
  ssize_t n;
  do {
    n = sendmsg(conn, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Errno("sendmsg");
  if (static_cast<size_t>(n) < bytes.size()) return WriteAll(conn, bytes.substr(n));
  return absl::OkStatus();
}

absl::Status SendRefusal(int conn, const absl::Status& status) {
  return WriteAll(conn, Reply(static_cast<uint32_t>(status.code()), 0, 0, status.message()));
}

absl::Status WriteControlRequest(int fd, ControlMethod method, uint8_t flags,
                                 absl::string_view body) {
  if (body.size() > kMaxControlBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request: ", body.size(), " bytes exceed the control frame limit of ", kMaxControlBytes));
  }
  std::string frame;
  frame.reserve(6 + body.size());
  PutLE(frame, body.size(), 4);
  frame.push_back(static_cast<char>(method));
  frame.push_back(static_cast<char>(flags));
  frame.append(body.data(), body.size());
  return WriteAll(fd, frame);
}

absl::StatusOr<ControlReply> ReadControlReply(int fd) {
  char head[8];
  KVTIER_RETURN_IF_ERROR(ReadFull(fd, head, sizeof(head), absl::InfiniteFuture()));
  const uint32_t len = static_cast<uint32_t>(GetLE(head, 4));
  const uint32_t code = static_cast<uint32_t>(GetLE(head + 4, 4));
  if (len > kMaxControlBytes) {
    return absl::DataLossError("shared memory: the daemon's reply is too long");
  }
  ControlReply reply;
  reply.body.resize(len);
  KVTIER_RETURN_IF_ERROR(ReadFull(fd, reply.body.data(), len, absl::InfiniteFuture()));
  if (code != 0) {
    reply.status = absl::Status(
        code <= 16 ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown, reply.body);
    reply.body.clear();
  }
  return reply;
}

absl::StatusOr<ControlRequest> ReadControlRequest(int fd, uint32_t max_bytes,
                                                  absl::Duration frame_timeout) {
  char head[6];
  // A clean close between frames ends the session without an error.
  ssize_t first;
  do {
    first = recv(fd, head, 1, 0);
  } while (first < 0 && errno == EINTR);
  if (first == 0) return absl::OutOfRangeError("shared memory: the client closed the session");
  if (first < 0) return Errno("recv");
  // A client that starts a frame and stops holds a session thread (and,
  // were the body allocated up front, up to max_bytes) only this long.
  const absl::Time deadline = absl::Now() + frame_timeout;
  auto late = [&](const absl::Status& s) {
    return absl::IsDeadlineExceeded(s) ? absl::DeadlineExceededError(absl::StrCat(
                                             "request: the frame was not complete within ",
                                             absl::FormatDuration(frame_timeout)))
                                       : s;
  };
  if (absl::Status s = ReadFull(fd, head + 1, sizeof(head) - 1, deadline); !s.ok()) return late(s);
  const uint32_t len = static_cast<uint32_t>(GetLE(head, 4));
  if (len > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("request: ", len, " bytes exceed the limit of ",
                                                   max_bytes, " for a control message"));
  }
  ControlRequest req;
  req.method = static_cast<ControlMethod>(static_cast<uint8_t>(head[4]));
  req.flags = static_cast<uint8_t>(head[5]);
  constexpr size_t kStep = 256 << 10;
  while (req.body.size() < len) {
    const size_t at = req.body.size();
    req.body.resize(std::min<size_t>(len, at + kStep));
    if (absl::Status s = ReadFull(fd, req.body.data() + at, req.body.size() - at, deadline);
        !s.ok()) {
      return late(s);
    }
  }
  return req;
}

absl::Status WriteControlReply(int fd, const absl::Status& status, absl::string_view body) {
  absl::string_view payload = status.ok() ? body : status.message().substr(0, kMaxMessageBytes);
  std::string frame;
  frame.reserve(8 + payload.size());
  PutLE(frame, payload.size(), 4);
  PutLE(frame, static_cast<uint32_t>(status.code()), 4);
  frame.append(payload.data(), payload.size());
  return WriteAll(fd, frame);
}

}  // namespace kvtier::shm
