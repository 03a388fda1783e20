// `kvtier bench dram`: the DRAM tier beside memcpy.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvtier/cache.h"
#include "kvtier/namespace.h"
#include "src/cli/bench.h"
#include "src/cli/report.h"

namespace kvtier::cli {
namespace {

using Clock = std::chrono::steady_clock;

absl::StatusOr<Namespace> BenchNamespace(uint64_t payload_bytes) {
  // One token = 1 KiB (4 layers x K,V x 1 head x 64 x fp16 = 1 KiB), so a
  // payload of N KiB is a chunk of N tokens.
  NamespaceOptions o;
  o.model_id = "kvtier-bench/dram";
  o.layout = KvLayout{4, 1, 64, 2, 16, DType::kFloat16};
  o.tokens_per_chunk = static_cast<uint32_t>(payload_bytes / o.layout.BytesPerToken());
  return Namespace::Create(o);
}

BlockKey KeyOf(uint64_t thread, uint64_t i) {
  return BlockKey{0x6b76746965720000ull | thread, i + 1};
}

struct Row {
  uint64_t size;
  int threads;
  double memcpy_save, save, memcpy_load, load;
  // Medians of the per-repetition ratios: each repetition measures kvtier
  // right after its reference, so a noisy neighbour hits both alike.
  double save_ratio, load_ratio;
};

std::vector<double> Ratios(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) r.push_back(a[i] / b[i]);
  return r;
}

}  // namespace

int RunDramBench(Flags& flags) {
  const bool json = flags.Bool("json");
  const std::vector<uint64_t> sizes = flags.BytesList("sizes", {256 << 10, 1 << 20, 4 << 20});
  const std::vector<int64_t> thread_counts = flags.IntList("threads", {1, 2});
  const uint64_t capacity = flags.Bytes("capacity", 1ull << 30);
  const double seconds = flags.Double("seconds", 0.5);
  const int64_t reps = flags.Int("reps", 5);
  const int64_t chain_len = flags.Int("chain", 128);
  if (absl::Status s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier bench dram: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  // Working set: half the arena, so saves find room without evicting
  // pinned-looking state and loads find everything resident; the memcpy
  // reference moves bytes over a working set of the same size, so neither
  // side runs out of cache.
  const uint64_t working_set = capacity / 2;
  std::vector<Row> rows;

  for (uint64_t size : sizes) {
    absl::StatusOr<Namespace> ns = BenchNamespace(size);
    if (!ns.ok() || ns->FullChunkPayloadBytes() != size) {
      std::fprintf(stderr, "kvtier bench dram: size %llu must be a multiple of 16 KiB\n",
                   static_cast<unsigned long long>(size));
      return 2;
    }
    for (int64_t threads64 : thread_counts) {
      const int threads = static_cast<int>(threads64);
      const uint64_t per_thread = std::max<uint64_t>(1, working_set / size / threads);
      CacheOptions co;
      co.dram_capacity_bytes = capacity;
      co.prefault = true;
      absl::StatusOr<std::unique_ptr<Cache>> cache = Cache::Create(co);
      if (!cache.ok()) {
        std::fprintf(stderr, "kvtier bench dram: %s\n", cache.status().ToString().c_str());
        return 1;
      }
      std::vector<std::vector<std::byte>> src(threads, std::vector<std::byte>(size));
      for (auto& s : src) {
        for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<std::byte>(i * 131 + 7);
      }
      std::vector<std::byte> pool(per_thread * threads * size);
      std::memset(pool.data(), 1, pool.size());
      // Fill the cache once so loads find every key.
      for (int t = 0; t < threads; ++t) {
        for (uint64_t i = 0; i < per_thread; ++i) {
          ChunkRef c{KeyOf(t, i), BlockKey{}, 0, ns->tokens_per_chunk()};
          if (absl::Status s = (*cache)->Save(*ns, c, src[t]); !s.ok()) {
            std::fprintf(stderr, "kvtier bench dram: fill: %s\n", s.ToString().c_str());
            return 1;
          }
        }
      }
      std::vector<std::atomic<uint64_t>> next_key(threads);
      for (auto& k : next_key) k = per_thread;
      std::vector<double> ms, s, ml, l;
      for (int64_t r = 0; r < reps; ++r) {
        ms.push_back(MeasureThroughput(threads, seconds, size, [&](int t, uint64_t i) {
          std::byte* dst = pool.data() + ((t * per_thread + i % per_thread) * size);
          std::memcpy(dst, src[t].data(), size);
          return true;
        }));
        // Save: new keys each time; the oldest chunk is evicted once full.
        s.push_back(MeasureThroughput(threads, seconds, size, [&](int t, uint64_t) {
          ChunkRef c{KeyOf(t, next_key[t]++), BlockKey{}, 0, ns->tokens_per_chunk()};
          (void)(*cache)->Save(*ns, c, src[t]);  // a refused save still cost its time
          return true;
        }));
        ml.push_back(MeasureThroughput(threads, seconds, size, [&](int t, uint64_t i) {
          const std::byte* from = pool.data() + ((t * per_thread + i % per_thread) * size);
          std::memcpy(src[t].data(), from, size);
          return true;
        }));
        l.push_back(MeasureThroughput(threads, seconds, size, [&](int t, uint64_t i) {
          uint64_t newest = next_key[t].load(std::memory_order_relaxed);
          uint64_t k = newest - 1 - (i % per_thread);
          return (*cache)->Load(*ns, KeyOf(t, k), absl::MakeSpan(src[t])).ok();
        }));
      }
      rows.push_back(Row{size, threads, Median(ms), Median(s), Median(ml), Median(l),
                         Median(Ratios(s, ms)), Median(Ratios(l, ml))});
    }
  }

  // Lookup of a fully cached chain of small chunks.
  absl::StatusOr<Namespace> lns = BenchNamespace(16 << 10);
  CacheOptions lco;
  lco.dram_capacity_bytes = 256ull << 20;
  absl::StatusOr<std::unique_ptr<Cache>> lcache = Cache::Create(lco);
  if (!lns.ok() || !lcache.ok()) {
    std::fprintf(stderr, "kvtier bench dram: lookup setup failed\n");
    return 1;
  }
  std::vector<TokenId> tokens(static_cast<size_t>(chain_len) * lns->tokens_per_chunk());
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<TokenId>(i * 7919 % 128000);
  std::vector<ChunkRef> chunks = *lns->Chunks(tokens);
  std::vector<std::byte> payload(lns->FullChunkPayloadBytes(), std::byte{3});
  for (const ChunkRef& c : chunks) {
    if (absl::Status st = (*lcache)->Save(*lns, c, payload); !st.ok()) {
      std::fprintf(stderr, "kvtier bench dram: lookup setup: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  std::vector<BlockKey> chain = Namespace::Keys(chunks);
  std::vector<double> lookup_us;
  size_t matched = 0;
  constexpr int kBatch = 100;
  auto lookup_deadline = Clock::now() + std::chrono::duration<double>(seconds * 2);
  while (Clock::now() < lookup_deadline || lookup_us.size() < 20) {
    auto t0 = Clock::now();
    for (int i = 0; i < kBatch; ++i) matched = (*lcache)->Lookup(*lns, chain)->matched;
    lookup_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() /
                        kBatch);
  }
  const double lookup_p50 = Median(lookup_us);
  const double lookup_p99 = Percentile(lookup_us, 99);

  double worst_save = 1e9, worst_load = 1e9;
  for (const Row& r : rows) {
    worst_save = std::min(worst_save, r.save_ratio);
    worst_load = std::min(worst_load, r.load_ratio);
  }

  if (json) {
    Json results = Json::Array();
    for (const Row& r : rows) {
      results.Push(Json::Object()
                       .Set("chunk_bytes", r.size)
                       .Set("threads", r.threads)
                       .Set("memcpy_save_gbps", r.memcpy_save / 1e9)
                       .Set("save_gbps", r.save / 1e9)
                       .Set("save_ratio", r.save_ratio)
                       .Set("memcpy_load_gbps", r.memcpy_load / 1e9)
                       .Set("load_gbps", r.load / 1e9)
                       .Set("load_ratio", r.load_ratio));
    }
    Json j = Json::Object();
    j.Set("suite", "dram")
        .Set("reference", "memcpy")
        .Set("results", std::move(results))
        .Set("lookup", Json::Object()
                           .Set("chain_chunks", chain_len)
                           .Set("matched", static_cast<uint64_t>(matched))
                           .Set("p50_us", lookup_p50)
                           .Set("p99_us", lookup_p99))
        .Set("ratios", Json::Object()
                           .Set("min_save_vs_memcpy", worst_save)
                           .Set("min_load_vs_memcpy", worst_load))
        .Set("targets", Json::Object()
                            .Set("save_vs_memcpy", 0.8)
                            .Set("load_vs_memcpy", 0.8)
                            .Set("lookup_p50_us", 10.0));
    std::printf("%s\n", j.Dump().c_str());
    return 0;
  }
  std::printf(
      "kvtier bench dram: medians of %lld x %.2fs (ratio = median of per-repetition "
      "ratios), arena %s, working set %s\n\n",
      static_cast<long long>(reps), seconds, HumanBytes(capacity).c_str(),
      HumanBytes(working_set).c_str());
  Table t({"chunk", "threads", "memcpy (save)", "Save", "ratio", "memcpy (load)", "Load", "ratio"});
  for (const Row& r : rows) {
    t.AddRow({HumanBytes(r.size), absl::StrCat(r.threads), HumanRate(r.memcpy_save),
              HumanRate(r.save), Fixed(r.save_ratio, 2), HumanRate(r.memcpy_load),
              HumanRate(r.load), Fixed(r.load_ratio, 2)});
  }
  t.Print();
  std::printf("\nLookup of a %lld-chunk cached chain: p50 %.2f us, p99 %.2f us (matched %zu)\n",
              static_cast<long long>(chain_len), lookup_p50, lookup_p99, matched);
  std::printf(
      "targets: Save and Load >= 0.80x memcpy (worst here: %.2fx, %.2fx); Lookup <= 10 us\n",
      worst_save, worst_load);
  return 0;
}

}  // namespace kvtier::cli
