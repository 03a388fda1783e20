// A small HTTP/1.1 server for the daemon's operational endpoints: /metrics
// (Prometheus text format), /healthz and /readyz. One request per
// connection (Connection: close), GET and HEAD only, requests up to 8 KiB.
// Meant for loopback or a cluster-internal scrape port, not the Internet.
//
// Connections are served on threads of their own (accept_loop.h): a stalled
// client does not hold up a scrape or a probe. Thread-safety: the handler is
// called from several threads at once and must be safe for that; Stop may be
// called from any thread.
#ifndef KVTIER_SRC_SERVER_HTTP_SERVER_H_
#define KVTIER_SRC_SERVER_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "src/server/accept_loop.h"
#include "src/server/log.h"

namespace kvtier::server {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  // Extra header lines, each "Name: value" (no CRLF).
  std::vector<std::string> headers;
};

// A parsed request line and headers.
struct HttpRequest {
  std::string method;                          // "GET" or "HEAD"
  std::string path;                            // without the query string
  std::string query;                           // after '?', undecoded; empty when none
  std::map<std::string, std::string> headers;  // names lowercased, values trimmed

  // The header's value, or "" when absent. `name` must be lowercase.
  std::string Header(const std::string& name) const;
  // The query parameter's value (percent-decoded), or "" when absent.
  std::string QueryParam(const std::string& name) const;
};

// Parses the request line and headers out of `raw` (what was read of a
// request: up to its blank line, or up to 8 KiB). InvalidArgument for a
// request line that is not "METHOD TARGET HTTP/1.x" (the server answers
// 400), Unimplemented for a method other than GET and HEAD (405). Header
// lines without a colon, and those after the first blank line, are ignored;
// a repeated header keeps its last value.
absl::StatusOr<HttpRequest> ParseHttpRequest(absl::string_view raw);

class HttpServer {
 public:
  // Called with the request path (query string removed).
  using Handler = std::function<HttpResponse(const std::string& path)>;
  // Called with the whole request (headers and query included).
  using RequestHandler = std::function<HttpResponse(const HttpRequest& request)>;

  // Listens on "host:port" (port 0 picks a free one). InvalidArgument naming
  // `field` for a bad address, FailedPrecondition when it cannot bind.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& host_port,
                                                           const std::string& field,
                                                           Handler handler, Logger* log);
  // As above, with a handler that sees the headers and the query string;
  // `limits` bounds the connections served at once and each one's time.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& host_port,
                                                           const std::string& field,
                                                           RequestHandler handler, Logger* log,
                                                           AcceptLoopOptions limits = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  // Connections cut at their deadline so far.
  uint64_t cut_connections() const { return loop_->cut(); }
  void Stop();

 private:
  HttpServer(int port, RequestHandler handler, Logger* log)
      : port_(port), handler_(std::move(handler)), log_(log) {}
  void Serve(int conn);

  const int port_;
  const RequestHandler handler_;
  Logger* const log_;
  std::unique_ptr<AcceptLoop> loop_;  // last: stops before the members above go
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_HTTP_SERVER_H_
