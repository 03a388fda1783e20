// The cluster index end to end: a real nats-server with JetStream, three
// kvtierd processes publishing their chunk events, two kvtier-index
// replicas, a router's Lookup on both, removal, node death, an index
// restart that rebuilds from the stream, malformed events, a synthetic vLLM
// publisher over ZMQ, the index-backed HolderSource, and a kvtierd that reads
// over UCX the chunks the index says another node holds.
#include <signal.h>
#include <zmq.h>

#define MSGPACK_NO_BOOST 1
#include <msgpack.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "kvtier/client.h"
#include "kvtier/namespace.h"
#include "kvtier/v1/events.pb.h"
#include "kvtier/v1/index.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "src/index/event_ingest.h"
#include "src/index/event_publisher.h"
#include "src/index/index_holder_source.h"
#include "src/index/nats_bus.h"
#include "src/server/wire.h"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/nats_harness.h"
#include "tests/integration/workload.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::testing {
namespace {

std::string IndexBinary() { return KVTIER_INDEX_BIN; }

// A kvtier-index replica.
class IndexReplica {
 public:
  static absl::StatusOr<std::unique_ptr<IndexReplica>> Start(const TempDir& dir,
                                                             const std::string& nats,
                                                             const std::string& name,
                                                             std::vector<std::string> extra = {}) {
    auto r = std::unique_ptr<IndexReplica>(new IndexReplica());
    r->grpc_port_ = FreePort();
    r->http_port_ = FreePort();
    const int http_port = r->http_port_;
    std::vector<std::string> argv = {IndexBinary(),
                                     "--nats",
                                     nats,
                                     "--grpc",
                                     absl::StrCat("127.0.0.1:", r->grpc_port_),
                                     "--http",
                                     absl::StrCat("127.0.0.1:", http_port),
                                     "--node-timeout",
                                     "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    absl::StatusOr<std::unique_ptr<Process>> p = Process::Start(argv, dir.File(name + ".log"));
    if (!p.ok()) return p.status();
    r->process_ = std::move(*p);
    r->stub_ = v1::Index::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", r->grpc_port_),
                                                      grpc::InsecureChannelCredentials()));
    const absl::Time deadline = absl::Now() + absl::Seconds(15);
    while (absl::Now() < deadline) {
      absl::StatusOr<v1::IndexStatsResponse> s = r->Stats();
      if (s.ok() && s->ready()) return r;
      if (!r->process_->Running()) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return absl::DeadlineExceededError("kvtier-index did not get ready: " + r->process_->Log());
  }
  absl::StatusOr<v1::IndexStatsResponse> Stats() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::IndexStatsResponse resp;
    grpc::Status s = stub_->Stats(&ctx, v1::IndexStatsRequest(), &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return resp;
  }
  absl::StatusOr<v1::IndexLookupResponse> Lookup(const v1::IndexLookupRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::IndexLookupResponse resp;
    grpc::Status s = stub_->Lookup(&ctx, req, &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return resp;
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }
  int http_port() const { return http_port_; }
  Process& process() { return *process_; }

 private:
  IndexReplica() = default;
  int grpc_port_ = 0;
  int http_port_ = 0;
  std::unique_ptr<Process> process_;
  std::unique_ptr<v1::Index::Stub> stub_;
};

// node id -> matched chunks, from a Lookup answer.
std::map<std::string, uint32_t> Matches(const v1::IndexLookupResponse& r) {
  std::map<std::string, uint32_t> m;
  for (const v1::NodeMatch& n : r.nodes()) m[n.node_id()] = n.matched_chunks();
  return m;
}

// Polls `lookup` on `replica` until `want` (or 10 s pass); returns the last answer.
std::map<std::string, uint32_t> WaitFor(IndexReplica& replica, const v1::IndexLookupRequest& req,
                                        const std::map<std::string, uint32_t>& want) {
  std::map<std::string, uint32_t> got;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::IndexLookupResponse> r = replica.Lookup(req);
    if (r.ok()) {
      got = Matches(*r);
      if (got == want) return got;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return got;
}

std::string ClusterYaml(const TempDir& dir, const std::string& name, int fake_port) {
  return dir.Write(name + ".yaml", absl::StrCat("cluster:\n"
                                                "  publish_interval_ms: 10\n"
                                                "  heartbeat_interval_ms: 200\n"
                                                "  advertise_grpc: 127.0.0.1:",
                                                fake_port, "\n"));
}

TEST(ClusterIndex, SavesRemovalsDeathRestartAndHolders) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> nats, NatsServer::Start(dir));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<IndexReplica> a, IndexReplica::Start(dir, nats->url(), "a"));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<IndexReplica> b, IndexReplica::Start(dir, nats->url(), "b"));

  TempDir d1, d2, d3;
  std::vector<std::unique_ptr<Daemon>> nodes;
  const TempDir* dirs[] = {&d1, &d2, &d3};
  for (int i = 0; i < 3; ++i) {
    const std::string id = absl::StrCat("node", i + 1);
    ASSERT_OK_AND_ASSIGN(
        std::unique_ptr<Daemon> d,
        Daemon::Start(*dirs[i], {"--config", ClusterYaml(*dirs[i], id, 17001 + i), "--node-id", id,
                                 "--nats", nats->url(), "--nvme", "off", "--dram", "64MiB"}));
    nodes.push_back(std::move(d));
  }
  auto open = [](Daemon& d) {
    CacheConfig c;
    c.mode = "daemon";
    c.daemon.socket_path = d.socket();
    return OpenCache(c);
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cache> c1, open(*nodes[0]));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cache> c2, open(*nodes[1]));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  const std::vector<TokenId> tokens = ChainTokens(0, 0, 4, 0, ns.tokens_per_chunk());
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(tokens));
  ASSERT_EQ(chunks.size(), 4u);
  std::vector<std::byte> payload(ns.FullChunkPayloadBytes());
  for (size_t i = 0; i < chunks.size(); ++i) {
    KeyedBytes(chunks[i].key, payload.data(), payload.size());
    ASSERT_OK(c1->Save(ns, chunks[i], payload));
    if (i < 2) ASSERT_OK(c2->Save(ns, chunks[i], payload));
  }

  // A router asks both replicas with the prompt's token ids.
  v1::IndexLookupRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  for (TokenId t : tokens) req.add_token_ids(t);
  const std::map<std::string, uint32_t> saved = {{"node1", 4}, {"node2", 2}};
  EXPECT_EQ(WaitFor(*a, req, saved), saved);
  EXPECT_EQ(WaitFor(*b, req, saved), saved);
  {
    ASSERT_OK_AND_ASSIGN(v1::IndexLookupResponse r, a->Lookup(req));
    ASSERT_EQ(r.nodes_size(), 2);
    EXPECT_EQ(r.chain_chunks(), 4u);
    EXPECT_EQ(r.nodes(0).matched_tokens(), 4u * ns.tokens_per_chunk());
    ASSERT_EQ(r.nodes(0).tier_mix_size(), 1);
    EXPECT_EQ(r.nodes(0).tier_mix(0).tier(), v1::TIER_DRAM);
    EXPECT_EQ(r.nodes(0).grpc_address(), "127.0.0.1:17001");
    EXPECT_EQ(r.keys_size(), 4);
  }

  // Evict on node1 (the third chunk and, in DRAM, its descendants).
  ASSERT_OK(c1->Remove(ns, chunks[2].key).status());
  const std::map<std::string, uint32_t> removed = {{"node1", 2}, {"node2", 2}};
  EXPECT_EQ(WaitFor(*a, req, removed), removed);
  EXPECT_EQ(WaitFor(*b, req, removed), removed);

  // The index-backed HolderSource, as node3 would use it.
  {
    index::IndexHolderSourceOptions ho;
    ho.index_addresses = {"127.0.0.1:1", b->address()};  // a dead replica first
    ho.self_node_id = "node3";
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<index::IndexHolderSource> hs,
                         index::IndexHolderSource::Create(ho));
    const std::vector<BlockKey> keys = Namespace::Keys(chunks);
    ASSERT_OK_AND_ASSIGN(std::vector<transfer::RemoteHolder> h,
                         hs->FindHolders(ns.id(), keys, absl::Now() + absl::Seconds(3)));
    ASSERT_EQ(h.size(), 2u);
    EXPECT_EQ(h[0].node_id, "node1");
    EXPECT_EQ(h[0].peer_address, "127.0.0.1:17001");
    EXPECT_EQ(h[0].matched_chunks, 2u);
    EXPECT_THAT(h[0].tiers, ::testing::ElementsAre(Tier::kDram, Tier::kDram));
    EXPECT_EQ(h[1].node_id, "node2");
    EXPECT_EQ(h[1].peer_address, "127.0.0.1:17002");
    // The node itself is never listed.
    ho.self_node_id = "node1";
    ASSERT_OK_AND_ASSIGN(hs, index::IndexHolderSource::Create(ho));
    ASSERT_OK_AND_ASSIGN(h, hs->FindHolders(ns.id(), keys, absl::Now() + absl::Seconds(3)));
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].node_id, "node2");
    EXPECT_THAT(hs->FindHolders(ns.id(), keys, absl::Now() - absl::Seconds(1)).status(),
                StatusIs(absl::StatusCode::kDeadlineExceeded));
  }

  // node2 dies without a word: its heartbeats stop.
  c2.reset();
  nodes[1]->process().Signal(SIGKILL);
  const std::map<std::string, uint32_t> dead = {{"node1", 2}};
  EXPECT_EQ(WaitFor(*a, req, dead), dead);
  EXPECT_EQ(WaitFor(*b, req, dead), dead);

  // Malformed events on the stream are counted and dropped by both replicas.
  {
    index::NatsBusOptions o;
    o.url = nats->url();
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<index::NatsBus> bus, index::NatsBus::Connect(o));
    ASSERT_OK(bus->Publish(index::EventSubject(ns.id()), "not a protobuf \xff\xff"));
    v1::EventBatch wrong_ns;
    wrong_ns.set_node_id("node9");
    wrong_ns.set_incarnation(1);
    wrong_ns.set_sequence(1);
    wrong_ns.set_namespace_id(ns.id() + 1);
    ASSERT_OK(bus->Publish(index::EventSubject(ns.id()), wrong_ns.SerializeAsString()));
    ASSERT_OK(bus->Flush(absl::Seconds(2)));
  }
  for (IndexReplica* r : {a.get(), b.get()}) {
    uint64_t malformed = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (absl::Now() < deadline && malformed < 2) {
      absl::StatusOr<v1::IndexStatsResponse> s = r->Stats();
      if (s.ok()) malformed = s->malformed();
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_EQ(malformed, 2u);
  }

  // Replica a restarts and rebuilds its map from JetStream.
  a->process().Signal(SIGTERM);
  ASSERT_OK(a->process().Wait(absl::Seconds(10)).status());
  a.reset();
  ASSERT_OK_AND_ASSIGN(a, IndexReplica::Start(dir, nats->url(), "a2"));
  EXPECT_EQ(WaitFor(*a, req, dead), dead);
  ASSERT_OK_AND_ASSIGN(v1::IndexStatsResponse st, a->Stats());
  EXPECT_EQ(st.malformed(), 2u);  // replayed too
  EXPECT_GT(st.batches(), 0u);
  EXPECT_GT(st.memory_bytes(), 0u);
}

// Frames as vLLM's ZmqEventPublisher sends them: topic, 8-byte big-endian
// sequence, msgpack KVEventBatch.
void SendVllm(void* sock, uint64_t seq,
              const std::function<void(msgpack::packer<msgpack::sbuffer>&)>& events, uint32_t n) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_array(2);
  pk.pack_double(static_cast<double>(absl::ToUnixMicros(absl::Now())) / 1e6);
  pk.pack_array(n);
  events(pk);
  std::string seq_bytes(8, '\0');
  for (int i = 0; i < 8; ++i) seq_bytes[i] = static_cast<char>(seq >> (56 - 8 * i));
  zmq_send(sock, "kv-events", 9, ZMQ_SNDMORE);
  zmq_send(sock, seq_bytes.data(), 8, ZMQ_SNDMORE);
  zmq_send(sock, buf.data(), buf.size(), 0);
}

TEST(ClusterIndex, IngestsVllmEventsOverZmq) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> nats, NatsServer::Start(dir));
  const int port = FreePort();
  const std::string endpoint = absl::StrCat("tcp://127.0.0.1:", port);
  void* ctx = zmq_ctx_new();
  void* pub = zmq_socket(ctx, ZMQ_PUB);
  ASSERT_EQ(zmq_bind(pub, endpoint.c_str()), 0);
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<IndexReplica> idx,
      IndexReplica::Start(dir, nats->url(), "vllm-index", {"--zmq", "gpu-node-1=" + endpoint}));
  auto stored = [](auto& pk) {
    pk.pack_array(7);
    pk.pack(std::string("BlockStored"));
    pk.pack(std::vector<int64_t>{101, 102, 103});
    pk.pack_nil();
    pk.pack(std::vector<int>(48, 7));
    pk.pack(16);
    pk.pack_nil();
    pk.pack(std::string("GPU"));
  };
  v1::IndexLookupRequest req;
  for (int64_t h : {101, 102, 103}) req.add_vllm_block_hashes(index::VllmIntHashBytes(h));
  req.set_tokens_per_key(16);
  // PUB drops messages until the subscription arrives: resend until seen.
  std::map<std::string, uint32_t> got;
  const std::map<std::string, uint32_t> want = {{"gpu-node-1", 3}};
  uint64_t seq = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline && got != want) {
    SendVllm(pub, ++seq, stored, 1);
    absl::SleepFor(absl::Milliseconds(100));
    absl::StatusOr<v1::IndexLookupResponse> r = idx->Lookup(req);
    if (r.ok()) got = Matches(*r);
  }
  ASSERT_EQ(got, want);
  {
    ASSERT_OK_AND_ASSIGN(v1::IndexLookupResponse r, idx->Lookup(req));
    EXPECT_EQ(r.nodes(0).matched_tokens(), 48u);
    ASSERT_EQ(r.nodes(0).tier_mix_size(), 1);
    EXPECT_EQ(r.nodes(0).tier_mix(0).tier(), v1::TIER_GPU);
  }
  SendVllm(
      pub, ++seq,
      [](auto& pk) {
        pk.pack_array(3);
        pk.pack(std::string("BlockRemoved"));
        pk.pack(std::vector<int64_t>{103});
        pk.pack(std::string("GPU"));
      },
      1);
  const std::map<std::string, uint32_t> after_remove = {{"gpu-node-1", 2}};
  EXPECT_EQ(WaitFor(*idx, req, after_remove), after_remove);
  // A malformed message (two frames) and a bad payload are counted.
  zmq_send(pub, "kv-events", 9, ZMQ_SNDMORE);
  zmq_send(pub, "x", 1, 0);
  zmq_send(pub, "kv-events", 9, ZMQ_SNDMORE);
  zmq_send(pub, "\0\0\0\0\0\0\0\x63", 8, ZMQ_SNDMORE);
  zmq_send(pub, "\xc1", 1, 0);
  SendVllm(
      pub, ++seq,
      [](auto& pk) {
        pk.pack_array(1);
        pk.pack(std::string("AllBlocksCleared"));
      },
      1);
  EXPECT_EQ(WaitFor(*idx, req, {}), (std::map<std::string, uint32_t>{}));
  ASSERT_OK_AND_ASSIGN(v1::IndexStatsResponse st, idx->Stats());
  EXPECT_EQ(st.malformed(), 2u);
  EXPECT_GE(st.vllm_batches(), 3u);

  // The status page shows the same figures as the Stats RPC (nothing moves
  // now: the publisher is quiet and no Lookup runs in between). The page
  // samples once a second: wait for a sample taken after the last change.
  ASSERT_OK_AND_ASSIGN(v1::IndexStatsResponse st2, idx->Stats());
  nlohmann::json doc;
  std::string body;
  const absl::Time page_deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < page_deadline) {
    ASSERT_OK_AND_ASSIGN(auto status, HttpGet(idx->http_port(), "/api/v1/status"));
    ASSERT_EQ(status.first, 200) << status.second;
    body = status.second;
    doc = nlohmann::json::parse(body);
    const nlohmann::json& c = doc.at("counters");
    if (c.contains("events") && c.at("events").get<uint64_t>() == st2.events() &&
        c.at("lookups").get<uint64_t>() == st2.lookups()) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(doc.at("service"), "kvtier-index");
  const nlohmann::json& c = doc.at("counters");
  EXPECT_EQ(c.at("keys").get<uint64_t>(), st2.keys());
  EXPECT_EQ(c.at("entries").get<uint64_t>(), st2.entries());
  EXPECT_EQ(c.at("max_entries").get<uint64_t>(), st2.max_entries());
  EXPECT_EQ(c.at("lookups").get<uint64_t>(), st2.lookups());
  EXPECT_EQ(doc.at("totals").at("lookups").get<uint64_t>(), st2.lookups());
  EXPECT_EQ(c.at("events").get<uint64_t>(), st2.events());
  EXPECT_EQ(c.at("batches").get<uint64_t>(), st2.batches());
  EXPECT_EQ(c.at("malformed").get<uint64_t>(), 2u);
  EXPECT_EQ(c.at("vllm_batches").get<uint64_t>(), st2.vllm_batches());
  EXPECT_GE(c.at("vllm_messages").get<uint64_t>(), st2.vllm_batches());
  EXPECT_EQ(c.at("vllm_nodes").get<uint64_t>(), 1u);
  EXPECT_GT(st2.lookups(), 0u);
  // The vLLM endpoint is a live node; Lookup latency is charted.
  ASSERT_EQ(doc.at("peers").size(), 1u) << body;
  EXPECT_EQ(doc.at("peers")[0].at("name"), "gpu-node-1");
  EXPECT_EQ(doc.at("peers")[0].at("up"), true);
  EXPECT_EQ(doc.at("peers")[0].at("transport"), "zmq");
  EXPECT_EQ(doc.at("totals").at("requests_by_code").at("OK").get<uint64_t>(), st2.lookups())
      << body;
  ASSERT_OK_AND_ASSIGN(auto page, HttpGet(idx->http_port(), "/"));
  EXPECT_EQ(page.first, 200);
  EXPECT_NE(page.second.find("/api/v1/status"), std::string::npos);
  EXPECT_EQ(doc.at("title"), "kvtier-index");
  zmq_close(pub);
  zmq_ctx_term(ctx);
}

// A kvtierd whose Lookup misses locally asks the cluster index, reports the
// holder, and reads the chunks from it over UCX.
TEST(ClusterIndex, KvtierdReadsWhatTheIndexSaysAnotherNodeHolds) {
  setenv("UCX_TLS", "tcp", 1);
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NatsServer> nats, NatsServer::Start(dir));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<IndexReplica> index,
                       IndexReplica::Start(dir, nats->url(), "index"));
  constexpr const char* kAdmin = "cluster-test-admin-token-0123456789";
  TempDir da, db;
  auto start = [&](const TempDir& d, const std::string& id, std::vector<std::string> extra) {
    std::vector<std::string> flags = {
        "--config",
        d.Write(id + ".yaml",
                "cluster:\n  publish_interval_ms: 10\n  heartbeat_interval_ms: 200\n"),
        "--node-id",
        id,
        "--nats",
        nats->url(),
        "--tcp",
        absl::StrCat("127.0.0.1:", FreePort()),
        "--ucx",
        "true",
        "--admin-token-file",
        d.Write("admin.token", kAdmin),
        "--peer-token-file",
        d.Write("peer.token", "cluster-test-peer-token-0123456789"),
        "--nvme",
        "off",
        "--dram",
        "64MiB"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    return Daemon::Start(d, flags);
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Daemon> a, start(da, "holder", {}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Daemon> b,
                       start(db, "reader", {"--index-address", index->address()}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> ca, ConnectOverSocket(a->socket(), kAdmin));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> cb, ConnectOverSocket(b->socket(), kAdmin));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  const std::vector<TokenId> tokens = ChainTokens(5, 5, 4, 0, ns.tokens_per_chunk());
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(tokens));
  ASSERT_OK(SaveKeyed(*ca, ns, chunks));
  v1::IndexLookupRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  for (TokenId t : tokens) req.add_token_ids(t);
  const std::map<std::string, uint32_t> held = {{"holder", 4}};
  ASSERT_EQ(WaitFor(*index, req, held), held);

  const std::vector<BlockKey> keys = Namespace::Keys(chunks);
  ASSERT_OK_AND_ASSIGN(LookupResult found, cb->Lookup(ns, keys));
  ASSERT_EQ(found.matched, 4u);
  for (const ChunkLocation& l : found.chunks) {
    EXPECT_EQ(l.tier, Tier::kRemote);
    EXPECT_EQ(l.holder, "holder");
  }
  ASSERT_OK(CheckKeyedLoads(*cb, ns, chunks));
  ASSERT_OK_AND_ASSIGN(found, cb->Lookup(ns, keys));
  for (const ChunkLocation& l : found.chunks) EXPECT_EQ(l.tier, Tier::kDram) << "pulled in";
  unsetenv("UCX_TLS");
}

}  // namespace
}  // namespace kvtier::testing
