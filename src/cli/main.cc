// kvtier: the command-line tool.
//
//   kvtier demo [flags]          run the embedded cache over a multi-turn chat
//   kvtier bench SUITE [--json]  benchmarks beside their references
//   kvtier soak [flags]          kvtierd under a checked workload for a while
//   kvtier version
#include <cstdio>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "src/cli/bench.h"
#include "src/cli/commands.h"
#include "src/cli/demo.h"

namespace {

void PrintUsage() {
  std::printf(
      "usage: kvtier COMMAND [flags]\n\n"
      "commands:\n"
      "  demo     run the embedded cache over a multi-turn chat workload and show\n"
      "           prefix reuse (lookups, hits, prefill tokens saved, bytes per tier)\n"
      "  bench    run a benchmark suite beside its reference (kvtier bench --help)\n"
      "  stats    kvtierd's health and per-tier statistics\n"
      "  lookup   how many leading chunks of a chain kvtierd holds, and where\n"
      "  put      store a file in kvtierd (kvtier put FILE)\n"
      "  get      read a stored file back (kvtier get NAME OUT)\n"
      "  evict    remove chunks from kvtierd (admin token)\n"
      "  soak     run a kvtierd of its own under a checked mixed workload for a while\n"
      "  version  print the version\n\n"
      "`kvtier COMMAND --help` describes a command's flags.\n");
}

}  // namespace

int main(int argc, char** argv) {
  // As kvtierd: no lock-order cycle checks on every Mutex acquisition.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    PrintUsage();
    return args.empty() ? 2 : 0;
  }
  std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "demo") return kvtier::cli::RunDemo(rest);
  if (cmd == "bench") return kvtier::cli::RunBench(rest);
  if (cmd == "stats") return kvtier::cli::RunStats(rest);
  if (cmd == "lookup") return kvtier::cli::RunLookup(rest);
  if (cmd == "put") return kvtier::cli::RunPut(rest);
  if (cmd == "get") return kvtier::cli::RunGet(rest);
  if (cmd == "evict") return kvtier::cli::RunEvict(rest);
  if (cmd == "soak") return kvtier::cli::RunSoak(rest);
  if (cmd == "version" || cmd == "--version") {
    std::printf("kvtier %s\n", KVTIER_VERSION);
    return 0;
  }
  std::fprintf(stderr, "kvtier: unknown command '%s'\n\n", cmd.c_str());
  PrintUsage();
  return 2;
}
