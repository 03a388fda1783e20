// The daemon's end of the shared-memory side channel (shm_protocol.h): a
// Unix socket that hands the DRAM arena memfd to authenticated local
// clients over SCM_RIGHTS.
//
// Thread-safety: one accept thread; Stop may be called from any thread.
#ifndef KVTIER_SRC_SERVER_SHM_SERVER_H_
#define KVTIER_SRC_SERVER_SHM_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "src/server/accept_loop.h"
#include "src/server/auth.h"
#include "src/server/log.h"

namespace kvtier::server {

// Makes `path` usable for a listening Unix socket: creates its directory
// (mode 0750) when missing and removes a stale socket file left by a daemon
// that is gone. FailedPrecondition when a live daemon answers there or the
// path is not a socket; InvalidArgument naming `field` for a bad path.
absl::Status PrepareSocketPath(const std::string& path, const std::string& field);

struct ShmServerOptions {
  std::string path;       // socket path
  uint32_t mode = 0660;   // socket file mode
  int arena_fd = -1;      // the memfd to hand out (not owned)
  uint64_t arena_id = 0;  // sent with each grant
  uint64_t arena_bytes = 0;
};

class ShmServer {
 public:
  // Binds and starts the accept thread. `auth` and `log` must outlive it.
  static absl::StatusOr<std::unique_ptr<ShmServer>> Start(const ShmServerOptions& options,
                                                          const Authenticator* auth, Logger* log);
  ~ShmServer();
  ShmServer(const ShmServer&) = delete;
  ShmServer& operator=(const ShmServer&) = delete;

  // Stops accepting and removes the socket file; idempotent.
  void Stop();
  uint64_t grants() const { return grants_.load(std::memory_order_relaxed); }

 private:
  ShmServer(ShmServerOptions options, const Authenticator* auth, Logger* log)
      : options_(std::move(options)), auth_(auth), log_(log) {}
  void Serve(int conn);

  const ShmServerOptions options_;
  const Authenticator* const auth_;
  Logger* const log_;
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> grants_{0};
  std::unique_ptr<AcceptLoop> loop_;  // last: stops before the members above go
};

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_SHM_SERVER_H_
