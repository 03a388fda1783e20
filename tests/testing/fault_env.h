// FaultInjectionEnv: an Env that forwards to a real one (the POSIX Env by
// default) and injects the faults a real disk produces only rarely:
//
//   * open failures (EACCES, EROFS, EINVAL for O_DIRECT, ...) and ENOSPC when
//     a file is preallocated;
//   * asynchronous reads, writes or flushes that fail with an errno, and torn
//     writes that reach the disk only in part before failing;
//   * held requests: requests of one kind are parked until released, so a
//     test can keep an operation in flight as long as it needs;
//   * power loss: with tracking on, the env remembers the previous bytes of
//     every write that no completed fdatasync covers yet; Crash() makes all
//     later I/O fail, and DropUnsyncedWrites() then puts back the old bytes of
//     a random subset of the unsynced 512-byte sectors, newest first, the way
//     a power cut may lose any of them.
//
// The real io_uring still does all I/O that is not faulted: a failed request
// is replaced by a no-op whose result is rewritten to the injected error.
//
// Thread-safety: all methods are safe to call from any thread.
#ifndef KVTIER_TESTS_TESTING_FAULT_ENV_H_
#define KVTIER_TESTS_TESTING_FAULT_ENV_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/common/env.h"

namespace kvtier::testing {

struct IoFault {
  IoOpcode opcode = IoOpcode::kWrite;  // which requests it hits
  std::string path_substr;             // only files whose path contains this ("" = any)
  uint32_t len = 0;                    // only requests of this length (0 = any)
  int error = 5;                       // errno reported (EIO)
  uint32_t torn_bytes = 0;             // writes: when > 0, this prefix reaches the
                                       // disk before the error is reported
  uint64_t skip = 0;                   // let this many matching requests pass first
  int64_t count = -1;                  // how many times it fires (-1: forever)
};

class FaultInjectionEnv : public EnvWrapper {
 public:
  explicit FaultInjectionEnv(Env* target = Env::Default());
  ~FaultInjectionEnv() override;

  // OpenFile of a path containing `path_substr` fails with `error` (when
  // `direct_only`, only opens asking for O_DIRECT).
  void FailOpen(std::string path_substr, int error, bool direct_only = false);
  // File::Allocate fails with `error`.
  void FailAllocate(int error);
  void AddIoFault(IoFault fault);
  // Removes every open, allocate and I/O fault.
  void ClearFaults();
  // Times an IoFault fired.
  uint64_t faults_fired() const;

  // Parks every later request of `opcode` until ReleaseHeld().
  void Hold(IoOpcode opcode);
  // Submits the parked requests and stops holding.
  void ReleaseHeld();
  size_t held() const;

  // Power-loss simulation (see above).
  void TrackUnsynced(bool on);
  void Crash();
  // Number of writes whose bytes no completed flush covers.
  size_t unsynced_writes() const;
  // Reverts a random subset (each sector with probability 1 - keep) of the
  // unsynced sectors, newest write first, through the target Env, then
  // forgets them and clears the crash. REQUIRES: the files are closed.
  absl::Status DropUnsyncedWrites(uint64_t seed, double keep);

  absl::StatusOr<std::unique_ptr<File>> OpenFile(const std::string& path,
                                                 const FileOpenOptions& options) override;
  absl::StatusOr<std::unique_ptr<AsyncIo>> NewAsyncIo(const AsyncIoOptions& options) override;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_TESTING_FAULT_ENV_H_
