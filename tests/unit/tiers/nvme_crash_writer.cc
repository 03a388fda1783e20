// A writer process for the NVMe crash test: opens the tier in FOLDER and
// saves chunks as fast as it can, removing every tenth acknowledged one, and
// reports on stdout, one line each and only after the tier acknowledged it:
//   "P <i>"  chunk i is durably saved
//   "r <i>"  chunk i is about to be removed (from here on it may be gone)
//   "R <i>"  chunk i is durably removed
// The test kills it with SIGKILL at a random moment and checks the volume.
//
// Usage: nvme_crash_writer FOLDER ROUND COUNT DURABILITY LAYOUT
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>

#include "src/tiers/nvme/nvme_tier.h"
#include "tests/unit/tiers/nvme_crash_options.h"
#include "tests/unit/tiers/nvme_test_util.h"

namespace {

void Report(char kind, uint64_t i) {
  char line[64];
  int n = std::snprintf(line, sizeof(line), "%c %llu\n", kind, static_cast<unsigned long long>(i));
  // One write per line: the test reads whole lines even if this process dies.
  if (::write(STDOUT_FILENO, line, static_cast<size_t>(n)) != n) std::_Exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvtier;
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s FOLDER ROUND COUNT DURABILITY LAYOUT\n", argv[0]);
    return 2;
  }
  const std::string folder = argv[1];
  const uint64_t round = std::strtoull(argv[2], nullptr, 10);
  const uint64_t count = std::strtoull(argv[3], nullptr, 10);
  absl::StatusOr<std::unique_ptr<NvmeTier>> tier =
      NvmeTier::Create(nvme_test::CrashTestOptions(folder, argv[4], argv[5]));
  if (!tier.ok()) {
    std::fprintf(stderr, "open: %s\n", std::string(tier.status().message()).c_str());
    return 1;
  }
  std::mutex mu;
  std::condition_variable cv;
  std::deque<uint64_t> acked;
  uint64_t inflight = 0;
  uint64_t completions = 0;
  for (uint64_t i = 0; i < count; ++i) {
    nvme_test::TestChunk c = nvme_test::CrashTestChunk(round, i);
    for (;;) {
      absl::Status s = (*tier)->PutAsync(c.meta, c.encoded, [&, i](absl::Status st) {
        if (st.ok()) Report('P', i);
        std::lock_guard<std::mutex> lock(mu);
        if (st.ok()) acked.push_back(i);
        --inflight;
        ++completions;
        cv.notify_all();
      });
      if (s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        ++inflight;
        break;
      }
      if (!absl::IsUnavailable(s)) {
        std::fprintf(stderr, "put %llu: %s\n", static_cast<unsigned long long>(i),
                     std::string(s.message()).c_str());
        return 1;
      }
      // No room in flight: wait for the next completion.
      std::unique_lock<std::mutex> lock(mu);
      const uint64_t seen = completions;
      cv.wait(lock, [&] { return inflight == 0 || completions != seen; });
    }
    std::deque<uint64_t> done;
    {
      std::lock_guard<std::mutex> lock(mu);
      done.swap(acked);
    }
    for (uint64_t j : done) {
      if (j % 10 != 3) continue;
      Report('r', j);
      absl::Status s = (*tier)->Remove(nvme_test::kNs, nvme_test::CrashTestKey(round, j));
      if (!s.ok()) {
        std::fprintf(stderr, "remove %llu: %s\n", static_cast<unsigned long long>(j),
                     std::string(s.message()).c_str());
        return 1;
      }
      Report('R', j);
    }
  }
  // Finished before the kill: wait for the rest, then leave without a clean
  // close so the next open scans.
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return inflight == 0; });
  std::fflush(stdout);
  std::_Exit(0);
}
