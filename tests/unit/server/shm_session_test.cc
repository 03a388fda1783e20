// The shared-memory side channel's control sessions (shm_protocol.h,
// shm_server.h): a real ShmServer on a Unix socket in a temporary folder,
// with a control handler that echoes what it was asked, and the client
// functions of shm_protocol.h.
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/common/status_macros.h"
#include "src/common/temp_path.h"
#include "src/server/config.h"
#include "src/server/shm_protocol.h"
#include "src/server/shm_server.h"
#include "tests/testing/mutate.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::server {
namespace {

using ::kvtier::testing::StatusIs;

constexpr char kAdmin[] = "admin-token-0123456789";
constexpr char kTenant[] = "tenant-a-token-012345";  // no shared memory

class ShmSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(dir_, MakeTempDir("/tmp", "kvtier-shm-session-"));
    DaemonConfig config;
    config.admin_token = kAdmin;
    config.tenants.push_back({"a", kTenant, {}, {}, false});
    auth_ = std::make_unique<Authenticator>(config);
    memfd_ = static_cast<int>(syscall(SYS_memfd_create, "kvtier-test-arena", 0));
    ASSERT_GE(memfd_, 0);
    ASSERT_EQ(ftruncate(memfd_, 1 << 20), 0);
  }
  void TearDown() override {
    server_.reset();
    if (memfd_ >= 0) close(memfd_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void Start(uint32_t max_sessions = 4, absl::Duration frame_timeout = absl::Seconds(10)) {
    ShmServerOptions o;
    o.path = path();
    o.arena_fd = memfd_;
    o.arena_id = 42;
    o.arena_bytes = 1 << 20;
    o.max_sessions = max_sessions;
    o.max_control_bytes = 1 << 16;
    o.frame_timeout = frame_timeout;
    // Echoes "<principal>:<method>:<body>"; a body "fail" fails the call.
    o.control = [this](const Principal& who, shm::ControlMethod m,
                       absl::string_view body) -> absl::StatusOr<std::string> {
      calls_.fetch_add(1);
      if (body == "fail") return absl::NotFoundError("asked to fail");
      return absl::StrCat(who.name, ":", static_cast<int>(m), ":", body);
    };
    ASSERT_OK_AND_ASSIGN(server_, ShmServer::Start(o, auth_.get(), &log_));
  }
  std::string path() const { return dir_ + "/kvtierd.sock.shm"; }
  // A plain connection to the socket, no handshake sent; -1 on failure.
  int ConnectRaw() const {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path().c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }

  absl::StatusOr<shm::ArenaGrant> Open(const std::string& token) {
    return shm::RequestArena(path(), token, absl::Seconds(5), /*session=*/true);
  }

  std::string dir_;
  std::unique_ptr<Authenticator> auth_;
  Logger log_{LogLevel::kError};
  int memfd_ = -1;
  std::atomic<int> calls_{0};
  std::unique_ptr<ShmServer> server_;
};

absl::StatusOr<shm::ControlReply> Call(int fd, shm::ControlMethod m, absl::string_view body) {
  KVTIER_RETURN_IF_ERROR(shm::WriteControlRequest(fd, m, 0, body));
  return shm::ReadControlReply(fd);
}

TEST_F(ShmSessionTest, SessionCarriesCallsForItsPrincipal) {
  Start();
  ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g, Open(kAdmin));
  EXPECT_GE(g.fd, 0);
  EXPECT_GE(g.session_fd, 0);
  EXPECT_EQ(g.arena_id, 42u);
  EXPECT_EQ(g.arena_bytes, 1u << 20);
  close(g.fd);
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(shm::ControlReply r,
                         Call(g.session_fd, shm::ControlMethod::kPin, absl::StrCat("b", i)));
    EXPECT_OK(r.status);
    EXPECT_EQ(r.body, absl::StrCat("admin:4:b", i));
  }
  // A failed call answers with its status and leaves the session usable.
  ASSERT_OK_AND_ASSIGN(shm::ControlReply bad,
                       Call(g.session_fd, shm::ControlMethod::kLookup, "fail"));
  EXPECT_THAT(bad.status, StatusIs(absl::StatusCode::kNotFound, "asked to fail"));
  // A request without a reply, then one with: the answers stay in step.
  ASSERT_OK(
      shm::WriteControlRequest(g.session_fd, shm::ControlMethod::kRelease, shm::kNoReply, "quiet"));
  ASSERT_OK_AND_ASSIGN(shm::ControlReply r,
                       Call(g.session_fd, shm::ControlMethod::kCommit, "loud"));
  EXPECT_EQ(r.body, "admin:3:loud");
  EXPECT_EQ(calls_.load(), 6);
  EXPECT_EQ(server_->sessions(), 1u);
  close(g.session_fd);
}

TEST_F(ShmSessionTest, OneShotRequestStillClosesTheConnection) {
  Start();
  ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g, shm::RequestArena(path(), kAdmin, absl::Seconds(5)));
  EXPECT_GE(g.fd, 0);
  EXPECT_EQ(g.session_fd, -1);
  close(g.fd);
  EXPECT_EQ(server_->sessions(), 0u);
}

TEST_F(ShmSessionTest, RefusesPrincipalsWithoutSharedMemory) {
  Start();
  EXPECT_THAT(Open(kTenant), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(Open("wrong-token-0000000000"), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(Open(""), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(calls_.load(), 0);
}

TEST_F(ShmSessionTest, OversizedRequestIsRefusedAndEndsTheSession) {
  Start();
  ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g, Open(kAdmin));
  close(g.fd);
  ASSERT_OK_AND_ASSIGN(shm::ControlReply r,
                       Call(g.session_fd, shm::ControlMethod::kLookup, std::string(70000, 'x')));
  EXPECT_THAT(r.status, StatusIs(absl::StatusCode::kInvalidArgument,
                                 ::testing::HasSubstr("exceed the limit of 65536")));
  EXPECT_THAT(shm::ReadControlReply(g.session_fd), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(calls_.load(), 0);
  close(g.session_fd);
}

TEST_F(ShmSessionTest, LimitsSessionsAndReusesEndedOnes) {
  Start(/*max_sessions=*/2);
  std::vector<int> open;
  for (int i = 0; i < 2; ++i) {
    ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g, Open(kAdmin));
    close(g.fd);
    open.push_back(g.session_fd);
  }
  EXPECT_THAT(Open(kAdmin), StatusIs(absl::StatusCode::kResourceExhausted));
  close(open.back());
  open.pop_back();
  // The ended session's place is given to the next one once its thread is
  // done.
  absl::StatusOr<shm::ArenaGrant> again;
  for (int i = 0; i < 200; ++i) {
    again = Open(kAdmin);
    if (again.ok()) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_OK(again.status());
  close(again->fd);
  open.push_back(again->session_fd);
  for (int fd : open) close(fd);
}

// Handshakes are served concurrently; the limit still holds when many
// arrive at once.
TEST_F(ShmSessionTest, ConcurrentHandshakesKeepTheLimit) {
  Start(/*max_sessions=*/2);
  std::vector<absl::StatusOr<shm::ArenaGrant>> results(8);
  std::vector<std::thread> threads;
  threads.reserve(results.size());
  for (auto& r : results) threads.emplace_back([&] { r = Open(kAdmin); });
  for (std::thread& t : threads) t.join();
  int granted = 0;
  for (auto& r : results) {
    if (r.ok()) {
      ++granted;
      close(r->fd);
    } else {
      EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kResourceExhausted));
    }
  }
  EXPECT_EQ(granted, 2);
  EXPECT_EQ(server_->sessions(), 2u);
  for (auto& r : results) {
    if (r.ok()) close(r->session_fd);
  }
}

TEST_F(ShmSessionTest, StopEndsOpenSessions) {
  Start();
  ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g, Open(kAdmin));
  close(g.fd);
  server_->Stop();
  EXPECT_EQ(server_->sessions(), 0u);
  // The daemon's end is closed: the next call fails as Unavailable.
  absl::Status s = shm::WriteControlRequest(g.session_fd, shm::ControlMethod::kPin, 0, "x");
  if (s.ok()) {
    EXPECT_THAT(shm::ReadControlReply(g.session_fd), StatusIs(absl::StatusCode::kUnavailable));
  } else {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable));
  }
  close(g.session_fd);
  EXPECT_FALSE(std::filesystem::exists(path()));
}

// Little-endian bytes of `v`.
std::string Le(uint64_t v, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
  return out;
}

// Damaged handshakes and control frames, each on its own connection that the
// client then half-closes: the server answers or drops each one and goes on
// serving; a well-formed client afterwards gets its arena and its calls.
TEST_F(ShmSessionTest, DamagedRequestsAreDroppedAndTheServerServesOn) {
  Start();
  const std::string token = kAdmin;
  const std::string handshake = std::string(shm::kSessionMagic, 8) + Le(token.size(), 4) + token;
  const std::string frame = Le(5, 4) + std::string(1, 1) + std::string(1, 0) + "hello";
  const std::string seed = handshake + frame + frame;
  testing::Mutator m(4242);
  for (int i = 0; i < 300; ++i) {
    const std::string bytes = m.Mutate(seed);
    const int fd = ConnectRaw();
    ASSERT_GE(fd, 0) << i;
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    // The server may drop the connection before reading everything.
    (void)send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    shutdown(fd, SHUT_WR);
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) {
    }
    // Closed, or reset when the server left bytes unread.
    EXPECT_TRUE(n == 0 || errno == ECONNRESET) << "iteration " << i << ": " << std::strerror(errno);
    close(fd);
  }
  // Some damage left the handshake intact and reached the frames.
  EXPECT_GT(calls_.load(), 20);
  // Every damaged session has ended.
  for (int i = 0; i < 500 && server_->sessions() != 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(server_->sessions(), 0u);
  ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g, Open(kAdmin));
  close(g.fd);
  ASSERT_OK_AND_ASSIGN(shm::ControlReply r, Call(g.session_fd, shm::ControlMethod::kPin, "ok"));
  EXPECT_OK(r.status);
  EXPECT_EQ(r.body, "admin:4:ok");
  close(g.session_fd);
}

// Clients that connect and send nothing do not hold up the handshakes of
// others: served one after another, each for its 2 s receive timeout, the
// eight would keep the good client waiting 16 s, past its 5 s.
TEST_F(ShmSessionTest, StalledHandshakesDoNotHoldUpOthers) {
  Start();
  std::vector<int> stalled;
  for (int i = 0; i < 8; ++i) {
    const int fd = ConnectRaw();
    ASSERT_GE(fd, 0) << i;
    stalled.push_back(fd);
  }
  ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g, Open(kAdmin));
  close(g.fd);
  ASSERT_OK_AND_ASSIGN(shm::ControlReply r, Call(g.session_fd, shm::ControlMethod::kPin, "go"));
  EXPECT_EQ(r.body, "admin:4:go");
  EXPECT_EQ(server_->sessions(), 1u);
  close(g.session_fd);
  for (int fd : stalled) close(fd);
}

// A client that starts a control frame and stops is told so and dropped at
// the frame timeout; it holds no session after that, and others are served.
TEST_F(ShmSessionTest, AHalfSentFrameEndsItsSessionAtTheFrameTimeout) {
  Start(4, absl::Milliseconds(300));
  ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g, Open(kAdmin));
  close(g.fd);
  // A header announcing 60,000 bytes, and 10 of them.
  const std::string part = Le(60000, 4) + std::string(1, 1) + std::string(1, 0) + "0123456789";
  ASSERT_EQ(send(g.session_fd, part.data(), part.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(part.size()));
  const absl::Time sent = absl::Now();
  timeval bound{5, 0};  // without the frame timeout the reply never comes
  setsockopt(g.session_fd, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof(bound));
  absl::StatusOr<shm::ControlReply> r = shm::ReadControlReply(g.session_fd);
  ASSERT_OK(r.status());
  EXPECT_THAT(r->status, StatusIs(absl::StatusCode::kDeadlineExceeded,
                                  ::testing::HasSubstr("not complete within")));
  EXPECT_LT(absl::Now() - sent, absl::Seconds(3));
  for (int i = 0; i < 300 && server_->sessions() != 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(server_->sessions(), 0u);
  EXPECT_EQ(calls_.load(), 0);
  close(g.session_fd);

  ASSERT_OK_AND_ASSIGN(shm::ArenaGrant g2, Open(kAdmin));
  close(g2.fd);
  ASSERT_OK_AND_ASSIGN(shm::ControlReply ok, Call(g2.session_fd, shm::ControlMethod::kPin, "on"));
  EXPECT_EQ(ok.body, "admin:4:on");
  close(g2.session_fd);
}

// A client must tell a daemon that did not answer in time (it may still
// carry the call out: not to be sent again) from one that closed the session.
TEST(ShmControlReply, TimeoutAndClosedSessionAreTold) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  timeval tv{0, 100 * 1000};
  setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  EXPECT_THAT(shm::ReadControlReply(sv[0]).status(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  close(sv[1]);
  EXPECT_THAT(shm::ReadControlReply(sv[0]).status(), StatusIs(absl::StatusCode::kUnavailable));
  close(sv[0]);
}

TEST_F(ShmSessionTest, DaemonWithoutSessionsSaysUnimplemented) {
  ShmServerOptions o;
  o.path = path();
  o.arena_fd = memfd_;
  o.arena_id = 7;
  o.arena_bytes = 1 << 20;
  ASSERT_OK_AND_ASSIGN(server_, ShmServer::Start(o, auth_.get(), &log_));
  EXPECT_THAT(Open(kAdmin), StatusIs(absl::StatusCode::kUnimplemented));
}

}  // namespace
}  // namespace kvtier::server
