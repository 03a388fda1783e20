// Benchmark suites run by `kvtier bench SUITE [--json] [suite flags]`.
//
// Every suite measures kvtier beside its reference (memcpy, fio, redis-server,
// ucx_perftest, ...) in the same run and reports the ratio. Without --json it
// prints tables; with --json it prints exactly one JSON object on stdout:
//   {"suite": NAME, "results": [...], "ratios": {...}, "targets": {...}, ...}
// Each suite lives in src/cli/bench_<name>.cc and is listed in bench.cc.
#ifndef KVTIER_SRC_CLI_BENCH_H_
#define KVTIER_SRC_CLI_BENCH_H_

#include <string>
#include <vector>

#include "src/cli/flags.h"

namespace kvtier::cli {

struct BenchSuite {
  const char* name;
  const char* summary;  // one line for `kvtier bench --help`
  const char* help;     // full text for `kvtier bench NAME --help`
  // Runs the suite; returns the process exit code. `flags` holds the flags
  // after the suite name (--json among them).
  int (*run)(Flags& flags);
};

// All suites, in the order `kvtier bench --help` lists them.
const std::vector<BenchSuite>& BenchSuites();

// Entry point of `kvtier bench`.
int RunBench(const std::vector<std::string>& args);

// Median of `samples` (copied and sorted); 0 for none.
double Median(std::vector<double> samples);
// The p-th percentile (0..100) by nearest rank; 0 for none.
double Percentile(std::vector<double> samples, double p);

// Suites.
int RunDramBench(Flags& flags);
int RunDaemonBench(Flags& flags);
int RunNvmeBench(Flags& flags);
int RunGpuBench(Flags& flags);
int RunNvmeBench(Flags& flags);
int RunReplayBench(Flags& flags);

}  // namespace kvtier::cli

#endif  // KVTIER_SRC_CLI_BENCH_H_
