// `kvtier bench ucx`: remote Load throughput and latency between two nodes
// beside ucx_perftest on the same UCX transport and message size.
//
// The holder is a real kvtierd (started here, with node-to-node transfer on);
// the reader is this process: an embedded cache with its own UCX engine and
// the remote reader kvtierd uses, asking the holder through its Peer service.
// One remote Load of a chunk = Peer.PinForRead over gRPC + one ucp_get_nbx of
// header and payload into a reserved DRAM slot + header and checksum checks +
// commit (+ the lease release, asynchronous and batched); the chunk is then
// removed from the reader's DRAM so the next Load of it goes remote again.
// "In flight N" is measured two ways (--modes): `chain`, one Load of a chain
// of N remote chunks at a time (one PinForRead for the N, their N gets in
// flight together, as kvtierd's Load does), and `threads`, N threads each
// loading one chunk at a time (N PinForReads and N gets outstanding).
// ucx_perftest runs as a server and a client process on loopback with
// -t ucp_get, the same size and -O <in flight>, under the same UCX_TLS.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "kvtier/client.h"
#include "src/cli/bench.h"
#include "src/cli/child_process.h"
#include "src/cli/report.h"
#include "src/common/temp_path.h"
#include "src/core/embedded_cache.h"
#include "src/transfer/peer_client.h"
#include "src/transfer/remote_reader.h"
#include "src/transfer/static_peers.h"
#include "src/transfer/ucx_engine.h"

namespace kvtier::cli {
namespace {

constexpr const char* kToken = "bench-ucx-admin-token-0123456789";
constexpr const char* kPeerToken = "bench-ucx-peer-token-0123456789";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Bytes per second of one ucx_perftest ucp_get run (0 on failure).
double PerftestGet(const std::string& perftest, const std::string& tls, uint64_t size, int inflight,
                   const std::string& dir) {
  const int port = FreeLoopbackPort();
  const std::vector<std::string> env = {absl::StrCat("UCX_TLS=", tls)};
  auto server =
      ChildProcess::Start({perftest, "-p", absl::StrCat(port)}, env, dir + "/perftest-server.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  const uint64_t iters = std::max<uint64_t>(32, (256ull << 20) / size);
  const std::string log = dir + "/perftest-client.log";
  auto client = ChildProcess::Start(
      {perftest, "127.0.0.1", "-p", absl::StrCat(port), "-t", "ucp_get", "-s", absl::StrCat(size),
       "-n", absl::StrCat(iters), "-w", absl::StrCat(std::max<uint64_t>(4, iters / 10)), "-O",
       absl::StrCat(inflight), "-f"},
      env, log);
  if (client == nullptr || client->Wait(120) != 0) return 0;
  server->Wait(5);
  // The last line holds: iterations, latency p50 avg overall, bandwidth avg
  // overall (MB/s, MB = 2^20), message rate avg overall.
  std::vector<std::string> lines = absl::StrSplit(ReadAll(log), '\n', absl::SkipWhitespace());
  if (lines.empty()) return 0;
  std::vector<std::string> f = absl::StrSplit(lines.back(), ' ', absl::SkipWhitespace());
  double mbs = 0;
  if (f.size() < 6 || !absl::SimpleAtod(f[5], &mbs)) return 0;
  return mbs * (1 << 20);
}

NamespaceOptions BenchNamespace(uint64_t chunk_bytes) {
  // 256-token chunks of fp16 K and V: chunk_bytes / 256 bytes per token.
  const uint64_t per_token = chunk_bytes / 256;
  const uint32_t layers = static_cast<uint32_t>(std::max<uint64_t>(1, per_token / 512));
  NamespaceOptions o;
  o.model_id = absl::StrCat("bench-ucx/", chunk_bytes);
  o.layout = KvLayout{layers, 2, 64, 2, 16, DType::kFloat16};
  o.tokens_per_chunk = 256;
  return o;
}

}  // namespace

int RunUcxBench(Flags& flags) {
  const bool json = flags.Bool("json");
  const std::vector<uint64_t> sizes = flags.BytesList("sizes", {256 << 10, 1 << 20, 4 << 20});
  const std::vector<int64_t> inflights = flags.IntList("inflight", {1, 4, 16});
  const std::string tls_list = flags.String("tls", "tcp");
  const int reps = static_cast<int>(flags.Int("reps", 3));
  const double seconds = flags.Double("seconds", 0.5);
  const int chunks = static_cast<int>(flags.Int("chunks", 32));
  const int latency_reads = static_cast<int>(flags.Int("latency-reads", 200));
  const std::string kvtierd = flags.String("kvtierd", SiblingBinary("kvtierd", "kvtierd"));
  const std::string perftest = flags.String("ucx-perftest", "ucx_perftest");
  // The reader's UcxOptions::busy_poll in microseconds (-1: infinite; the
  // default keeps UcxOptions' own).
  const int64_t busy_poll_us = flags.Int("reader-busy-poll-us", -2);
  // The reader's UcxOptions::copy_threads.
  const int64_t copy_threads = flags.Int("reader-copy-threads", -1);
  // The reader's UcxOptions::direct_reads: copy (and check) straight out of a
  // holder's arena mapped here instead of posting gets.
  const std::string direct_flag = absl::AsciiStrToLower(flags.String("reader-direct", "true"));
  const bool direct_reads = direct_flag == "true" || direct_flag == "1" || direct_flag == "yes";
  if (!direct_reads && direct_flag != "false" && direct_flag != "0" && direct_flag != "no") {
    std::fprintf(stderr, "kvtier bench ucx: --reader-direct: '%s' is neither true nor false\n",
                 direct_flag.c_str());
    return 2;
  }
  // How the reader pins: "ucx" (UCX calls on the endpoint, gRPC when the
  // holder does not offer them) or "grpc" (the Peer service only).
  const std::string pins = flags.String("pins", "ucx");
  // Merge concurrent fetches' pins also when they go as UCX calls.
  const bool merge_ucx_pins = flags.Bool("merge-ucx-pins");
  const std::vector<std::string> modes =
      absl::StrSplit(flags.String("modes", "chain,threads"), ',', absl::SkipEmpty());
  for (const std::string& m : modes) {
    if (m != "chain" && m != "threads") {
      std::fprintf(stderr, "kvtier bench ucx: --modes: '%s' is neither chain nor threads\n",
                   m.c_str());
      return 2;
    }
  }
  if (absl::Status s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier bench ucx: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (pins != "ucx" && pins != "grpc") {
    std::fprintf(stderr, "kvtier bench ucx: --pins: '%s' is neither ucx nor grpc\n", pins.c_str());
    return 2;
  }
  if (system(absl::StrCat(perftest, " -h >/dev/null 2>&1").c_str()) == 127 * 256) {
    std::fprintf(stderr, "kvtier bench ucx: %s not found (Debian: apt-get install ucx-utils)\n",
                 perftest.c_str());
    return 1;
  }
  absl::StatusOr<std::string> dir_or = MakeTempDir("/tmp", "kvtier-bench-ucx-");
  if (!dir_or.ok()) {
    std::fprintf(stderr, "kvtier bench ucx: %s\n", std::string(dir_or.status().message()).c_str());
    return 1;
  }
  const std::string dir = *dir_or;
  { std::ofstream(dir + "/admin.token") << kToken; }
  { std::ofstream(dir + "/peer.token") << kPeerToken; }

  struct Row {
    std::string tls;
    std::string mode;
    uint64_t size;
    int64_t inflight;
    double kvtier;    // median bytes/s
    double perftest;  // median bytes/s
    double ratio;     // median of per-repetition ratios
    // How kvtier's reads ran: "mapped-shm" (the holder's arena is UCX shared
    // memory mapped here: copied and checked in one pass; "mapped-shm-get"
    // with --reader-direct false: UCX gets out of it, then the check),
    // "one-sided" or "am-emulated".
    std::string get = "unknown";
  };
  std::vector<Row> rows;
  struct Lat {
    std::string tls;
    uint64_t size;
    double p50_us, p99_us;
  };
  std::vector<Lat> lats;
  std::vector<std::string> notes;
  int rc = 0;

  const std::vector<std::string> tls_values = absl::StrSplit(tls_list, ';', absl::SkipEmpty());
  for (const std::string& tls : tls_values) {
    setenv("UCX_TLS", tls.c_str(), 1);
    const int port = FreeLoopbackPort();
    const std::string socket = dir + "/kvtierd.sock";
    auto holder = ChildProcess::Start({kvtierd,
                                       "--socket",
                                       socket,
                                       "--http",
                                       "",
                                       "--dram",
                                       "1GiB",
                                       "--huge-pages",
                                       "false",
                                       "--nvme",
                                       "off",
                                       "--tcp",
                                       absl::StrCat("127.0.0.1:", port),
                                       "--ucx",
                                       "true",
                                       "--node-id",
                                       "bench-holder",
                                       "--admin-token-file",
                                       dir + "/admin.token",
                                       "--peer-token-file",
                                       dir + "/peer.token"},
                                      {absl::StrCat("UCX_TLS=", tls)}, dir + "/kvtierd.log");
    ClientOptions co;
    co.socket_path = socket;
    co.token = kToken;
    co.shared_memory = false;
    std::unique_ptr<Client> client;
    for (int i = 0; i < 200 && client == nullptr; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      auto c = Client::Create(co);
      if (c.ok() && (*c)->Health().ok()) client = std::move(*c);
    }
    if (client == nullptr) {
      std::fprintf(stderr, "kvtier bench ucx: kvtierd did not start:\n%s\n",
                   ReadAll(dir + "/kvtierd.log").c_str());
      return 1;
    }
    // The reader: this process.
    CacheOptions opts;
    opts.dram_capacity_bytes = 512ull << 20;
    opts.huge_pages = false;
    opts.register_with_gpu = false;
    auto cache = EmbeddedCache::Create(opts);
    transfer::UcxOptions uo;
    if (busy_poll_us >= 0) uo.busy_poll = absl::Microseconds(busy_poll_us);
    if (busy_poll_us == -1) uo.busy_poll = absl::InfiniteDuration();
    uo.direct_reads = direct_reads;
    uo.copy_threads = static_cast<int32_t>(std::clamp<int64_t>(copy_threads, -2, 65));
    auto engine = transfer::UcxEngine::Create(uo);
    if (!cache.ok() || !engine.ok()) {
      std::fprintf(stderr, "kvtier bench ucx: %s\n",
                   std::string((cache.ok() ? engine.status() : cache.status()).message()).c_str());
      return 1;
    }
    const Arena& arena = (*cache)->dram().arena();
    if (absl::Status s = (*engine)->MapArena(arena.base(), arena.size()); !s.ok()) {
      std::fprintf(stderr, "kvtier bench ucx: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    transfer::PeerClients clients(kPeerToken);
    transfer::StaticPeerSource source({absl::StrCat("127.0.0.1:", port)}, "bench-reader", &clients);
    transfer::RemoteReaderOptions ro;
    ro.node_id = "bench-reader";
    ro.transfer_timeout = absl::Seconds(30);
    ro.pins_over_ucx = pins == "ucx";
    ro.merge_ucx_pins = merge_ucx_pins;
    auto reader =
        transfer::RemoteReader::Create(cache->get(), engine->get(), &source, &clients, ro);

    for (uint64_t size : sizes) {
      absl::StatusOr<Namespace> ns = Namespace::Create(BenchNamespace(size));
      if (!ns.ok() || ns->PayloadBytes(256) != size) {
        notes.push_back(absl::StrCat("size ", size, ": not a 256-token chunk size; skipped"));
        continue;
      }
      std::vector<TokenId> tokens(256 * static_cast<size_t>(chunks));
      for (size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = static_cast<TokenId>((i * 7919 + size) % 50000);
      std::vector<ChunkRef> refs = *ns->Chunks(tokens);
      std::vector<std::byte> payload(size);
      for (size_t i = 0; i < size; ++i) payload[i] = static_cast<std::byte>(i * 131 + 7);
      for (const ChunkRef& r : refs) {
        if (absl::Status s = client->Save(*ns, r, payload); !s.ok()) {
          std::fprintf(stderr, "kvtier bench ucx: save: %s\n", std::string(s.message()).c_str());
          return 1;
        }
      }
      std::vector<BlockKey> keys = Namespace::Keys(refs);
      if ((*reader)->Locate(*ns, keys, 0).size() != keys.size()) {
        std::fprintf(stderr, "kvtier bench ucx: the holder does not report the chunks\n");
        return 1;
      }
      // One remote read, then drop it locally so the next read is remote too.
      auto read_one = [&](size_t i) {
        const BlockKey& k = keys[i % keys.size()];
        if (!(*reader)->Fetch(*ns, k).ok()) return false;
        (void)(*cache)->Remove(*ns, k);
        return true;
      };
      // Latency of one chunk read (nothing else in flight).
      std::vector<double> us;
      for (int i = 0; i < latency_reads; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        if (!read_one(static_cast<size_t>(i))) break;
        us.push_back(
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                .count());
      }
      lats.push_back({tls, size, Percentile(us, 50), Percentile(us, 99)});
      // One Load of `n` chunks of the chain (FetchMany: one PinForRead, the
      // gets in flight together), then dropped locally.
      auto read_chain = [&](size_t start, size_t n) {
        const absl::Span<const BlockKey> run = absl::MakeConstSpan(keys).subspan(start, n);
        size_t done = 0;
        while (done < run.size()) {
          std::vector<absl::Status> st = (*reader)->FetchMany(*ns, run.subspan(done));
          for (const absl::Status& x : st) {
            if (!x.ok()) return false;
          }
          done += st.size();
        }
        for (const BlockKey& k : run) (void)(*cache)->Remove(*ns, k);
        return true;
      };
      for (int64_t inflight : inflights) {
        for (const std::string& mode : modes) {
          std::vector<double> ours, theirs, ratios;
          for (int r = 0; r < reps; ++r) {
            double k = 0;
            if (mode == "chain") {
              const size_t n = std::min<size_t>(static_cast<size_t>(inflight), keys.size());
              const size_t runs = keys.size() / n;
              k = MeasureThroughput(1, seconds, size * n,
                                    [&](int, uint64_t i) { return read_chain((i % runs) * n, n); });
            } else {
              // Each thread reads its own keys, so no two fetch the same chunk.
              const int threads = static_cast<int>(inflight);
              k = MeasureThroughput(threads, seconds, size, [&](int t, uint64_t n) {
                const size_t per = std::max<size_t>(1, keys.size() / static_cast<size_t>(threads));
                return read_one(static_cast<size_t>(t) * per + n % per);
              });
            }
            double p = PerftestGet(perftest, tls, size, static_cast<int>(inflight), dir);
            ours.push_back(k);
            theirs.push_back(p);
            if (p > 0) ratios.push_back(k / p);
          }
          rows.push_back({tls, mode, size, inflight, Median(ours), Median(theirs), Median(ratios)});
          if (Median(ours) == 0) rc = 1;
        }
      }
    }
    const transfer::RemoteReaderStats st = (*reader)->Stats();
    notes.push_back(absl::StrCat("UCX_TLS=", tls, ": ", st.ucx_pins,
                                 " of the reader's pins went as UCX calls (--pins ", pins, "), ",
                                 st.merged_pins, " fetches rode in another fetch's pin"));
    if (!st.peers.empty()) {
      const std::string& lanes = st.peers[0].transports;
      notes.push_back(absl::StrCat("UCX_TLS=", tls, ": lanes ", lanes));
      const bool emulated = absl::StrContains(lanes, "am-emulated");
      const bool mapped = absl::StrContains(lanes, "mapped-shm");
      for (Row& r : rows) {
        if (r.tls != tls) continue;
        r.get = emulated ? "am-emulated"
                : mapped ? (direct_reads ? "mapped-shm" : "mapped-shm-get")
                         : "one-sided";
      }
      if (mapped) {
        // docs/transfer.md ("Shared memory") has the evidence.
        notes.push_back(absl::StrCat(
            "UCX_TLS=", tls, ": the holder's arena is UCX shared memory mapped by the reader; ",
            direct_reads ? "each chunk is copied out of the mapping and its checksum taken "
                           "while it is in cache (one pass)"
                         : "UCX's get copies each chunk out of the mapping, then the reader "
                           "checks it (a second pass)",
            ". ucx_perftest copies one cache-hot buffer and checks nothing; kvtier reads ", chunks,
            " distinct chunks and checks every byte, so the ratio is bounded by memory "
            "bandwidth and the checksum (about 0.5x where both copy from cache)."));
      } else if (emulated &&
                 (absl::StrContains(lanes, "posix") || absl::StrContains(lanes, "sysv"))) {
        notes.push_back(absl::StrCat(
            "UCX_TLS=", tls, ": the holder's arena is a memfd registered with UCX (UCX ",
            transfer::UcxEngine::Version(),
            " could not allocate it as shared memory with a file descriptor, or huge pages are "
            "in use): posix/sysv reach only memory they allocated, so gets are emulated with "
            "active messages. The ratio compares an AM-emulated get with a one-sided one."));
      }
    }
    reader->reset();
    engine->reset();
  }
  unsetenv("UCX_TLS");

  if (json) {
    Json results = Json::Array();
    for (const Row& r : rows) {
      results.Push(Json::Object()
                       .Set("ucx_tls", r.tls)
                       .Set("mode", r.mode)
                       .Set("chunk_bytes", r.size)
                       .Set("inflight", r.inflight)
                       .Set("kvtier_bytes_per_s", r.kvtier)
                       .Set("ucx_perftest_bytes_per_s", r.perftest)
                       .Set("ratio", r.ratio)
                       .Set("kvtier_get", r.get));
    }
    Json latency = Json::Array();
    for (const Lat& l : lats) {
      latency.Push(Json::Object()
                       .Set("ucx_tls", l.tls)
                       .Set("chunk_bytes", l.size)
                       .Set("p50_us", l.p50_us)
                       .Set("p99_us", l.p99_us));
    }
    Json n = Json::Array();
    for (const std::string& s : notes) n.Push(s);
    std::printf("%s\n", Json::Object()
                            .Set("suite", "ucx")
                            .Set("throughput", std::move(results))
                            .Set("latency", std::move(latency))
                            .Set("notes", std::move(n))
                            .Set("target_ratio", 0.85)
                            .Dump()
                            .c_str());
  } else {
    Table t({"UCX_TLS", "chunk", "in flight", "mode", "kvtier MiB/s", "ucx_perftest MiB/s", "ratio",
             "kvtier get"});
    for (const Row& r : rows) {
      t.AddRow({r.tls, absl::StrCat(r.size >> 10, " KiB"), absl::StrCat(r.inflight), r.mode,
                absl::StrFormat("%.0f", r.kvtier / (1 << 20)),
                absl::StrFormat("%.0f", r.perftest / (1 << 20)), absl::StrFormat("%.2f", r.ratio),
                r.get});
    }
    t.Print();
    Table l({"UCX_TLS", "chunk", "remote read p50 us", "p99 us"});
    for (const Lat& x : lats) {
      l.AddRow({x.tls, absl::StrCat(x.size >> 10, " KiB"), absl::StrFormat("%.0f", x.p50_us),
                absl::StrFormat("%.0f", x.p99_us)});
    }
    std::printf("\n");
    l.Print();
    for (const std::string& s : notes) std::printf("note: %s\n", s.c_str());
    std::printf("target: remote Load >= 0.85x ucx_perftest (ratio = median of %d repetitions)\n",
                reps);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return rc;
}

}  // namespace kvtier::cli
