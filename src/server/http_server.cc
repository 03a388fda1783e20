#include "src/server/http_server.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "src/server/accept_loop.h"

namespace kvtier::server {
namespace {

constexpr size_t kMaxRequestBytes = 8192;

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 400:
      return "Bad Request";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

void SendAll(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t r = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    sent += static_cast<size_t>(r);
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string PercentDecode(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 &&
               HexValue(s[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<HttpRequest> ParseHttpRequest(absl::string_view raw) {
  const size_t eol = raw.find("\r\n");
  std::vector<absl::string_view> parts =
      absl::StrSplit(raw.substr(0, eol == absl::string_view::npos ? 0 : eol), ' ');
  if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/1.")) {
    return absl::InvalidArgumentError("not an HTTP/1.x request line");
  }
  if (parts[0] != "GET" && parts[0] != "HEAD") {
    return absl::UnimplementedError("only GET and HEAD");
  }
  HttpRequest request;
  request.method = std::string(parts[0]);
  const size_t q = parts[1].find('?');
  request.path = std::string(parts[1].substr(0, q));
  if (q != absl::string_view::npos) request.query = std::string(parts[1].substr(q + 1));
  const size_t end = raw.find("\r\n\r\n");
  if (end != absl::string_view::npos && end > eol) {
    for (absl::string_view line : absl::StrSplit(raw.substr(eol + 2, end - eol - 2), "\r\n")) {
      const size_t colon = line.find(':');
      if (colon == absl::string_view::npos) continue;
      request.headers[absl::AsciiStrToLower(line.substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return request;
}

std::string HttpRequest::Header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

std::string HttpRequest::QueryParam(const std::string& name) const {
  for (absl::string_view part : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    const size_t eq = part.find('=');
    if (PercentDecode(part.substr(0, eq)) != name) continue;
    return eq == absl::string_view::npos ? std::string() : PercentDecode(part.substr(eq + 1));
  }
  return std::string();
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& host_port,
                                                              const std::string& field,
                                                              Handler handler, Logger* log) {
  return Start(host_port, field,
               RequestHandler([h = std::move(handler)](const HttpRequest& r) { return h(r.path); }),
               log);
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& host_port,
                                                              const std::string& field,
                                                              RequestHandler handler, Logger* log,
                                                              AcceptLoopOptions limits) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", host_port, "' is not host:port"));
  }
  std::string host = host_port.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  const std::string port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": cannot resolve '", host_port, "': ", gai_strerror(rc)));
  }
  int fd = -1;
  std::string error = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 64) == 0) break;
    error = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": cannot listen on '", host_port, "': ", error));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  int bound_port = bound.ss_family == AF_INET6
                       ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                       : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  std::unique_ptr<HttpServer> s(new HttpServer(bound_port, std::move(handler), log));
  absl::StatusOr<std::unique_ptr<AcceptLoop>> loop = AcceptLoop::Start(
      fd, [p = s.get()](int conn) { p->Serve(conn); }, "http", log, limits);
  if (!loop.ok()) return loop.status();
  s->loop_ = *std::move(loop);
  return s;
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Stop() {
  if (loop_ != nullptr) loop_->Stop();  // null when Start failed
}

void HttpServer::Serve(int conn) {
  std::string req;
  char buf[2048];
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < kMaxRequestBytes) {
    ssize_t n = recv(conn, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    req.append(buf, static_cast<size_t>(n));
  }
  HttpResponse resp;
  absl::StatusOr<HttpRequest> request = ParseHttpRequest(req);
  if (request.ok()) {
    resp = handler_(*request);
  } else if (absl::IsUnimplemented(request.status())) {
    resp = {405, "text/plain; charset=utf-8", "only GET and HEAD\n"};
  } else {
    resp = {400, "text/plain; charset=utf-8", "bad request\n"};
  }
  const bool head = request.ok() && request->method == "HEAD";
  std::string out = absl::StrCat("HTTP/1.1 ", resp.status, " ", Reason(resp.status),
                                 "\r\nContent-Type: ", resp.content_type,
                                 "\r\nContent-Length: ", resp.body.size());
  for (const std::string& h : resp.headers) absl::StrAppend(&out, "\r\n", h);
  absl::StrAppend(&out, "\r\nConnection: close\r\n\r\n");
  if (!head) out += resp.body;
  SendAll(conn, out);
  log_->Debug("http", {{"path", request.ok() ? request->path : ""}, {"status", resp.status}});
}

}  // namespace kvtier::server
