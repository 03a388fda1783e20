// kvtier: the command-line tool.
//
//   kvtier demo [flags]          run the embedded cache over a multi-turn chat
//   kvtier bench SUITE [--json]  benchmarks beside their references
//   kvtier version
#include <cstdio>
#include <string>
#include <vector>

#include "src/cli/bench.h"
#include "src/cli/demo.h"

namespace {

void PrintUsage() {
  std::printf(
      "usage: kvtier COMMAND [flags]\n\n"
      "commands:\n"
      "  demo     run the embedded cache over a multi-turn chat workload and show\n"
      "           prefix reuse (lookups, hits, prefill tokens saved, bytes per tier)\n"
      "  bench    run a benchmark suite beside its reference (kvtier bench --help)\n"
      "  version  print the version\n\n"
      "`kvtier COMMAND --help` describes a command's flags.\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    PrintUsage();
    return args.empty() ? 2 : 0;
  }
  std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "demo") return kvtier::cli::RunDemo(rest);
  if (cmd == "bench") return kvtier::cli::RunBench(rest);
  if (cmd == "version" || cmd == "--version") {
    std::printf("kvtier %s\n", KVTIER_VERSION);
    return 0;
  }
  std::fprintf(stderr, "kvtier: unknown command '%s'\n\n", cmd.c_str());
  PrintUsage();
  return 2;
}
