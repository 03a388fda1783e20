// `kvtier bench index`: the cluster index's Lookup beside redis-server
// answering the same question from the same key -> holders map.
//
// The map: --nodes simulated nodes, each holding --chunks-per-node chunks as
// whole --chain-chunk chains drawn from a pool of --pool chains. Chains
// overlap as real prefixes do: each chain's first --shared chunks are those
// of its prefix group (--groups groups, a system prompt each), the rest are
// its own. The index is loaded directly through ClusterIndex::Store (not
// through NATS); redis-server (started here, free loopback port, no
// persistence) gets the same map as one set per key whose members are
// node * 8 + tier (SADD, pipelined).
//
// Lookups: a chain some node holds, from --clients client threads (one
// connection each), for --seconds, --reps times: kvtier-index's Index/Lookup
// over loopback gRPC (the service kvtier-index runs) beside one pipeline of
// --chain-chunk SMEMBERS per lookup, with the client computing each node's
// matched prefix and tier mix from the replies (the same answer). Reports
// QPS, p50 and p99 of each and their ratios, the index answering in process
// (no RPC), memory per indexed (key, node) entry of both, and the event
// ingest rate (kvtier.v1.EventBatch decode + apply, in process).
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "kvtier/v1/events.pb.h"
#include "kvtier/v1/index.grpc.pb.h"
#include "src/cli/bench.h"
#include "src/cli/child_process.h"
#include "src/cli/report.h"
#include "src/common/temp_path.h"
#include "src/index/cluster_index.h"
#include "src/index/event_ingest.h"
#include "src/index/event_publisher.h"
#include "src/index/index_service.h"
#include "src/server/wire.h"

namespace kvtier::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kNs = 0x6b76746965722e62;  // the benchmark's namespace id

uint64_t RssBytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

// The simulated cluster: which chains each node holds.
struct Workload {
  int nodes = 0;
  int chain = 0;
  int shared = 0;
  int groups = 0;
  int pool = 0;
  std::vector<std::vector<int>> node_chains;  // per node: chain ids (distinct)

  BlockKey Key(int chain_id, int i) const {
    // Shared prefix keys are the group's; the rest the chain's own.
    const bool in_prefix = i < shared;
    const uint64_t owner = in_prefix ? uint64_t(chain_id % groups) : uint64_t(groups + chain_id);
    return BlockKey{0x9e3779b97f4a7c15ull * (owner + 1), (owner << 20) | uint64_t(i + 1)};
  }
  std::vector<BlockKey> Chain(int chain_id) const {
    std::vector<BlockKey> out;
    for (int i = 0; i < chain; ++i) out.push_back(Key(chain_id, i));
    return out;
  }
  // The tier a node keeps a chunk in: deep chunks of some chains on NVMe.
  static Tier TierOf(int node, int chain_id, int i) {
    return ((node + chain_id) % 4 == 0 && i >= 64) ? Tier::kNvme : Tier::kDram;
  }
};

Workload MakeWorkload(int nodes, int64_t chunks_per_node, int chain, int shared, int groups,
                      int pool, double zipf) {
  Workload w;
  w.nodes = nodes;
  w.chain = chain;
  w.shared = shared;
  w.groups = groups;
  w.pool = pool;
  w.node_chains.resize(nodes);
  std::mt19937 rng(42);
  // Popular chains are held by more nodes (Zipf-like by rank).
  std::vector<double> weights(pool);
  for (int j = 0; j < pool; ++j) weights[j] = 1.0 / std::pow(j + 1.0, zipf);
  std::discrete_distribution<int> pick(weights.begin(), weights.end());
  for (int n = 0; n < nodes; ++n) {
    // Chains until the node holds chunks_per_node distinct chunks (a
    // shared prefix counts once per node).
    std::vector<int>& cs = w.node_chains[n];
    std::vector<bool> seen(pool, false), group_seen(groups, false);
    int64_t distinct = 0;
    while (distinct < chunks_per_node && static_cast<int>(cs.size()) < pool) {
      const int c = pick(rng);
      if (seen[c]) continue;
      seen[c] = true;
      cs.push_back(c);
      distinct += chain - shared;
      if (!group_seen[c % groups]) {
        group_seen[c % groups] = true;
        distinct += shared;
      }
    }
  }
  return w;
}

std::string NodeId(int n) { return absl::StrCat("node-", n); }

// The answer both sides compute: node -> matched chunks (sorted by node).
using Answer = std::vector<std::pair<uint32_t, uint32_t>>;

// ---- redis ----------------------------------------------------------------

class Redis {
 public:
  static std::unique_ptr<Redis> Connect(int port) {
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c == nullptr || c->err) {
      if (c) redisFree(c);
      return nullptr;
    }
    return std::unique_ptr<Redis>(new Redis(c));
  }
  ~Redis() { redisFree(c_); }
  bool Ping() {
    auto* r = static_cast<redisReply*>(redisCommand(c_, "PING"));
    const bool ok = r != nullptr && r->type == REDIS_REPLY_STATUS;
    if (r) freeReplyObject(r);
    return ok;
  }
  redisContext* ctx() { return c_; }
  // Drains `n` pipelined replies; false on any error reply.
  bool Drain(size_t n) {
    bool ok = true;
    for (size_t i = 0; i < n; ++i) {
      void* reply = nullptr;
      if (redisGetReply(c_, &reply) != REDIS_OK) return false;
      auto* r = static_cast<redisReply*>(reply);
      ok = ok && r->type != REDIS_REPLY_ERROR;
      freeReplyObject(r);
    }
    return ok;
  }
  // The lookup: one pipeline of SMEMBERS, then the prefix walk on the client.
  bool Lookup(const std::vector<std::string>& keys, Answer* out) {
    for (const std::string& k : keys) redisAppendCommand(c_, "SMEMBERS %b", k.data(), k.size());
    std::vector<std::pair<uint32_t, uint32_t>> alive;  // node, matched
    std::vector<std::array<uint32_t, 8>> counts;
    out->clear();
    std::vector<uint32_t> members;
    for (size_t i = 0; i < keys.size(); ++i) {
      void* reply = nullptr;
      if (redisGetReply(c_, &reply) != REDIS_OK) return false;
      auto* r = static_cast<redisReply*>(reply);
      members.clear();
      if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t e = 0; e < r->elements; ++e) {
          members.push_back(static_cast<uint32_t>(std::strtoul(r->element[e]->str, nullptr, 10)));
        }
      }
      freeReplyObject(r);
      std::sort(members.begin(), members.end());
      if (i == 0) {
        for (uint32_t m : members) {
          alive.push_back({m >> 3, 1});
          counts.push_back({});
          ++counts.back()[m & 7];
        }
        continue;
      }
      // Walk on: candidates and members are both sorted by node.
      size_t j = 0, keep = 0;
      for (size_t c = 0; c < alive.size(); ++c) {
        while (j < members.size() && (members[j] >> 3) < alive[c].first) ++j;
        if (j < members.size() && (members[j] >> 3) == alive[c].first && alive[c].second == i) {
          ++alive[c].second;
          ++counts[c][members[j] & 7];
        }
        alive[keep] = alive[c];
        counts[keep] = counts[c];
        ++keep;
      }
    }
    *out = std::move(alive);
    return true;
  }
  uint64_t UsedMemory() {
    auto* r = static_cast<redisReply*>(redisCommand(c_, "INFO memory"));
    uint64_t v = 0;
    if (r != nullptr && r->type == REDIS_REPLY_STRING) {
      const char* p = std::strstr(r->str, "used_memory:");
      if (p != nullptr) v = std::strtoull(p + 12, nullptr, 10);
    }
    if (r) freeReplyObject(r);
    return v;
  }

 private:
  explicit Redis(redisContext* c) : c_(c) {}
  redisContext* c_;
};

std::string RedisKey(const BlockKey& k) {
  std::string s = wire::KeyToBytes(k);
  return s;
}

// Latency samples and QPS of one timed run.
struct RunResult {
  double qps = 0;
  std::vector<double> lat_us;
  bool ok = true;
};

template <typename Fn>
RunResult Timed(int clients, double seconds, Fn fn) {
  RunResult r;
  std::vector<std::vector<double>> lat(clients);
  std::atomic<bool> stop{false}, failed{false};
  std::vector<uint64_t> n(clients, 0);
  std::vector<std::thread> pool;
  const auto t0 = Clock::now();
  for (int t = 0; t < clients; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(t * 7717 + 3));
      while (!stop.load(std::memory_order_relaxed)) {
        const auto s = Clock::now();
        if (!fn(t, rng)) {
          failed.store(true);
          stop.store(true);
          break;
        }
        lat[t].push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
        ++n[t];
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& th : pool) th.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  uint64_t total = 0;
  for (int t = 0; t < clients; ++t) {
    total += n[t];
    r.lat_us.insert(r.lat_us.end(), lat[t].begin(), lat[t].end());
  }
  r.qps = static_cast<double>(total) / elapsed;
  r.ok = !failed.load();
  return r;
}

}  // namespace

int RunIndexBench(Flags& flags) {
  // As in kvtierd and kvtier-index: no lock-order bookkeeping on every
  // Mutex acquisition (Debian's Abseil does it by default).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const bool json = flags.Bool("json");
  const int nodes = static_cast<int>(flags.Int("nodes", 1000));
  const int64_t per_node = flags.Int("chunks-per-node", 100000);
  const int chain = static_cast<int>(flags.Int("chain", 128));
  const int shared = static_cast<int>(flags.Int("shared", 32));
  const int groups = static_cast<int>(flags.Int("groups", 64));
  const int pool = static_cast<int>(flags.Int("pool", 20000));
  const double zipf = flags.Double("zipf", 0.6);
  const int clients = static_cast<int>(flags.Int("clients", 2));
  const double seconds = flags.Double("seconds", 2);
  const int reps = static_cast<int>(flags.Int("reps", 3));
  const std::string redis_bin = flags.String("redis-server", "redis-server");
  if (absl::Status s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier bench index: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (nodes < 1 || nodes > (1 << 20) || chain < 1 || shared < 0 || shared > chain || groups < 1 ||
      pool < 1 || clients < 1 || reps < 1 || per_node < chain) {
    std::fprintf(stderr,
                 "kvtier bench index: --nodes, --chain, --groups, --pool, --clients, --reps must "
                 "be positive, --shared <= --chain, --chunks-per-node >= --chain\n");
    return 2;
  }
  absl::StatusOr<std::string> dir = MakeTempDir("/tmp", "kvtier-bench-index-");
  if (!dir.ok()) {
    std::fprintf(stderr, "kvtier bench index: %s\n", std::string(dir.status().message()).c_str());
    return 1;
  }
  auto log = [&](const std::string& msg) {
    if (!json) std::fprintf(stderr, "%s\n", msg.c_str());
  };

  const Workload w = MakeWorkload(nodes, per_node, chain, shared, groups, pool, zipf);

  // ---- load the index directly
  index::ClusterIndexOptions io;
  io.max_entries = uint64_t(nodes) * uint64_t(per_node) * 2;
  io.max_nodes = static_cast<uint32_t>(nodes + 16);
  io.node_timeout = absl::Hours(24);
  auto index = index::ClusterIndex::Create(io);
  if (!index.ok()) {
    std::fprintf(stderr, "kvtier bench index: %s\n", std::string(index.status().message()).c_str());
    return 1;
  }
  const uint64_t rss0 = RssBytes();
  std::vector<uint32_t> node_idx(nodes);
  const auto load0 = Clock::now();
  for (int n = 0; n < nodes; ++n) {
    index::NodeAnnouncement a;
    a.node_id = NodeId(n);
    a.incarnation = 1;
    a.grpc_address = absl::StrCat("10.0.", n / 256, ".", n % 256, ":7000");
    node_idx[n] = *(*index)->Heartbeat(a, absl::Now());
  }
  std::vector<BlockKey> dram_keys, nvme_keys;
  for (int n = 0; n < nodes; ++n) {
    for (int c : w.node_chains[n]) {
      dram_keys.clear();
      nvme_keys.clear();
      for (int i = 0; i < chain; ++i) {
        (Workload::TierOf(n, c, i) == Tier::kDram ? dram_keys : nvme_keys).push_back(w.Key(c, i));
      }
      (*index)->Store(node_idx[n], kNs, dram_keys, Tier::kDram);
      (*index)->Store(node_idx[n], kNs, nvme_keys, Tier::kNvme);
    }
  }
  const double load_s = std::chrono::duration<double>(Clock::now() - load0).count();
  const index::ClusterIndexStats ist = (*index)->Stats(absl::Now());
  const uint64_t index_mem = (*index)->MemoryBytes();
  const uint64_t rss_delta = RssBytes() - std::min(RssBytes(), rss0);
  if (ist.dropped_entries != 0) {
    std::fprintf(stderr, "kvtier bench index: the index dropped %llu entries (bound too small)\n",
                 static_cast<unsigned long long>(ist.dropped_entries));
    return 1;
  }
  log(absl::StrCat("index: ", ist.keys, " keys, ", ist.entries, " entries, loaded in ",
                   Fixed(load_s, 1), " s, ", HumanBytes(index_mem), " (",
                   Fixed(double(index_mem) / ist.entries, 1), " B/entry)"));

  // ---- the Index service on loopback gRPC
  index::EventIngest ingest(index->get());
  index::IndexService service(
      index->get(), &ingest, [] { return true; }, 65536);
  int grpc_port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &grpc_port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    std::fprintf(stderr, "kvtier bench index: cannot start the gRPC server\n");
    return 1;
  }

  // ---- redis-server with the same map
  const int redis_port = FreeLoopbackPort();
  // The folder goes after redis-server has stopped (members destroyed in
  // reverse order).
  struct DirRemover {
    std::string dir;
    ~DirRemover() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } dir_remover{*dir};
  std::unique_ptr<ChildProcess> redis = ChildProcess::Start(
      {redis_bin, "--port", absl::StrCat(redis_port), "--bind", "127.0.0.1", "--save", "",
       "--appendonly", "no", "--dir", *dir, "--set-max-intset-entries", "4096"},
      {}, *dir + "/redis.log");
  if (redis == nullptr) {
    std::fprintf(stderr, "kvtier bench index: cannot start %s\n", redis_bin.c_str());
    return 1;
  }
  std::unique_ptr<Redis> loader;
  for (int i = 0; i < 200 && loader == nullptr; ++i) {
    loader = Redis::Connect(redis_port);
    if (loader != nullptr && !loader->Ping()) loader.reset();
    if (loader == nullptr) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  if (loader == nullptr) {
    std::fprintf(stderr, "kvtier bench index: redis-server did not start (%s; see %s/redis.log)\n",
                 redis_bin.c_str(), dir->c_str());
    return 1;
  }
  const uint64_t redis_mem0 = loader->UsedMemory();
  const auto rload0 = Clock::now();
  {
    // One SADD per (chain, chunk) with every holder of that chain as members
    // (keys of a shared prefix get one SADD per chain of their group).
    std::vector<std::vector<int>> holders_of(pool);
    for (int n = 0; n < nodes; ++n) {
      for (int c : w.node_chains[n]) holders_of[c].push_back(n);
    }
    size_t pending = 0;
    std::vector<std::string> args;
    std::vector<const char*> argv;
    std::vector<size_t> argl;
    for (int c = 0; c < pool; ++c) {
      if (holders_of[c].empty()) continue;
      for (int i = 0; i < chain; ++i) {
        args.assign({"SADD", RedisKey(w.Key(c, i))});
        for (int n : holders_of[c]) {
          args.push_back(
              absl::StrCat((uint32_t(n) << 3) | static_cast<uint32_t>(Workload::TierOf(n, c, i))));
        }
        argv.clear();
        argl.clear();
        for (const std::string& a : args) {
          argv.push_back(a.data());
          argl.push_back(a.size());
        }
        redisAppendCommandArgv(loader->ctx(), static_cast<int>(argv.size()), argv.data(),
                               argl.data());
        if (++pending == 1024) {
          if (!loader->Drain(pending)) {
            std::fprintf(stderr, "kvtier bench index: redis SADD failed\n");
            return 1;
          }
          pending = 0;
        }
      }
    }
    if (!loader->Drain(pending)) return 1;
  }
  const double rload_s = std::chrono::duration<double>(Clock::now() - rload0).count();
  const uint64_t redis_mem = loader->UsedMemory() - std::min(loader->UsedMemory(), redis_mem0);
  log(absl::StrCat("redis: loaded in ", Fixed(rload_s, 1), " s, ", HumanBytes(redis_mem)));

  // ---- the lookups: a chain some node holds
  auto pick_chain = [&](std::mt19937& rng) {
    const int n = static_cast<int>(rng() % nodes);
    const std::vector<int>& cs = w.node_chains[n];
    return cs[rng() % cs.size()];
  };
  std::vector<v1::IndexLookupRequest> requests(pool);
  std::vector<std::vector<std::string>> redis_keys(pool);
  for (int c = 0; c < pool; ++c) {
    requests[c].set_namespace_id(kNs);
    for (const BlockKey& k : w.Chain(c)) {
      requests[c].add_keys(wire::KeyToBytes(k));
      redis_keys[c].push_back(RedisKey(k));
    }
  }
  std::vector<std::unique_ptr<v1::Index::Stub>> stubs;
  std::vector<std::unique_ptr<Redis>> rconns;
  for (int t = 0; t < clients; ++t) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // one connection per client
    stubs.push_back(v1::Index::NewStub(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", grpc_port), grpc::InsecureChannelCredentials(), args)));
    rconns.push_back(Redis::Connect(redis_port));
    if (rconns.back() == nullptr) return 1;
  }

  // Both sides agree on the answer.
  {
    std::mt19937 rng(9);
    for (int i = 0; i < 20; ++i) {
      const int c = pick_chain(rng);
      Answer ra;
      if (!rconns[0]->Lookup(redis_keys[c], &ra)) return 1;
      std::vector<index::NodeMatchResult> ia = (*index)->Lookup(kNs, w.Chain(c), {}, absl::Now());
      Answer ib;
      for (const auto& m : ia) ib.push_back({m.node, m.matched});
      std::sort(ib.begin(), ib.end());
      std::sort(ra.begin(), ra.end());
      if (ra != ib) {
        std::fprintf(stderr, "kvtier bench index: redis and the index disagree on chain %d\n", c);
        return 1;
      }
    }
  }

  auto index_rpc = [&](int t, std::mt19937& rng) {
    grpc::ClientContext ctx;
    v1::IndexLookupResponse resp;
    return stubs[t]->Lookup(&ctx, requests[pick_chain(rng)], &resp).ok() && resp.nodes_size() > 0;
  };
  auto redis_lookup = [&](int t, std::mt19937& rng) {
    Answer a;
    return rconns[t]->Lookup(redis_keys[pick_chain(rng)], &a) && !a.empty();
  };
  std::vector<std::vector<BlockKey>> chains(pool);
  for (int c = 0; c < pool; ++c) chains[c] = w.Chain(c);
  auto index_local = [&](int, std::mt19937& rng) {
    return !(*index)->Lookup(kNs, chains[pick_chain(rng)], {}, absl::Now()).empty();
  };
  std::vector<double> iq, rq, lq, ratio_qps, ip50, ip99, rp50, rp99, lp50, lp99;
  for (int rep = 0; rep < reps; ++rep) {
    // Alternate which side goes first.
    RunResult a, b;
    if (rep % 2 == 0) {
      a = Timed(clients, seconds, index_rpc);
      b = Timed(clients, seconds, redis_lookup);
    } else {
      b = Timed(clients, seconds, redis_lookup);
      a = Timed(clients, seconds, index_rpc);
    }
    RunResult l = Timed(clients, seconds / 2, index_local);
    if (!a.ok || !b.ok || !l.ok) {
      std::fprintf(stderr, "kvtier bench index: a lookup failed\n");
      return 1;
    }
    iq.push_back(a.qps);
    rq.push_back(b.qps);
    lq.push_back(l.qps);
    ratio_qps.push_back(a.qps / b.qps);
    ip50.push_back(Percentile(a.lat_us, 50));
    ip99.push_back(Percentile(a.lat_us, 99));
    rp50.push_back(Percentile(b.lat_us, 50));
    rp99.push_back(Percentile(b.lat_us, 99));
    lp50.push_back(Percentile(l.lat_us, 50));
    lp99.push_back(Percentile(l.lat_us, 99));
    log(absl::StrCat("rep ", rep + 1, ": index ", Fixed(a.qps, 0), " QPS, redis ", Fixed(b.qps, 0),
                     " QPS"));
  }
  // Holders per lookup (what a router receives).
  double holders = 0;
  {
    std::mt19937 rng(5);
    for (int i = 0; i < 200; ++i) {
      holders += double((*index)->Lookup(kNs, chains[pick_chain(rng)], {}, absl::Now()).size());
    }
    holders /= 200;
  }

  // ---- event ingest: EventBatch decode + apply into a fresh index
  double ingest_keys_per_s = 0;
  {
    auto fresh = index::ClusterIndex::Create(io);
    index::EventIngest in(fresh->get());
    v1::NodeHeartbeat hb;
    std::vector<std::string> batches;
    const int ingest_nodes = std::min(nodes, 100);
    uint64_t keys = 0;
    for (int n = 0; n < ingest_nodes; ++n) {
      uint64_t seq = 0;
      v1::EventBatch b;
      for (int c : w.node_chains[n]) {
        if (b.events_size() == 0) {
          b.set_node_id(NodeId(n));
          b.set_incarnation(1);
          b.set_namespace_id(kNs);
          b.add_events()->mutable_stored()->set_tier(v1::TIER_DRAM);
        }
        for (const BlockKey& k : w.Chain(c)) {
          b.mutable_events(0)->mutable_stored()->add_keys(wire::KeyToBytes(k));
          ++keys;
        }
        if (b.events(0).stored().keys_size() >= 1024) {
          b.set_sequence(++seq);
          batches.push_back(b.SerializeAsString());
          b.Clear();
        }
      }
      if (b.events_size() > 0) {
        b.set_sequence(++seq);
        batches.push_back(b.SerializeAsString());
      }
    }
    const std::string subject = index::EventSubject(kNs);
    const auto t0 = Clock::now();
    for (const std::string& b : batches) {
      if (!in.ApplyEventBatch(subject, b).ok()) return 1;
    }
    ingest_keys_per_s = double(keys) / std::chrono::duration<double>(Clock::now() - t0).count();
  }

  const double index_bpe = double(index_mem) / double(ist.entries);
  const double rss_bpe = double(rss_delta) / double(ist.entries);
  const double redis_bpe = double(redis_mem) / double(ist.entries);
  const double qps_ratio = Median(ratio_qps);
  if (json) {
    Json j = Json::Object();
    j.Set("suite", "index")
        .Set("reference", "redis-server (pipelined SMEMBERS per chain)")
        .Set("nodes", nodes)
        .Set("chunks_per_node", static_cast<int64_t>(per_node))
        .Set("chain_chunks", chain)
        .Set("pool_chains", pool)
        .Set("shared_prefix_chunks", shared)
        .Set("prefix_groups", groups)
        .Set("clients", clients)
        .Set("keys", ist.keys)
        .Set("entries", ist.entries)
        .Set("holders_per_lookup", holders)
        .Set("load", Json::Object().Set("index_seconds", load_s).Set("redis_seconds", rload_s))
        .Set("memory", Json::Object()
                           .Set("index_bytes", index_mem)
                           .Set("index_bytes_per_entry", index_bpe)
                           .Set("index_rss_bytes_per_entry", rss_bpe)
                           .Set("redis_bytes", redis_mem)
                           .Set("redis_bytes_per_entry", redis_bpe))
        .Set("results", Json::Array()
                            .Push(Json::Object()
                                      .Set("what", "index Lookup over gRPC")
                                      .Set("qps", Median(iq))
                                      .Set("p50_us", Median(ip50))
                                      .Set("p99_us", Median(ip99)))
                            .Push(Json::Object()
                                      .Set("what", "redis pipelined SMEMBERS")
                                      .Set("qps", Median(rq))
                                      .Set("p50_us", Median(rp50))
                                      .Set("p99_us", Median(rp99)))
                            .Push(Json::Object()
                                      .Set("what", "index Lookup in process")
                                      .Set("qps", Median(lq))
                                      .Set("p50_us", Median(lp50))
                                      .Set("p99_us", Median(lp99))))
        .Set("ingest_keys_per_second", ingest_keys_per_s)
        .Set("ratios", Json::Object()
                           .Set("qps_vs_redis", qps_ratio)
                           .Set("p99_vs_redis", Median(ip99) / Median(rp99)))
        .Set("targets", Json::Object().Set("qps_vs_redis", 2.0).Set("p99_vs_redis", 1.0));
    std::printf("%s\n", j.Dump().c_str());
  } else {
    std::printf(
        "kvtier bench index: %d nodes x %lld chunks (%d-chunk chains from a pool of %d, "
        "%d-chunk shared prefixes in %d groups), %llu keys, %llu (key, node) entries, %d "
        "clients, %d reps of %.1f s (median)\n\n",
        nodes, static_cast<long long>(per_node), chain, pool, shared, groups,
        static_cast<unsigned long long>(ist.keys), static_cast<unsigned long long>(ist.entries),
        clients, reps, seconds);
    Table t({"lookup of a chain", "QPS", "p50", "p99"});
    t.AddRow({"index (gRPC, loopback)", Fixed(Median(iq), 0),
              absl::StrCat(Fixed(Median(ip50), 1), " us"),
              absl::StrCat(Fixed(Median(ip99), 1), " us")});
    t.AddRow({"redis (pipelined SMEMBERS)", Fixed(Median(rq), 0),
              absl::StrCat(Fixed(Median(rp50), 1), " us"),
              absl::StrCat(Fixed(Median(rp99), 1), " us")});
    t.AddRow({"index (in process)", Fixed(Median(lq), 0),
              absl::StrCat(Fixed(Median(lp50), 1), " us"),
              absl::StrCat(Fixed(Median(lp99), 1), " us")});
    t.Print();
    std::printf(
        "\n%.1f holders per answer. Memory per (key, node) entry: index %.1f B "
        "(estimate; RSS %.1f B), redis %.1f B. Ingest: %.2f M keys/s.\n",
        holders, index_bpe, rss_bpe, redis_bpe, ingest_keys_per_s / 1e6);
    std::printf("\ntargets: QPS >= 2.00x redis (%.2fx); p99 below redis (%.2fx)\n", qps_ratio,
                Median(ip99) / Median(rp99));
  }
  return 0;
}

}  // namespace kvtier::cli
