// Benchmark suites run by `kvtier bench SUITE [--json] [suite flags]`.
//
// Every suite measures kvtier beside its reference (memcpy, fio, redis-server,
// ucx_perftest, ...) in the same run and reports the ratio. Without --json it
// prints tables; with --json it prints exactly one JSON object on stdout:
//   {"suite": NAME, "results": [...], "ratios": {...}, "targets": {...}, ...}
// Each suite lives in src/cli/bench_<name>.cc and is listed in bench.cc.
#ifndef KVTIER_SRC_CLI_BENCH_H_
#define KVTIER_SRC_CLI_BENCH_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
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

// Runs `fn(thread, iteration)` on `threads` threads for about `seconds`;
// returns bytes per second (each call moves `bytes`). `fn` returns false on
// failure, which stops the run and makes the result 0.
template <typename Fn>
double MeasureThroughput(int threads, double seconds, uint64_t bytes, Fn fn) {
  std::atomic<bool> stop{false}, failed{false};
  std::atomic<int> ready{0};
  std::vector<uint64_t> counts(static_cast<size_t>(threads), 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < threads) {
      }
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        if (!fn(t, n++)) {
          failed.store(true);
          stop.store(true);
        }
      }
      counts[static_cast<size_t>(t)] = n;
    });
  }
  while (ready.load() < threads) {
  }
  auto t0 = std::chrono::steady_clock::now();
  while (!stop.load() &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop.store(true);
  for (auto& th : pool) th.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (failed.load()) return 0;
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  return static_cast<double>(total * bytes) / elapsed;
}

// Suites.
int RunDramBench(Flags& flags);
int RunDaemonBench(Flags& flags);
int RunNvmeBench(Flags& flags);
int RunGpuBench(Flags& flags);
int RunNvmeBench(Flags& flags);
int RunReplayBench(Flags& flags);
int RunIndexBench(Flags& flags);
int RunBlobBench(Flags& flags);
int RunUcxBench(Flags& flags);

}  // namespace kvtier::cli

#endif  // KVTIER_SRC_CLI_BENCH_H_
