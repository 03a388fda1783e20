#include "src/server/shm_protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
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
      int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return absl::UnavailableError("shared memory: timed out waiting for the daemon");
      pollfd p{fd, POLLIN, 0};
      int r = poll(&p, 1, static_cast<int>(ms));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Errno("poll");
      if (r == 0) return absl::UnavailableError("shared memory: timed out waiting for the daemon");
    }
    ssize_t r = recv(fd, out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
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
                                        absl::Duration timeout) {
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
    ~Closer() { close(fd); }
  } closer{fd};
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("shared memory: cannot connect to '", socket_path,
                                               "': ", std::strerror(errno)));
  }
  std::string req(kMagic, sizeof(kMagic));
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
    if (r <= 0) return absl::UnavailableError("shared memory: timed out waiting for the daemon");
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
  return g;
}

absl::StatusOr<std::string> ReadRequest(int conn) {
  char head[12];
  KVTIER_RETURN_IF_ERROR(ReadFull(conn, head, sizeof(head), absl::InfiniteFuture()));
  if (std::memcmp(head, kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("magic: not a kvtier shared-memory request");
  }
  const uint32_t len = static_cast<uint32_t>(GetLE(head + 8, 4));
  if (len > kMaxTokenBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("token: ", len, " bytes exceed the limit of ", kMaxTokenBytes));
  }
  std::string token(len, '\0');
  KVTIER_RETURN_IF_ERROR(ReadFull(conn, token.data(), len, absl::InfiniteFuture()));
  return token;
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

}  // namespace kvtier::shm
