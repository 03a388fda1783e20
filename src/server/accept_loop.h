// AcceptLoop: accepts the connections of one listening socket on its own
// thread and serves each on a thread of its own, until Stop. kvtierd's HTTP
// listener and its shared-memory side channel both run on it.
//
// A client that stalls cannot hold the others up: up to max_connections are
// served at once (further ones wait in the listen backlog until one ends),
// and a connection still being served `deadline` after it was accepted is
// shut down, which ends the handler's blocked read or write.
//
// Thread-safety: Stop may be called from any thread, more than once. The
// Serve function is called concurrently, from several threads.
#ifndef KVTIER_SRC_SERVER_ACCEPT_LOOP_H_
#define KVTIER_SRC_SERVER_ACCEPT_LOOP_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "src/server/log.h"

namespace kvtier::server {

struct AcceptLoopOptions {
  uint32_t max_connections = 16;                // served at once (>= 1)
  absl::Duration deadline = absl::Seconds(10);  // from accept to the end of Serve
};

class AcceptLoop {
 public:
  // Called with each accepted connection, which has 2 s send and receive
  // timeouts and is closed after.
  using Serve = std::function<void(int conn)>;

  // Takes ownership of `listen_fd` (closed on failure too) and starts the
  // thread. `name` labels log lines; `log` must outlive the loop.
  static absl::StatusOr<std::unique_ptr<AcceptLoop>> Start(int listen_fd, Serve serve,
                                                           std::string name, Logger* log,
                                                           AcceptLoopOptions options = {});
  ~AcceptLoop();  // Stops, then closes the sockets.
  AcceptLoop(const AcceptLoop&) = delete;
  AcceptLoop& operator=(const AcceptLoop&) = delete;

  // Stops accepting, ends the reads of the connections being served (a
  // response being written still goes out) and waits for them.
  void Stop();

  // Connections cut at their deadline so far.
  uint64_t cut() const { return cut_.load(std::memory_order_relaxed); }

 private:
  struct Conn {
    int fd = -1;
    absl::Time deadline;
    bool cut = false;   // shut down at its deadline
    bool done = false;  // Serve returned
    std::thread thread;
  };

  AcceptLoop(int listen_fd, int wake_fd, Serve serve, std::string name, Logger* log,
             AcceptLoopOptions options)
      : listen_fd_(listen_fd),
        wake_fd_(wake_fd),
        serve_(std::move(serve)),
        name_(std::move(name)),
        log_(log),
        options_(options) {}
  void Run();
  // Joins the connections whose Serve returned and closes them; returns how
  // many are still being served.
  size_t Reap() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Shuts down the connections past their deadline; returns the time until
  // the next deadline (absl::InfiniteDuration() when none).
  absl::Duration CutOverdue(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Wake();

  const int listen_fd_;
  const int wake_fd_;  // eventfd: Stop, or a connection that ended
  const Serve serve_;
  const std::string name_;
  Logger* const log_;
  const AcceptLoopOptions options_;
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> cut_{0};
  absl::Mutex mu_;
  std::list<Conn> conns_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_ACCEPT_LOOP_H_
