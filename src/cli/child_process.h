// Processes that benchmark suites start beside kvtier: kvtierd, redis-server,
// ucx_perftest. Each runs with its stdout and stderr in a log file and is
// stopped when its handle goes away, so a suite that fails half way leaves
// nothing running; it also gets SIGTERM when the thread that started it
// exits (PR_SET_PDEATHSIG), so a suite that is killed leaves nothing either.
// Start children from a thread that outlives them (the main thread). Each
// child is in a process group of its own, so a Ctrl-C at the terminal
// reaches only the suite.
#ifndef KVTIER_SRC_CLI_CHILD_PROCESS_H_
#define KVTIER_SRC_CLI_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

namespace kvtier::cli {

// One child process. Not thread-safe: one thread owns the handle.
class ChildProcess {
 public:
  // Starts argv[0] (looked up in PATH when it has no '/') with `env` entries
  // ("NAME=value") added to this process's environment and stdout/stderr
  // truncated into `log`. Null when fork fails; a program that cannot be
  // executed exits with status 127.
  static std::unique_ptr<ChildProcess> Start(const std::vector<std::string>& argv,
                                             const std::vector<std::string>& env,
                                             const std::string& log);

  // Sends SIGTERM, waits up to 5 s, then SIGKILL; nothing when already reaped.
  ~ChildProcess();

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // True while the process has not exited (reaps it when it has).
  bool Running();
  // Waits up to `seconds` for the process to exit; its exit status, or -1
  // when it is still running or was killed by a signal.
  int Wait(double seconds);

  pid_t pid() const { return pid_; }

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}

  pid_t pid_;
  bool reaped_ = false;
};

// A TCP port on 127.0.0.1 that was free a moment ago (0 when none could be
// bound). Another process may take it before the caller binds it.
int FreeLoopbackPort();

// The program `name` next to this binary (build tree: src/cli/ and
// src/server/; install: the same bin/ folder), else `fallback` (for PATH).
std::string SiblingBinary(const std::string& name, const std::string& fallback);

}  // namespace kvtier::cli

#endif  // KVTIER_SRC_CLI_CHILD_PROCESS_H_
