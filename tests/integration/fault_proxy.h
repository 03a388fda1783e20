// A TCP proxy on loopback that sits in front of a real HTTP server (Azurite)
// and injects the faults that server cannot produce: 503 answers, connection
// resets, slow answers, and an endpoint that never answers. Test-only.
//
// Faults apply per accepted connection: each new connection takes the next
// fault from the script (Push), or the default mode when the script is empty.
// A 503 or a reset closes its connection, so a client's retry opens a new
// one and meets the next fault. Connections that pass are piped as they are.
//
// Thread-safety: every method may be called from any thread.
#ifndef KVTIER_TESTS_INTEGRATION_FAULT_PROXY_H_
#define KVTIER_TESTS_INTEGRATION_FAULT_PROXY_H_

#include <atomic>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvtier::testing {

struct Fault {
  enum class Kind {
    kPass,       // pipe to the server
    kStatus503,  // read the request head, answer 503 Service Unavailable, close
    kStatus500,  // the same with 500 Internal Server Error
    kReset,      // read the request head, then reset the connection (RST)
    kDelay,      // wait `delay` before connecting to the server, then pipe
    kHang,       // accept and never answer (until the proxy stops)
  };
  Kind kind = Kind::kPass;
  absl::Duration delay;
};

class FaultProxy {
 public:
  // Listens on a free 127.0.0.1 port and forwards to 127.0.0.1:`upstream_port`.
  static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(int upstream_port);
  ~FaultProxy();

  int port() const { return port_; }
  // Appends faults for the next connections.
  void Push(Fault fault, int times = 1);
  // The fault of connections once the script is empty.
  void SetDefault(Fault fault);
  // Closes every open connection, so that a client's pooled connections die
  // and its next requests open new ones (and meet the script).
  void DropConnections();
  // Connections accepted so far.
  int connections() const { return connections_.load(); }

 private:
  FaultProxy() = default;
  void AcceptLoop();
  void Serve(int client, Fault fault);

  int listen_fd_ = -1;
  int port_ = 0;
  int upstream_port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::deque<Fault> script_ ABSL_GUARDED_BY(mu_);
  Fault default_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> handlers_ ABSL_GUARDED_BY(mu_);
  std::vector<int> open_fds_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_INTEGRATION_FAULT_PROXY_H_
