// Test helpers: start a real kvtierd in a temporary directory, wait until it
// answers, stop it; run helper processes; pick free loopback ports.
// Test-only; production never links this.
#ifndef KVTIER_TESTS_INTEGRATION_DAEMON_HARNESS_H_
#define KVTIER_TESTS_INTEGRATION_DAEMON_HARNESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvtier/client.h"

namespace kvtier::testing {

// A temporary directory removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  // Writes `contents` to File(name) and returns its path.
  std::string Write(const std::string& name, const std::string& contents) const;

 private:
  std::string path_;
};

// A free TCP port on 127.0.0.1 (bound, read, released).
int FreePort();

// Makes, with the openssl CLI, a CA (ca.pem, ca.key), a certificate for
// `server_names` (subjectAltName syntax; default localhost and 127.0.0.1)
// signed by it (server.pem, server.key) and a client certificate
// (client.pem, client.key) in `dir`.
absl::Status MakeCertificates(const TempDir& dir,
                              const std::string& server_names = "DNS:localhost,IP:127.0.0.1");

// A client of the kvtierd listening on `socket` with `token`, without
// shared memory (bytes over gRPC).
absl::StatusOr<std::unique_ptr<Client>> ConnectOverSocket(const std::string& socket,
                                                          const std::string& token);

// A child process; killed (SIGKILL) on destruction if still running.
class Process {
 public:
  // Starts `argv[0]` with `argv`; stdout and stderr go to `log_file`.
  static absl::StatusOr<std::unique_ptr<Process>> Start(const std::vector<std::string>& argv,
                                                        const std::string& log_file);
  ~Process();
  pid_t pid() const { return pid_; }
  // Sends `sig`.
  void Signal(int sig);
  // Waits up to `timeout`; the exit code (128 + signal when killed), or
  // DeadlineExceeded.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  bool Running();
  std::string Log() const;

 private:
  Process(pid_t pid, std::string log) : pid_(pid), log_(std::move(log)) {}
  pid_t pid_;
  std::string log_;
  bool reaped_ = false;
  int status_ = 0;
};

// A kvtierd on a socket in `dir`, with extra flags.
class Daemon {
 public:
  // Starts kvtierd with --socket dir/kvtierd.sock --http 127.0.0.1:<free>
  // --dram 256MiB --nvme dir/nvme --nvme-capacity 64MiB plus `extra` flags
  // (which win over these), and waits until Health answers over the socket.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const TempDir& dir,
                                                       const std::vector<std::string>& extra = {},
                                                       const std::string& log_name = "kvtierd.log");
  ~Daemon();

  const std::string& socket() const { return socket_; }
  int http_port() const { return http_port_; }
  Process& process() { return *process_; }
  // SIGTERM, then the exit code.
  absl::StatusOr<int> Stop();
  // GET http://127.0.0.1:<http_port><path>: status code and body.
  absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& path) const;

 private:
  std::string socket_;
  int http_port_ = 0;
  std::unique_ptr<Process> process_;
};

// Waits until Health answers on `socket` or `timeout` passes.
absl::Status WaitForDaemon(const std::string& socket, Process* process, absl::Duration timeout);

// Binary paths, from the build.
// GET `path` from 127.0.0.1:`http_port`: (status code, body).
absl::StatusOr<std::pair<int, std::string>> HttpGet(int http_port, const std::string& path);

std::string KvtierdPath();
std::string ChainClientPath();
std::string CliPath();

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_INTEGRATION_DAEMON_HARNESS_H_
