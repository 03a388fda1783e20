// The daemon's end of the shared-memory side channel (shm_protocol.h): a
// Unix socket that hands the DRAM arena memfd to authenticated local
// clients over SCM_RIGHTS, and serves the control sessions those clients
// open on it (one thread per session, at most max_sessions at once).
//
// Thread-safety: handshakes run on the accept loop's connection threads
// (several at once, accept_loop.h), plus one thread per session; Stop may be
// called from any thread.
#ifndef KVTIER_SRC_SERVER_SHM_SERVER_H_
#define KVTIER_SRC_SERVER_SHM_SERVER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "src/server/accept_loop.h"
#include "src/server/auth.h"
#include "src/server/log.h"
#include "src/server/shm_protocol.h"

namespace kvtier::server {

// Makes `path` usable for a listening Unix socket: creates its directory
// (mode 0750) when missing and removes a stale socket file left by a daemon
// that is gone. FailedPrecondition when a live daemon answers there or the
// path is not a socket; InvalidArgument naming `field` for a bad path.
absl::Status PrepareSocketPath(const std::string& path, const std::string& field);

// Serves one control call for `who`: `body` is the serialized request of
// `method`; returns the serialized response, or the call's error.
using ControlHandler = std::function<absl::StatusOr<std::string>(
    const Principal& who, shm::ControlMethod method, absl::string_view body)>;

struct ShmServerOptions {
  std::string path;       // socket path
  uint32_t mode = 0660;   // socket file mode
  int arena_fd = -1;      // the memfd to hand out (not owned)
  uint64_t arena_id = 0;  // sent with each grant
  uint64_t arena_bytes = 0;
  ControlHandler control;                            // serves session calls; empty = no sessions
  uint32_t max_sessions = 256;                       // control sessions open at once
  uint32_t max_control_bytes = 16u << 20;            // largest control request body, bytes
  absl::Duration frame_timeout = absl::Seconds(10);  // a started control frame, to its end
};

class ShmServer {
 public:
  // Binds and starts the accept thread. `auth` and `log` must outlive it.
  static absl::StatusOr<std::unique_ptr<ShmServer>> Start(const ShmServerOptions& options,
                                                          const Authenticator* auth, Logger* log);
  ~ShmServer();
  ShmServer(const ShmServer&) = delete;
  ShmServer& operator=(const ShmServer&) = delete;

  // Stops accepting, ends every session (waiting for a call being served)
  // and removes the socket file; idempotent.
  void Stop();
  uint64_t grants() const { return grants_.load(std::memory_order_relaxed); }
  // Handshakes cut at the accept loop's deadline so far.
  uint64_t cut_handshakes() const { return loop_ != nullptr ? loop_->cut() : 0; }
  // Control sessions open now.
  size_t sessions() const;

 private:
  ShmServer(ShmServerOptions options, const Authenticator* auth, Logger* log)
      : options_(std::move(options)), auth_(auth), log_(log) {}
  void Serve(int conn);
  // Serves the control calls of one session until it closes.
  void RunSession(int fd, const Principal& who);
  // Joins the threads of sessions that ended.
  void ReapSessions() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sessions_mu_);

  struct Session {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  const ShmServerOptions options_;
  const Authenticator* const auth_;
  Logger* const log_;
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> grants_{0};
  mutable absl::Mutex sessions_mu_;
  std::list<Session> sessions_ ABSL_GUARDED_BY(sessions_mu_);
  std::unique_ptr<AcceptLoop> loop_;  // last: stops before the members above go
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_SHM_SERVER_H_
