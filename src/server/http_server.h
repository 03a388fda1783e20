// A small HTTP/1.1 server for the daemon's operational endpoints: /metrics
// (Prometheus text format), /healthz and /readyz. One request per
// connection (Connection: close), GET and HEAD only, requests up to 8 KiB.
// Meant for loopback or a cluster-internal scrape port, not the Internet.
//
// Thread-safety: one accept thread serves connections in turn; the handler
// runs on it. Stop may be called from any thread.
#ifndef KVTIER_SRC_SERVER_HTTP_SERVER_H_
#define KVTIER_SRC_SERVER_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "src/server/accept_loop.h"
#include "src/server/log.h"

namespace kvtier::server {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  // Called with the request path (query string removed).
  using Handler = std::function<HttpResponse(const std::string& path)>;

  // Listens on "host:port" (port 0 picks a free one). InvalidArgument naming
  // `field` for a bad address, FailedPrecondition when it cannot bind.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& host_port,
                                                           const std::string& field,
                                                           Handler handler, Logger* log);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  void Stop();

 private:
  HttpServer(int port, Handler handler, Logger* log)
      : port_(port), handler_(std::move(handler)), log_(log) {}
  void Serve(int conn);

  const int port_;
  const Handler handler_;
  Logger* const log_;
  std::unique_ptr<AcceptLoop> loop_;  // last: stops before the members above go
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_HTTP_SERVER_H_
