#include "src/cli/bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace kvtier::cli {

const std::vector<BenchSuite>& BenchSuites() {
  static const std::vector<BenchSuite> suites = {
      {"dram", "DRAM tier Save/Load beside memcpy; Lookup latency",
       "kvtier bench dram [--json] [--sizes 256KiB,1MiB,4MiB] [--threads 1,2]\n"
       "                  [--capacity 1GiB] [--seconds 0.5] [--reps 5] [--chain 128]\n\n"
       "Saves and loads chunks of each size through the DRAM tier with 1 and 2\n"
       "threads, beside plain memcpy of the same sizes on the same threads, and\n"
       "prints the median throughput of --reps repetitions and the ratio to\n"
       "memcpy. Then times Lookup of a --chain-chunk chain (median, p99).\n"
       "Targets: Save and Load >= 0.8x memcpy; Lookup <= 10 us.",
       RunDramBench},
  };
  return suites;
}

namespace {

void PrintBenchHelp() {
  std::printf("usage: kvtier bench SUITE [--json] [suite flags]\n\nsuites:\n");
  for (const BenchSuite& s : BenchSuites()) std::printf("  %-8s %s\n", s.name, s.summary);
  std::printf("\n`kvtier bench SUITE --help` describes a suite's flags.\n");
}

}  // namespace

int RunBench(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    PrintBenchHelp();
    return args.empty() ? 2 : 0;
  }
  for (const BenchSuite& s : BenchSuites()) {
    if (args[0] != s.name) continue;
    Flags flags(std::vector<std::string>(args.begin() + 1, args.end()));
    if (flags.Help()) {
      std::printf("%s\n", s.help);
      return 0;
    }
    return s.run(flags);
  }
  std::fprintf(stderr, "kvtier bench: unknown suite '%s'\n\n", args[0].c_str());
  PrintBenchHelp();
  return 2;
}

double Median(std::vector<double> samples) { return Percentile(std::move(samples), 50); }

double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  double rank = std::ceil(p / 100.0 * static_cast<double>(samples.size()));
  size_t idx = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return samples[std::min(idx, samples.size() - 1)];
}

}  // namespace kvtier::cli
