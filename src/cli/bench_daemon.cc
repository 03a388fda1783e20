// `kvtier bench daemon`: Save/Load of 1 MiB chunks through kvtierd, over the
// shared arena and over gRPC streaming (Unix socket and loopback TCP), beside
// memcpy and beside redis-server SET/GET of the same values with the same
// client concurrency and batch size over the same kind of socket (Unix or
// loopback TCP); then Lookup latency and QPS. Each figure comes with the CPU
// time all processes spent per byte moved.
//
// The suite starts its own kvtierd (on a temporary socket, with an admin
// token so TCP may be enabled, its arena prefaulted as in a long-running
// daemon) and its own redis-server (free loopback port and a Unix socket, no
// persistence), and stops both at the end.
#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kvtier/client.h"
#include "kvtier/namespace.h"
#include "src/cli/bench.h"
#include "src/cli/child_process.h"
#include "src/cli/report.h"
#include "src/common/temp_path.h"

namespace kvtier::cli {
namespace {

using Clock = std::chrono::steady_clock;

void Fill(std::vector<std::byte>& v, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= v.size(); i += 8) {
    uint64_t x = rng();
    std::memcpy(v.data() + i, &x, 8);
  }
}

// One hiredis connection with pipelined SET/GET batches.
class Redis {
 public:
  // Over loopback TCP when `unix_socket` is empty, else over that socket.
  static std::unique_ptr<Redis> Connect(int port, const std::string& unix_socket = "") {
    redisContext* c = unix_socket.empty() ? redisConnect("127.0.0.1", port)
                                          : redisConnectUnix(unix_socket.c_str());
    if (c == nullptr || c->err) {
      if (c) redisFree(c);
      return nullptr;
    }
    return std::unique_ptr<Redis>(new Redis(c));
  }
  ~Redis() { redisFree(c_); }
  bool Ping() {
    auto* r = static_cast<redisReply*>(redisCommand(c_, "PING"));
    bool ok = r != nullptr && r->type == REDIS_REPLY_STATUS;
    if (r) freeReplyObject(r);
    return ok;
  }
  bool SetBatch(const std::vector<std::string>& keys, const std::vector<const std::byte*>& vals,
                size_t bytes) {
    for (size_t i = 0; i < keys.size(); ++i) {
      redisAppendCommand(c_, "SET %b %b", keys[i].data(), keys[i].size(), vals[i], bytes);
    }
    bool ok = true;
    for (size_t i = 0; i < keys.size(); ++i) {
      void* reply = nullptr;
      if (redisGetReply(c_, &reply) != REDIS_OK) return false;
      auto* r = static_cast<redisReply*>(reply);
      ok = ok && r->type == REDIS_REPLY_STATUS;
      freeReplyObject(r);
    }
    return ok;
  }
  // Copies each value into outs[i] (as a client would hand it on).
  bool GetBatch(const std::vector<std::string>& keys, const std::vector<std::byte*>& outs,
                size_t bytes) {
    for (const std::string& k : keys) redisAppendCommand(c_, "GET %b", k.data(), k.size());
    bool ok = true;
    for (size_t i = 0; i < keys.size(); ++i) {
      void* reply = nullptr;
      if (redisGetReply(c_, &reply) != REDIS_OK) return false;
      auto* r = static_cast<redisReply*>(reply);
      if (r->type == REDIS_REPLY_STRING && r->len == bytes) {
        std::memcpy(outs[i], r->str, bytes);
      } else {
        ok = false;
      }
      freeReplyObject(r);
    }
    return ok;
  }

 private:
  explicit Redis(redisContext* c) : c_(c) {}
  redisContext* c_;
};

std::unique_ptr<Client> NewClient(const ClientOptions& o) {
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(o);
  return c.ok() ? std::move(*c) : nullptr;
}

// CPU seconds (user + system, all threads) and minor page faults a process
// has had so far; zeros when /proc cannot tell.
struct ProcUsage {
  double cpu_seconds = 0;
  double minor_faults = 0;
};
ProcUsage Usage(pid_t pid) {
  FILE* f = std::fopen(absl::StrCat("/proc/", pid, "/stat").c_str(), "r");
  if (f == nullptr) return {};
  char buf[1024];
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // Fields after the command name (which may hold spaces): state is field 3,
  // minflt is field 10, utime and stime are fields 14 and 15.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return {};
  unsigned long long minflt = 0, utime = 0, stime = 0;
  if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %llu %*u %*u %*u %llu %llu", &minflt, &utime,
                  &stime) != 3) {
    return {};
  }
  return {static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK)),
          static_cast<double>(minflt)};
}

struct Row {
  std::string what;
  std::vector<double> kvtier, reference, ratio;  // per repetition
  // CPU nanoseconds per byte moved (this process + kvtierd + redis-server).
  std::vector<double> kvtier_cpu, reference_cpu;
  // Minor page faults per MiB moved, of the client process and of the server
  // (kvtierd for kvtier's side, redis-server for redis's; memcpy has none).
  std::vector<double> kvtier_client_faults, kvtier_server_faults;
  std::vector<double> reference_client_faults, reference_server_faults;
};

}  // namespace

int RunDaemonBench(Flags& flags) {
  const bool json = flags.Bool("json");
  const uint64_t chunk = flags.Bytes("chunk", 1ull << 20);
  const int threads = static_cast<int>(flags.Int("clients", 2));
  const int batch = static_cast<int>(flags.Int("batch", 8));
  const double seconds = flags.Double("seconds", 1.0);
  const int reps = static_cast<int>(flags.Int("reps", 3));
  const uint64_t dram = flags.Bytes("dram", 1ull << 30);
  const int chain = static_cast<int>(flags.Int("chain", 64));
  const double lookup_seconds = flags.Double("lookup-seconds", 1.0);
  const std::string kvtierd = flags.String("kvtierd", SiblingBinary("kvtierd", "kvtierd"));
  const std::string redis_bin = flags.String("redis-server", "redis-server");
  const std::string paths = flags.String("paths", "shm,grpc,tcp");
  // Payload bytes per gRPC stream message (client and daemon alike).
  const uint64_t message_bytes = flags.Bytes("message-bytes", 1ull << 20);
  const bool want_shm = absl::StrContains(paths, "shm");
  const bool want_grpc = absl::StrContains(paths, "grpc");
  const bool want_tcp = absl::StrContains(paths, "tcp");
  if (absl::Status s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier bench daemon: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (chunk % 16384 != 0 || chunk == 0 || threads < 1 || batch < 1 || reps < 1 || chain < 1 ||
      message_bytes < 4096 || message_bytes > (64ull << 20)) {
    std::fprintf(stderr,
                 "kvtier bench daemon: --chunk must be a multiple of 16 KiB; --clients, "
                 "--batch, --reps, --chain >= 1; --message-bytes in [4 KiB, 64 MiB]\n");
    return 2;
  }
  // Working sets: per client, `keys_per_client` chunks for loads.
  const int keys_per_client = std::max(batch, 32);
  if (uint64_t(threads) * keys_per_client * chunk * 2 > dram) {
    std::fprintf(stderr, "kvtier bench daemon: --dram too small for the load working set\n");
    return 2;
  }

  // ---- start kvtierd and redis-server
  absl::StatusOr<std::string> tmp_dir = MakeTempDir("/tmp", "kvtier-bench-");
  if (!tmp_dir.ok()) {
    std::fprintf(stderr, "kvtier bench daemon: %s\n", tmp_dir.status().ToString().c_str());
    return 1;
  }
  const std::string dir = *tmp_dir;
  RemoveOnExit cleanup(dir);
  const std::string socket = dir + "/kvtierd.sock";
  const std::string token =
      absl::StrCat("bench-admin-", std::random_device()(), "-", std::random_device()(), "-token");
  const std::string tcp = absl::StrCat("127.0.0.1:", FreeLoopbackPort());
  const std::string config = dir + "/kvtierd.yaml";
  if (FILE* f = std::fopen(config.c_str(), "w"); f != nullptr) {
    std::fprintf(f,
                 "limits:\n  max_message_bytes: %llu\n"
                 "  max_grpc_message_bytes: %llu\n",
                 static_cast<unsigned long long>(message_bytes),
                 static_cast<unsigned long long>(
                     std::max<uint64_t>(16ull << 20, message_bytes + (1 << 20))));
    std::fclose(f);
  }
  std::unique_ptr<ChildProcess> daemon = ChildProcess::Start(
      {kvtierd, "--config", config, "--socket", socket, "--http", "", "--dram", absl::StrCat(dram),
       "--tcp", tcp, "--nvme", "off", "--prefault", "true", "--log-level", "warn"},
      {"KVTIER_ADMIN_TOKEN=" + token}, dir + "/kvtierd.log");
  const int redis_port = FreeLoopbackPort();
  const std::string redis_socket = dir + "/redis.sock";
  std::unique_ptr<ChildProcess> redis =
      ChildProcess::Start({redis_bin, "--port", absl::StrCat(redis_port), "--bind", "127.0.0.1",
                           "--unixsocket", redis_socket, "--unixsocketperm", "700", "--save", "",
                           "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"},
                          {}, dir + "/redis.log");
  if (daemon == nullptr || redis == nullptr) {
    std::fprintf(stderr, "kvtier bench daemon: cannot start kvtierd or redis-server\n");
    return 1;
  }
  ClientOptions uds;
  uds.socket_path = socket;
  uds.token = token;
  uds.max_message_bytes = message_bytes;
  ClientOptions grpc_uds = uds;
  grpc_uds.shared_memory = false;
  ClientOptions grpc_tcp;
  grpc_tcp.address = tcp;
  grpc_tcp.token = token;
  grpc_tcp.max_message_bytes = message_bytes;
  {
    auto probe = NewClient(uds);
    bool up = false;
    for (int i = 0; i < 500 && !up; ++i) {
      up = probe != nullptr && probe->Health().ok();
      if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::unique_ptr<Redis> r;
    for (int i = 0; i < 500 && r == nullptr; ++i) {
      r = Redis::Connect(redis_port);
      if (r == nullptr || !r->Ping()) {
        r = nullptr;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    if (!up || r == nullptr) {
      std::fprintf(stderr,
                   "kvtier bench daemon: %s did not come up (see %s/*.log; is redis-server "
                   "installed?)\n",
                   !up ? "kvtierd" : "redis-server", dir.c_str());
      return 1;
    }
  }

  NamespaceOptions nso;
  nso.model_id = "kvtier-bench/daemon";
  nso.layout = KvLayout{4, 1, 64, 2, 16, DType::kFloat16};  // 1 KiB per token
  nso.tokens_per_chunk = static_cast<uint32_t>(chunk / 1024);
  absl::StatusOr<Namespace> ns = Namespace::Create(nso);
  if (!ns.ok()) {
    std::fprintf(stderr, "kvtier bench daemon: %s\n", ns.status().ToString().c_str());
    return 1;
  }
  auto key_of = [](int t, uint64_t i, uint64_t space) {
    return BlockKey{0xBE4C000000000000ull | (space << 32) | uint64_t(t), i + 1};
  };

  // Per-client buffers: a pool of source chunks and a pool of destinations.
  const int pool_chunks = keys_per_client;
  std::vector<std::vector<std::vector<std::byte>>> src(threads), dst(threads);
  for (int t = 0; t < threads; ++t) {
    for (int i = 0; i < pool_chunks; ++i) {
      src[t].emplace_back(chunk);
      Fill(src[t].back(), uint64_t(t) * 1000 + i);
      dst[t].emplace_back(chunk, std::byte{1});
    }
  }
  // Clients per thread, one connection each.
  std::vector<std::unique_ptr<Client>> shm_c, grpc_c, tcp_c;
  // Redis over TCP (beside gRPC over TCP) and over a Unix socket (beside
  // gRPC over kvtierd's Unix socket): one connection per client thread each.
  std::vector<std::unique_ptr<Redis>> redis_c, redis_u;
  uds.prefault_arena = true;
  for (int t = 0; t < threads; ++t) {
    shm_c.push_back(NewClient(uds));
    grpc_c.push_back(NewClient(grpc_uds));
    tcp_c.push_back(NewClient(grpc_tcp));
    redis_c.push_back(Redis::Connect(redis_port));
    redis_u.push_back(Redis::Connect(redis_port, redis_socket));
    if (!shm_c.back() || !grpc_c.back() || !tcp_c.back() || !redis_c.back() || !redis_u.back()) {
      std::fprintf(stderr, "kvtier bench daemon: cannot connect\n");
      return 1;
    }
  }

  // ---- operations (one batch each)
  auto chunk_ref = [&](const BlockKey& k) {
    return ChunkRef{k, BlockKey{}, 0, nso.tokens_per_chunk};
  };
  auto save_batch = [&](Client& c, int t, uint64_t first, uint64_t space) {
    std::vector<ChunkRef> refs;
    std::vector<absl::Span<const std::byte>> payloads;
    for (int b = 0; b < batch; ++b) {
      refs.push_back(chunk_ref(key_of(t, first + b, space)));
      payloads.push_back(src[t][(first + b) % pool_chunks]);
    }
    absl::StatusOr<std::vector<absl::Status>> r = c.SaveBatch(*ns, refs, payloads);
    if (!r.ok()) return false;
    for (const absl::Status& s : *r) {
      if (!s.ok() && !absl::IsResourceExhausted(s)) return false;
    }
    return true;
  };
  auto load_batch = [&](Client& c, int t, uint64_t n) {
    std::vector<BlockKey> keys;
    std::vector<absl::Span<std::byte>> outs;
    for (int b = 0; b < batch; ++b) {
      const uint64_t i = (n * batch + b) % keys_per_client;
      keys.push_back(key_of(t, i, 1));
      outs.push_back(absl::MakeSpan(dst[t][b % pool_chunks]));
    }
    absl::StatusOr<std::vector<absl::StatusOr<size_t>>> r = c.LoadBatch(*ns, keys, outs);
    if (!r.ok()) return false;
    for (const auto& s : *r) {
      if (!s.ok()) return false;
    }
    return true;
  };
  auto redis_keys = [&](int t, uint64_t n, bool load) {
    std::vector<std::string> keys;
    for (int b = 0; b < batch; ++b) {
      const uint64_t i = load ? (n * batch + b) % keys_per_client : n * batch + b;
      keys.push_back(absl::StrCat(load ? "load:" : "save:", t, ":", i % (4 * keys_per_client)));
    }
    return keys;
  };

  // The load working set, in kvtierd and in redis.
  for (int t = 0; t < threads; ++t) {
    for (int i = 0; i < keys_per_client; i += batch) {
      std::vector<ChunkRef> refs;
      std::vector<absl::Span<const std::byte>> payloads;
      std::vector<std::string> rkeys;
      std::vector<const std::byte*> rvals;
      for (int b = 0; b < batch && i + b < keys_per_client; ++b) {
        refs.push_back(chunk_ref(key_of(t, i + b, 1)));
        payloads.push_back(src[t][(i + b) % pool_chunks]);
        rkeys.push_back(absl::StrCat("load:", t, ":", i + b));
        rvals.push_back(src[t][(i + b) % pool_chunks].data());
      }
      auto r = shm_c[t]->SaveBatch(*ns, refs, payloads);
      if (!r.ok() || !redis_c[t]->SetBatch(rkeys, rvals, chunk)) {
        std::fprintf(stderr, "kvtier bench daemon: cannot store the load working set\n");
        return 1;
      }
    }
  }

  // Large shared destination for memcpy "saves" (like the arena).
  std::vector<std::byte> arena_like(uint64_t(threads) * 4 * keys_per_client * chunk);
  const uint64_t op_bytes = uint64_t(batch) * chunk;
  std::vector<Row> rows = {
      {"load: shared memory vs memcpy"},         {"load: gRPC (unix) vs redis GET (unix)"},
      {"load: gRPC (tcp) vs redis GET (tcp)"},   {"save: shared memory vs memcpy"},
      {"save: gRPC (unix) vs redis SET (unix)"}, {"save: gRPC (tcp) vs redis SET (tcp)"}};
  auto memcpy_load = [&](int t, uint64_t n) {
    for (int b = 0; b < batch; ++b) {
      const uint64_t i = (n * batch + b) % keys_per_client;
      std::memcpy(dst[t][b % pool_chunks].data(),
                  arena_like.data() + (uint64_t(t) * keys_per_client + i) * chunk, chunk);
    }
    return true;
  };
  auto memcpy_save = [&](int t, uint64_t n) {
    for (int b = 0; b < batch; ++b) {
      const uint64_t i = (n * batch + b) % (4 * keys_per_client);
      std::memcpy(arena_like.data() + (uint64_t(t) * 4 * keys_per_client + i) * chunk,
                  src[t][i % pool_chunks].data(), chunk);
    }
    return true;
  };
  auto redis_get = [&](std::vector<std::unique_ptr<Redis>>& rs) {
    return [&](int t, uint64_t n) {
      std::vector<std::byte*> outs;
      for (int b = 0; b < batch; ++b) outs.push_back(dst[t][b % pool_chunks].data());
      return rs[t]->GetBatch(redis_keys(t, n, true), outs, chunk);
    };
  };
  auto redis_set = [&](std::vector<std::unique_ptr<Redis>>& rs) {
    return [&](int t, uint64_t n) {
      std::vector<const std::byte*> vals;
      for (int b = 0; b < batch; ++b) vals.push_back(src[t][(n * batch + b) % pool_chunks].data());
      return rs[t]->SetBatch(redis_keys(t, n, false), vals, chunk);
    };
  };
  std::vector<uint64_t> save_counter(threads, 0);
  // Each measurement also notes the CPU time that the client, kvtierd and
  // redis-server spent on it per byte moved: on a shared machine the rates
  // swing with other load, the CPU cost per byte much less.
  const pid_t pids[] = {getpid(), daemon->pid(), redis->pid()};
  double last_cpu_ns_per_byte = 0;
  double last_faults_per_mib[3] = {0, 0, 0};  // per process of `pids`
  auto run = [&](auto fn) {
    ProcUsage before[3];
    for (int i = 0; i < 3; ++i) before[i] = Usage(pids[i]);
    const auto t0 = Clock::now();
    const double rate = MeasureThroughput(threads, seconds, op_bytes, fn);
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    double cpu = 0;
    const double mib = rate * wall / double(1 << 20);
    for (int i = 0; i < 3; ++i) {
      const ProcUsage after = Usage(pids[i]);
      cpu += after.cpu_seconds - before[i].cpu_seconds;
      last_faults_per_mib[i] = mib > 0 ? (after.minor_faults - before[i].minor_faults) / mib : 0;
    }
    last_cpu_ns_per_byte = rate > 0 ? cpu * 1e9 / (rate * wall) : 0;
    return rate;
  };
  // Warm-up: touch every page of every path once.
  run(memcpy_load);
  run(memcpy_save);
  run([&](int t, uint64_t n) { return load_batch(*shm_c[t], t, n); });
  Progress progress("bench daemon", uint64_t(reps) * rows.size());
  for (int rep = 0; rep < reps; ++rep) {
    // Measures kvtier's side, then the reference's, and records both.
    auto record_pair = [&](Row& row, auto kv_fn, auto ref_fn) {
      const double kv = kv_fn();
      row.kvtier_cpu.push_back(last_cpu_ns_per_byte);
      row.kvtier_client_faults.push_back(last_faults_per_mib[0]);
      row.kvtier_server_faults.push_back(last_faults_per_mib[1]);
      const double ref = ref_fn();
      row.reference_cpu.push_back(last_cpu_ns_per_byte);
      row.reference_client_faults.push_back(last_faults_per_mib[0]);
      row.reference_server_faults.push_back(last_faults_per_mib[2]);
      row.kvtier.push_back(kv);
      row.reference.push_back(ref);
      row.ratio.push_back(ref > 0 ? kv / ref : 0);
      progress.Update(uint64_t(rep) * rows.size() + (&row - rows.data()) + 1);
    };
    // Loads first: saves churn the LRU.
    if (want_shm) {
      record_pair(
          rows[0],
          [&] { return run([&](int t, uint64_t n) { return load_batch(*shm_c[t], t, n); }); },
          [&] { return run(memcpy_load); });
    }
    if (want_grpc) {
      record_pair(
          rows[1],
          [&] { return run([&](int t, uint64_t n) { return load_batch(*grpc_c[t], t, n); }); },
          [&] { return run(redis_get(redis_u)); });
    }
    if (want_tcp) {
      record_pair(
          rows[2],
          [&] { return run([&](int t, uint64_t n) { return load_batch(*tcp_c[t], t, n); }); },
          [&] { return run(redis_get(redis_c)); });
    }
    auto save_with = [&](std::vector<std::unique_ptr<Client>>& cs) {
      return run([&](int t, uint64_t) {
        uint64_t first = save_counter[t];
        save_counter[t] += batch;
        return save_batch(*cs[t], t, first, 2);
      });
    };
    if (want_shm) {
      record_pair(
          rows[3], [&] { return save_with(shm_c); }, [&] { return run(memcpy_save); });
    }
    if (want_grpc) {
      record_pair(
          rows[4], [&] { return save_with(grpc_c); }, [&] { return run(redis_set(redis_u)); });
    }
    if (want_tcp) {
      record_pair(
          rows[5], [&] { return save_with(tcp_c); }, [&] { return run(redis_set(redis_c)); });
    }
    // Bring the load set back in case saves evicted part of it.
    for (int t = 0; t < threads; ++t) {
      for (int i = 0; i < keys_per_client; i += batch) {
        (void)save_batch(*shm_c[t], t, i, 1);
      }
    }
  }
  progress.Finish();

  // ---- Lookup latency (one client) and QPS (one and all clients)
  std::vector<BlockKey> lookup_chain;
  for (int i = 0; i < chain; ++i) lookup_chain.push_back(key_of(0, i % keys_per_client, 1));
  if (chain > keys_per_client) {
    for (int i = keys_per_client; i < chain; ++i) lookup_chain[i] = key_of(0, i, 7);
  }
  std::vector<double> lat_us;
  size_t matched = 0;
  {
    auto t0 = Clock::now();
    while (std::chrono::duration<double>(Clock::now() - t0).count() < lookup_seconds) {
      auto a = Clock::now();
      absl::StatusOr<LookupResult> r = shm_c[0]->Lookup(*ns, lookup_chain);
      lat_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
      if (!r.ok()) {
        std::fprintf(stderr, "kvtier bench daemon: lookup: %s\n", r.status().ToString().c_str());
        return 1;
      }
      matched = r->matched;
    }
  }
  const double qps1 = static_cast<double>(lat_us.size()) / lookup_seconds;
  const double qpsn = MeasureThroughput(threads, lookup_seconds, 1, [&](int t, uint64_t) {
    return shm_c[t]->Lookup(*ns, lookup_chain).ok();
  });

  // ---- report
  auto med = [](const std::vector<double>& v) { return Median(v); };
  const double shm_load = med(rows[0].ratio), shm_save = med(rows[3].ratio);
  const double grpc_load = med(rows[1].ratio), grpc_save = med(rows[4].ratio);
  const double tcp_load = med(rows[2].ratio), tcp_save = med(rows[5].ratio);
  if (json) {
    Json results = Json::Array();
    for (const Row& r : rows) {
      if (r.ratio.empty()) continue;
      results.Push(Json::Object()
                       .Set("what", r.what)
                       .Set("kvtier_gbps", med(r.kvtier) / 1e9)
                       .Set("reference_gbps", med(r.reference) / 1e9)
                       .Set("kvtier_cpu_ns_per_byte", med(r.kvtier_cpu))
                       .Set("reference_cpu_ns_per_byte", med(r.reference_cpu))
                       .Set("kvtier_client_faults_per_mib", med(r.kvtier_client_faults))
                       .Set("kvtier_server_faults_per_mib", med(r.kvtier_server_faults))
                       .Set("reference_client_faults_per_mib", med(r.reference_client_faults))
                       .Set("reference_server_faults_per_mib", med(r.reference_server_faults))
                       .Set("ratio", med(r.ratio)));
    }
    Json j = Json::Object();
    j.Set("suite", "daemon")
        .Set("reference", "memcpy, redis-server")
        .Set("chunk_bytes", chunk)
        .Set("clients", threads)
        .Set("batch", batch)
        .Set("results", std::move(results))
        .Set("lookup", Json::Object()
                           .Set("chain_chunks", chain)
                           .Set("matched", static_cast<uint64_t>(matched))
                           .Set("p50_us", Percentile(lat_us, 50))
                           .Set("p99_us", Percentile(lat_us, 99))
                           .Set("qps_1_client", qps1)
                           .Set("qps_all_clients", qpsn))
        .Set("ratios", Json::Object()
                           .Set("shm_load_vs_memcpy", shm_load)
                           .Set("shm_save_vs_memcpy", shm_save)
                           .Set("grpc_unix_load_vs_redis", grpc_load)
                           .Set("grpc_unix_save_vs_redis", grpc_save)
                           .Set("grpc_tcp_load_vs_redis", tcp_load)
                           .Set("grpc_tcp_save_vs_redis", tcp_save))
        .Set("targets", Json::Object().Set("shm_vs_memcpy", 0.7).Set("grpc_vs_redis", 1.0));
    std::printf("%s\n", j.Dump().c_str());
  } else {
    std::printf(
        "kvtier bench daemon: %s chunks, %d clients, %d chunks per request, %d reps of "
        "%.1f s (median)\n\n",
        HumanBytes(chunk).c_str(), threads, batch, reps, seconds);
    Table t({"path", "kvtier", "reference", "ratio", "CPU ms/GB kvtier", "reference",
             "faults/MiB kvtier", "reference"});
    auto faults = [&](const std::vector<double>& client, const std::vector<double>& server) {
      return absl::StrCat(Fixed(med(client), 0), " + ", Fixed(med(server), 0));
    };
    for (const Row& r : rows) {
      if (r.ratio.empty()) continue;
      t.AddRow({r.what, HumanRate(med(r.kvtier)), HumanRate(med(r.reference)),
                absl::StrCat(Fixed(med(r.ratio), 2), "x"), Fixed(med(r.kvtier_cpu) * 1e3, 0),
                Fixed(med(r.reference_cpu) * 1e3, 0),
                faults(r.kvtier_client_faults, r.kvtier_server_faults),
                faults(r.reference_client_faults, r.reference_server_faults)});
    }
    t.Print();
    std::printf(
        "(CPU ms/GB: CPU time of the client threads, kvtierd and redis-server together per "
        "GB moved; faults/MiB: minor page faults per MiB moved, client process + server "
        "(kvtierd or redis-server))\n");
    std::printf("\nLookup of a %d-chunk chain over the Unix socket (%zu cached)\n", chain, matched);
    Table l({"p50", "p99", "QPS (1 client)", absl::StrCat("QPS (", threads, " clients)")});
    l.AddRow({absl::StrCat(Fixed(Percentile(lat_us, 50), 1), " us"),
              absl::StrCat(Fixed(Percentile(lat_us, 99), 1), " us"), Fixed(qps1, 0),
              Fixed(qpsn, 0)});
    l.Print();
    std::printf(
        "\ntargets: shared memory >= 0.70x memcpy (load %.2fx, save %.2fx); gRPC >= 1.00x "
        "redis (unix: load %.2fx, save %.2fx; tcp: load %.2fx, save %.2fx)\n",
        shm_load, shm_save, grpc_load, grpc_save, tcp_load, tcp_save);
  }
  return 0;
}

}  // namespace kvtier::cli
