// Test helper: a real nats-server (JetStream on) on a free loopback port, in
// a temporary directory, optionally with a token, a user and password, TLS
// and client certificate verification. Test-only; production never links
// this.
#ifndef KVTIER_TESTS_INTEGRATION_NATS_HARNESS_H_
#define KVTIER_TESTS_INTEGRATION_NATS_HARNESS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tests/integration/daemon_harness.h"

namespace kvtier::testing {

struct NatsServerOptions {
  std::string name = "nats";  // log (<name>.log) and JetStream folder (<name>-js) in the dir
  int port = 0;               // on 127.0.0.1; 0 = a free one
  bool jetstream = true;      // -js
  // Authentication: a token, or a user and password (nats-server refuses both).
  std::string token;     // --auth
  std::string user;      // --user
  std::string password;  // --pass
  // TLS: on when cert_file and key_file are set.
  std::string cert_file;  // --tlscert (PEM)
  std::string key_file;   // --tlskey (PEM)
  // Client certificates: verified against ca_file when verify_clients.
  bool verify_clients = false;  // --tlsverify
  std::string ca_file;          // --tlscacert (PEM)
};

// The nats-server binary (Debian installs it in /usr/sbin).
std::string NatsServerPath();

// A nats-server child process; killed on destruction.
class NatsServer {
 public:
  // Starts nats-server on 127.0.0.1:<options.port or a free one> with
  // `options`, and waits until it greets a TCP client (a free port taken
  // meanwhile is picked again).
  static absl::StatusOr<std::unique_ptr<NatsServer>> Start(const TempDir& dir,
                                                           const NatsServerOptions& options = {});
  ~NatsServer() = default;
  NatsServer(const NatsServer&) = delete;
  NatsServer& operator=(const NatsServer&) = delete;

  // nats://127.0.0.1:<port> (also for a TLS server: the client's ca_file
  // turns TLS on).
  std::string url() const;
  int port() const { return port_; }
  Process& process() { return *process_; }

 private:
  NatsServer() = default;
  int port_ = 0;
  std::unique_ptr<Process> process_;
};

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_INTEGRATION_NATS_HARNESS_H_
