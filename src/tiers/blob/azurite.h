// Azurite (the Azure Storage emulator's Blob service) as a child process on a
// loopback port, for tests and `kvtier bench blob`. Production never starts
// it.
//
// Thread-safety: one thread drives an AzuriteProcess.
#ifndef KVTIER_SRC_TIERS_BLOB_AZURITE_H_
#define KVTIER_SRC_TIERS_BLOB_AZURITE_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvtier {

// Azurite's documented development account and key.
inline constexpr char kAzuriteAccount[] = "devstoreaccount1";
inline constexpr char kAzuriteKey[] =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

// The azurite-blob executable: $KVTIER_AZURITE_BLOB, else
// <source tree>/node_modules/.bin/azurite-blob (scripts/install-deps.sh puts
// it there), else azurite-blob on PATH. NotFound, saying how to install it,
// when none exists or node is missing.
absl::StatusOr<std::string> FindAzuriteBlob();

// A free TCP port on 127.0.0.1 (bound, read, released).
absl::StatusOr<int> FreeLoopbackPort();

class AzuriteProcess {
 public:
  // Starts azurite-blob on 127.0.0.1:`port` (0: a free one) keeping its data
  // in `location` (created; empty: a fresh temporary folder, removed on
  // destruction), or in its own memory when `in_memory` (lost when it stops;
  // the folder then holds only its log), and waits until the port accepts
  // connections.
  static absl::StatusOr<std::unique_ptr<AzuriteProcess>> Start(int port = 0,
                                                               const std::string& location = "",
                                                               bool in_memory = false);
  // Stop(), and removes the temporary folder it made.
  ~AzuriteProcess();

  // Stops the process (SIGTERM, then SIGKILL after 5 s). Safe to call twice.
  void Stop();
  // Starts it again on the same port and folder (after Stop).
  absl::Status Restart();

  int port() const { return port_; }
  const std::string& location() const { return location_; }
  // "http://127.0.0.1:<port>/devstoreaccount1".
  std::string endpoint() const;
  // The last lines of Azurite's output (for failure messages).
  std::string LogTail() const;

 private:
  AzuriteProcess() = default;
  absl::Status Launch();

  std::string binary_;
  bool in_memory_ = false;
  int port_ = 0;
  std::string location_;
  bool own_location_ = false;
  pid_t pid_ = -1;
};

}  // namespace kvtier

#endif  // KVTIER_SRC_TIERS_BLOB_AZURITE_H_
