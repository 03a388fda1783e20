// kvtierd: the kvtier node daemon. `kvtierd --help` lists the flags;
// docs/daemon.md describes the configuration file, the environment
// variables, the API and the security model.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "src/server/config.h"
#include "src/server/daemon.h"
#include "src/server/log.h"

namespace {

constexpr const char* kUsage =
    "usage: kvtierd [--config FILE] [flags]\n\n"
    "The kvtier node daemon: a cache of attention KV chunks in DRAM and on local\n"
    "NVMe, served over gRPC (Unix socket always, TCP when configured), with shared\n"
    "memory for local engines and /metrics, /healthz, /readyz over HTTP. With no\n"
    "configuration it runs the embedded default: DRAM of a quarter of RAM (at most\n"
    "16 GiB), NVMe in <data_dir>/nvme (or /var/tmp/kvtier-<uid>/nvme) of a quarter\n"
    "of that file system's free space (at most 16 GiB), Unix socket only. Settings\n"
    "apply in this order: defaults, the YAML file, KVTIER_* environment variables,\n"
    "flags. SIGTERM or SIGINT drains, writes the NVMe index snapshot and exits 0.\n\n"
    "flags:\n";

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil checks every Mutex acquisition for lock-order cycles (a
  // global graph behind a global lock), which gRPC pays on every call too.
  // Tests keep the checks; the daemon runs without them.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // gRPC reads every message into freshly malloc'ed slices and frees them
  // once the payload is copied into the arena. With glibc's defaults the
  // freed top of each heap goes back to the kernel (trim threshold 128 KiB)
  // and the next read faults it in again, page by page: about one fault per
  // 4 KiB received. The daemon keeps up to 256 MiB of freed heap instead,
  // grows heaps 16 MiB at a time, and leaves buffers below 32 MiB in the
  // heaps rather than in mappings of their own. GLIBC_TUNABLES set before
  // start are overridden.
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
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
  if (!config->nvme_note.empty()) log.Warn("nvme", {{"note", config->nvme_note}});
  if (config->nvme_create_folder) {
    // The default NVMe folder is ours to create; a configured one must exist.
    std::error_code ec;
    std::filesystem::create_directories(config->dram.nvme.path, ec);
    if (ec) {
      log.Error("cannot start",
                {{"error", absl::StrCat("nvme.path: cannot create '", config->dram.nvme.path,
                                        "': ", ec.message())}});
      return 1;
    }
  }

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
  if (config->dram.nvme.enabled()) {
    log.Info("nvme tier", {{"path", config->dram.nvme.path},
                           {"capacity_bytes", config->dram.nvme.capacity_bytes},
                           {"io_mode", config->dram.nvme.io_mode},
                           {"admission", config->dram.nvme.admission},
                           {"durability", config->dram.nvme.durability}});
  }
  int sig = 0;
  sigwait(&signals, &sig);
  log.Info("signal received", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
  (*daemon)->Shutdown();
  // Destroying the daemon closes the cache: demotions in flight finish and
  // the NVMe tier writes its index snapshot.
  daemon->reset();
  log.Info("cache closed", {{"nvme", config->dram.nvme.enabled()}});
  return 0;
}
