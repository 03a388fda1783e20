// kvtierd: the kvtier node daemon. `kvtierd --help` lists the flags;
// docs/daemon.md describes the configuration file, the environment
// variables, the API and the security model.
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "src/server/config.h"
#include "src/server/daemon.h"
#include "src/server/log.h"

namespace {

constexpr const char* kUsage =
    "usage: kvtierd [--config FILE] [flags]\n\n"
    "The kvtier node daemon: a DRAM cache of attention KV chunks served over gRPC\n"
    "(Unix socket always, TCP when configured), with shared memory for local\n"
    "engines and /metrics, /healthz, /readyz over HTTP. With no configuration it\n"
    "runs the embedded default: DRAM of a quarter of RAM (at most 16 GiB), Unix\n"
    "socket only. Settings apply in this order: defaults, the YAML file, KVTIER_*\n"
    "environment variables, flags. SIGTERM or SIGINT drains and exits 0.\n\n"
    "flags:\n";

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil checks every Mutex acquisition for lock-order cycles (a
  // global graph behind a global lock), which gRPC pays on every call too.
  // Tests keep the checks; the daemon runs without them.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  using kvtier::server::Logger;
  using kvtier::server::LogLevel;
  Logger boot_log(LogLevel::kInfo);
  absl::StatusOr<kvtier::server::CommandLine> cl =
      kvtier::server::ParseCommandLine(std::vector<std::string>(argv + 1, argv + argc));
  if (!cl.ok()) {
    boot_log.Error("bad command line", {{"error", std::string(cl.status().message())}});
    std::fprintf(stderr, "%s%s", kUsage, kvtier::server::FlagsHelp().c_str());
    return 2;
  }
  if (cl->help) {
    std::printf("%s%s", kUsage, kvtier::server::FlagsHelp().c_str());
    return 0;
  }
  if (cl->version) {
    std::printf("kvtierd %s\n", KVTIER_VERSION);
    return 0;
  }
  absl::StatusOr<kvtier::server::DaemonConfig> config =
      kvtier::server::LoadConfig(*cl, kvtier::server::ProcessEnv());
  if (!config.ok()) {
    boot_log.Error("invalid configuration", {{"error", std::string(config.status().message())}});
    return 2;
  }
  if (cl->check_config) {
    std::printf("%s", config->ToRedactedYaml().c_str());
    return 0;
  }
  Logger log(*kvtier::server::ParseLogLevel(config->log_level));

  // Signals are taken synchronously by this thread; every thread started
  // from here on inherits the mask.
  // A shell may start us with SIGINT ignored (a background job); take it.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<kvtier::server::Daemon>> daemon =
      kvtier::server::Daemon::Start(*config, KVTIER_VERSION, &log);
  if (!daemon.ok()) {
    log.Error("cannot start", {{"error", std::string(daemon.status().message())}});
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  log.Info("signal received", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
  (*daemon)->Shutdown();
  daemon->reset();
  return 0;
}
