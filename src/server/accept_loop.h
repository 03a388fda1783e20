// AcceptLoop: serves the connections of one listening socket, one at a time,
// on its own thread, until Stop. kvtierd's HTTP listener and its
// shared-memory side channel both run on it.
//
// Thread-safety: Stop may be called from any thread, more than once.
#ifndef KVTIER_SRC_SERVER_ACCEPT_LOOP_H_
#define KVTIER_SRC_SERVER_ACCEPT_LOOP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "src/server/log.h"

namespace kvtier::server {

class AcceptLoop {
 public:
  // Called with each accepted connection, which has 2 s send and receive
  // timeouts (a stalled client cannot hold the loop) and is closed after.
  using Serve = std::function<void(int conn)>;

  // Takes ownership of `listen_fd` (closed on failure too) and starts the
  // thread. `name` labels log lines; `log` must outlive the loop.
  static absl::StatusOr<std::unique_ptr<AcceptLoop>> Start(int listen_fd, Serve serve,
                                                           std::string name, Logger* log);
  ~AcceptLoop();  // Stops, then closes the sockets.
  AcceptLoop(const AcceptLoop&) = delete;
  AcceptLoop& operator=(const AcceptLoop&) = delete;

  // Stops accepting and waits for the connection being served, if any.
  void Stop();

 private:
  AcceptLoop(int listen_fd, int wake_fd, Serve serve, std::string name, Logger* log)
      : listen_fd_(listen_fd),
        wake_fd_(wake_fd),
        serve_(std::move(serve)),
        name_(std::move(name)),
        log_(log) {}
  void Run();

  const int listen_fd_;
  const int wake_fd_;  // eventfd that wakes the poll for Stop
  const Serve serve_;
  const std::string name_;
  Logger* const log_;
  std::atomic<bool> stopped_{false};
  std::thread thread_;
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_ACCEPT_LOOP_H_
