// kvtier-index: a replica of the cluster index. `kvtier-index --help` lists
// the flags; docs/cluster-index.md describes events, configuration and API.
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "src/index/index_config.h"
#include "src/index/index_server.h"
#include "src/server/log.h"

namespace {

constexpr const char* kUsage =
    "usage: kvtier-index --nats URL --grpc HOST:PORT --http HOST:PORT [--config FILE]\n"
    "                    [--max-entries N] [--zmq ENDPOINT ...] [--node-timeout SECONDS]\n\n"
    "A replica of kvtier's cluster index: rebuilds its map of chunk key -> nodes from\n"
    "the NATS JetStream event stream, follows it live with node heartbeats and vLLM\n"
    "KV events (ZMQ), and answers kvtier.v1.Index (Lookup, Nodes, Stats) over gRPC.\n"
    "SIGTERM or SIGINT stops it.\n\nflags:\n";

}  // namespace

int main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  using kvtier::server::Logger;
  using kvtier::server::LogLevel;
  Logger boot_log(LogLevel::kInfo);
  absl::StatusOr<kvtier::index::IndexCommandLine> cl =
      kvtier::index::ParseIndexCommandLine(std::vector<std::string>(argv + 1, argv + argc));
  if (!cl.ok()) {
    boot_log.Error("bad command line", {{"error", std::string(cl.status().message())}});
    std::fprintf(stderr, "%s%s", kUsage, kvtier::index::IndexFlagsHelp().c_str());
    return 2;
  }
  if (cl->help) {
    std::printf("%s%s", kUsage, kvtier::index::IndexFlagsHelp().c_str());
    return 0;
  }
  if (cl->version) {
    std::printf("kvtier-index %s\n", KVTIER_VERSION);
    return 0;
  }
  if (cl->check_config) {
    std::printf("%s", kvtier::index::EffectiveIndexConfig(*cl).c_str());
    return 0;
  }
  Logger log(*kvtier::server::ParseLogLevel(cl->log_level));
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // threads started below inherit the mask
  absl::StatusOr<std::unique_ptr<kvtier::index::IndexServer>> server =
      kvtier::index::IndexServer::Start(cl->options, KVTIER_VERSION, &log);
  if (!server.ok()) {
    log.Error("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  int sig = 0;
  sigwait(&set, &sig);
  log.Info("stopping", {{"signal", static_cast<int64_t>(sig)}});
  (*server)->Shutdown();
  return 0;
}
