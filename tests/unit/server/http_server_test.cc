// The operational HTTP server (http_server.h) on a loopback port: what it
// parses out of a request, that damaged requests get a well-formed answer
// without stopping it, and that stalled clients cannot hold it.
#include "src/server/http_server.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/mutate.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// A connection to 127.0.0.1:`port` with a 10 s receive timeout.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Everything the server writes on `fd` until it closes (or 10 s pass).
std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

// Sends `request` on a new connection, half-closes, and returns everything
// the server wrote.
std::string Send(int port, const std::string& request) {
  const int fd = Connect(port);
  (void)send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  shutdown(fd, SHUT_WR);
  std::string out = ReadAll(fd);
  close(fd);
  return out;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Echoes what it parsed, one field a line.
    ASSERT_OK_AND_ASSIGN(
        server_,
        HttpServer::Start(
            "127.0.0.1:0", "http_listen", HttpServer::RequestHandler([](const HttpRequest& r) {
              HttpResponse resp;
              resp.body = absl::StrCat("method=", r.method, "\npath=", r.path, "\nquery=", r.query,
                                       "\nx=", r.QueryParam("x"), "\nhost=", r.Header("host"),
                                       "\nheaders=", r.headers.size(), "\n");
              resp.headers.push_back("X-Seen: yes");
              return resp;
            }),
            &log_));
  }

  std::string Exchange(const std::string& request) { return Send(server_->port(), request); }

  Logger log_{LogLevel::kError};
  std::unique_ptr<HttpServer> server_;
};

// The status code of a response, after checking that its Content-Length
// matches its body; -1 when it is not a well-formed HTTP/1.1 response.
int Status(const std::string& response, std::string* body = nullptr) {
  const size_t end = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.1 ") || end == std::string::npos) return -1;
  int status = 0;
  if (!absl::SimpleAtoi(response.substr(9, 3), &status)) return -1;
  int64_t length = -1;
  for (absl::string_view line : absl::StrSplit(response.substr(0, end), "\r\n")) {
    if (absl::StartsWith(line, "Content-Length: ") && !absl::SimpleAtoi(line.substr(16), &length)) {
      return -1;
    }
  }
  if (length < 0) return -1;
  const std::string rest = response.substr(end + 4);
  if (body != nullptr) *body = rest;
  return static_cast<int64_t>(rest.size()) == length ? status : -1;
}

TEST_F(HttpServerTest, ParsesTheRequestLineQueryAndHeaders) {
  std::string body;
  const std::string resp =
      Exchange("GET /api/chunks?y=2&x=a%2Fb+c&z HTTP/1.1\r\nHost:  node-1 \r\nX-Other: 1\r\n\r\n");
  ASSERT_EQ(Status(resp, &body), 200) << resp;
  EXPECT_THAT(resp, HasSubstr("\r\nX-Seen: yes\r\n"));
  EXPECT_THAT(resp, HasSubstr("\r\nConnection: close\r\n"));
  EXPECT_EQ(body,
            "method=GET\npath=/api/chunks\nquery=y=2&x=a%2Fb+c&z\nx=a/b c\nhost=node-1\n"
            "headers=2\n");
  // HEAD: the same headers, no body.
  const std::string head = Exchange("HEAD /healthz HTTP/1.0\r\n\r\n");
  EXPECT_THAT(head, StartsWith("HTTP/1.1 200 "));
  EXPECT_EQ(head.substr(head.find("\r\n\r\n") + 4), "");
}

TEST_F(HttpServerTest, RefusesOtherMethodsAndGarbage) {
  EXPECT_EQ(Status(Exchange("POST /metrics HTTP/1.1\r\n\r\n")), 405);
  EXPECT_EQ(Status(Exchange("GET /metrics\r\n\r\n")), 400);
  EXPECT_EQ(Status(Exchange("GET /metrics SPDY/3\r\n\r\n")), 400);
  EXPECT_EQ(Status(Exchange("")), 400);
  EXPECT_EQ(Status(Exchange(std::string(20000, 'A'))), 400);
}

// Damaged requests: each gets one well-formed response (200, 400 or 405),
// and the server serves a good request afterwards.
TEST_F(HttpServerTest, DamagedRequestsGetWellFormedAnswers) {
  const std::string seed =
      "GET /api/chunks?x=%41%42&limit=10 HTTP/1.1\r\nHost: node-1\r\nAuthorization: Bearer "
      "t\r\n\r\n";
  testing::Mutator m(8080);
  int ok = 0, refused = 0;
  for (int i = 0; i < 300; ++i) {
    const int status = Status(Exchange(m.Mutate(seed)));
    EXPECT_TRUE(status == 200 || status == 400 || status == 405) << "iteration " << i;
    (status == 200 ? ok : refused) += 1;
  }
  EXPECT_GT(ok, 30);
  EXPECT_GT(refused, 30);
  std::string body;
  ASSERT_EQ(Status(Exchange(seed), &body), 200);
  EXPECT_THAT(body, HasSubstr("x=AB\n"));
}

// Clients that connect and send nothing do not hold up the others: with the
// 2 s receive timeout of each connection, eight of them served one after
// another would keep a probe waiting 16 s, past the client's 10 s.
TEST_F(HttpServerTest, StalledClientsDoNotHoldUpOthers) {
  std::vector<int> stalled(8);
  for (int& fd : stalled) fd = Connect(server_->port());
  std::string body;
  ASSERT_EQ(Status(Exchange("GET /healthz HTTP/1.1\r\n\r\n"), &body), 200);
  EXPECT_THAT(body, HasSubstr("path=/healthz\n"));
  // Each stalled one is answered 400 once its receive timeout ends it.
  for (int fd : stalled) {
    EXPECT_EQ(Status(ReadAll(fd)), 400);
    close(fd);
  }
}

// With one connection at a time, a second client waits in the backlog until
// the first, which sends half a request and stalls, is cut at its deadline.
TEST(HttpServerLimitsTest, ConnectionsAreCappedAndCutAtTheirDeadline) {
  Logger log{LogLevel::kError};
  AcceptLoopOptions limits;
  limits.max_connections = 1;
  limits.deadline = absl::Seconds(1);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<HttpServer> server,
                       HttpServer::Start("127.0.0.1:0", "http_listen",
                                         HttpServer::RequestHandler([](const HttpRequest& r) {
                                           return HttpResponse{200, "text/plain", r.path, {}};
                                         }),
                                         &log, limits));
  // Trickles a byte every 300 ms: no receive timeout of 2 s ever ends it.
  const int slow = Connect(server->port());
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    const std::string partial = "GET /slow HTTP/1.1\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for (size_t i = 0; i < partial.size() && !stop.load(); ++i) {
      if (send(slow, &partial[i], 1, MSG_NOSIGNAL) != 1) return;
      absl::SleepFor(absl::Milliseconds(300));
    }
  });
  // The listen backlog is first in, first out: the slow one is accepted
  // first.
  std::string body;
  EXPECT_EQ(Status(Send(server->port(), "GET /quick HTTP/1.1\r\n\r\n"), &body), 200);
  EXPECT_EQ(body, "/quick");
  // The quick one was served only after the slow one had been cut: its end
  // is there to read at once, not at the deadline 1 s later.
  pollfd p{slow, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 200), 1);
  const std::string slow_answer = ReadAll(slow);
  EXPECT_TRUE(slow_answer.empty() || Status(slow_answer) == 400) << slow_answer;
  EXPECT_EQ(server->cut_connections(), 1u);
  stop.store(true);
  trickle.join();
  close(slow);
}

TEST(HttpServerLimitsTest, RefusesZeroLimits) {
  Logger log{LogLevel::kError};
  AcceptLoopOptions limits;
  limits.max_connections = 0;
  EXPECT_THAT(HttpServer::Start(
                  "127.0.0.1:0", "http_listen",
                  HttpServer::RequestHandler([](const HttpRequest&) { return HttpResponse{}; }),
                  &log, limits),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                HasSubstr("max_connections and deadline")));
}

}  // namespace
}  // namespace kvtier::server
