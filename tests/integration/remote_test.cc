// Node-to-node reads between real kvtierd processes: chunks saved on one
// node are found by Lookup on another and loaded byte-identical, over UCX on
// TCP and on shared memory, across network namespaces, with a holder killed
// mid-transfer and a holder restarted with new keys.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/client.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/workload.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::testing {
namespace {

using ::testing::HasSubstr;

// kvtierd refuses TCP without tokens; every node has this admin token.
constexpr const char* kAdmin = "remote-test-admin-token-0123456789";
constexpr const char* kPeerToken = "remote-test-peer-token-0123456789";

std::unique_ptr<Client> Connect(const std::string& socket, bool shared_memory = false) {
  ClientOptions o;
  o.socket_path = socket;
  o.token = kAdmin;
  o.shared_memory = shared_memory;
  o.rpc_timeout_ms = 10000;
  auto c = Client::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

std::vector<std::byte> Payload(const BlockKey& key, size_t n) {
  std::vector<std::byte> p(n);
  KeyedBytes(key, p.data(), n);
  return p;
}

std::vector<ChunkRef> SaveChain(Client& client, const Namespace& ns, int chunks, int seed) {
  std::vector<TokenId> tokens = ChainTokens(seed, seed, chunks, 0, ns.options().tokens_per_chunk);
  std::vector<ChunkRef> refs = *ns.Chunks(tokens);
  std::vector<std::vector<std::byte>> payloads;
  std::vector<absl::Span<const std::byte>> spans;
  for (const ChunkRef& r : refs) payloads.push_back(Payload(r.key, ns.PayloadBytes(r.num_tokens)));
  for (auto& p : payloads) spans.push_back(p);
  auto results = client.SaveBatch(ns, refs, spans);
  EXPECT_TRUE(results.ok()) << results.status();
  return refs;
}

// A kvtierd with node-to-node transfer on, in its own folder.
struct Node {
  std::unique_ptr<TempDir> dir = std::make_unique<TempDir>();
  int port = 0;
  std::unique_ptr<Daemon> daemon;
  std::string peer_token = kPeerToken;  // the peer token file's text
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
};

absl::Status StartNodeOnce(Node& n, const std::string& id, const std::vector<std::string>& peers,
                           const std::vector<std::string>& more_flags);

absl::Status StartNode(Node& n, const std::string& id, const std::vector<std::string>& peers,
                       const std::vector<std::string>& more_flags = {}) {
  const bool picked = n.port == 0;
  for (int attempt = 1;; ++attempt) {
    if (picked) n.port = FreePort();
    absl::Status s = StartNodeOnce(n, id, peers, more_flags);
    // A port picked free may be taken by a test beside this one first.
    if (s.ok() || !picked || attempt == 3 || !absl::StrContains(s.message(), "in use")) {
      return s;
    }
  }
}

absl::Status StartNodeOnce(Node& n, const std::string& id, const std::vector<std::string>& peers,
                           const std::vector<std::string>& more_flags) {
  std::vector<std::string> flags = {"--tcp",
                                    n.address(),
                                    "--ucx",
                                    "true",
                                    "--node-id",
                                    id,
                                    "--nvme",
                                    "off",
                                    "--dram",
                                    "128MiB",
                                    "--huge-pages",
                                    "false",
                                    "--ucx-transfer-timeout-ms",
                                    "3000",
                                    "--ucx-lookup-timeout-ms",
                                    "500"};
  flags.push_back("--admin-token-file");
  flags.push_back(n.dir->Write("admin.token", kAdmin));
  flags.push_back("--peer-token-file");
  flags.push_back(n.dir->Write("peer.token", n.peer_token));
  if (!peers.empty()) {
    flags.push_back("--peers");
    flags.push_back(absl::StrJoin(peers, ","));
  }
  flags.insert(flags.end(), more_flags.begin(), more_flags.end());
  absl::StatusOr<std::unique_ptr<Daemon>> d =
      Daemon::Start(*n.dir, flags, absl::StrCat("kvtierd-", id, ".log"));
  if (!d.ok()) return d.status();
  n.daemon = std::move(*d);
  return absl::OkStatus();
}

// Every key of `refs` loads through `client` byte-identical to what was saved.
void ExpectLoads(Client& client, const Namespace& ns, const std::vector<ChunkRef>& refs) {
  for (const ChunkRef& r : refs) {
    std::vector<std::byte> out(ns.PayloadBytes(r.num_tokens));
    absl::StatusOr<size_t> n = client.Load(ns, r.key, absl::MakeSpan(out));
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_EQ(*n, out.size());
    EXPECT_EQ(out, Payload(r.key, out.size()));
  }
}

// The peer at `address` in an /api/v1/status document; null when absent.
nlohmann::json FindStatusPeer(const std::string& doc, const std::string& address) {
  const nlohmann::json j = nlohmann::json::parse(doc);
  for (const nlohmann::json& p : j.at("peers")) {
    if (p.at("address") == address) return p;
  }
  return nullptr;
}

class RemoteTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { setenv("UCX_TLS", GetParam(), 1); }
  void TearDown() override { unsetenv("UCX_TLS"); }
};

TEST_P(RemoteTest, TwoNodesChunksSavedOnOneLoadOnTheOther) {
  Node a, b;
  ASSERT_OK(StartNode(a, "node-a", {}));
  b.port = FreePort();
  ASSERT_OK(StartNode(b, "node-b", {a.address()}));
  Namespace ns = *Namespace::Create(SmallNamespace());
  // A's client writes through the arena it maps from kvtierd's descriptor
  // (UCX's memory over shared memory, a memfd over TCP).
  auto ca = Connect(a.daemon->socket(), /*shared_memory=*/true);
  auto cb = Connect(b.daemon->socket());
  std::vector<ChunkRef> refs = SaveChain(*ca, ns, 8, 1);
  EXPECT_TRUE(ca->using_shared_memory());
  // B holds the first two chunks itself.
  SaveChain(*cb, ns, 2, 1);
  std::vector<BlockKey> keys = Namespace::Keys(refs);

  auto found = cb->Lookup(ns, keys);
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_EQ(found->matched, 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(found->chunks[i].tier, i < 2 ? Tier::kDram : Tier::kRemote) << i;
    EXPECT_EQ(found->chunks[i].holder, i < 2 ? "" : "node-a") << i;
  }
  ExpectLoads(*cb, ns, refs);
  // Pulled into B's DRAM: local now.
  auto again = cb->Lookup(ns, keys);
  ASSERT_TRUE(again.ok());
  for (const ChunkLocation& l : again->chunks) EXPECT_EQ(l.tier, Tier::kDram);
  auto metrics = b.daemon->HttpGet("/metrics");
  ASSERT_TRUE(metrics.ok());
  const std::string& mb = metrics->second;
  EXPECT_TRUE(absl::StrContains(mb, "kvtier_remote_fetches_total 6"));
  EXPECT_TRUE(absl::StrContains(mb, absl::StrCat("kvtier_peer_up{peer=\"", a.address(), "\"} 1")))
      << mb;
  // The status page (sampled once a second) lists A with what B read from it.
  nlohmann::json peer;
  const absl::Time page_deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < page_deadline) {
    auto page = b.daemon->HttpGet("/api/v1/status");
    ASSERT_TRUE(page.ok());
    peer = FindStatusPeer(page->second, a.address());
    if (!peer.is_null() && peer.at("bytes_received").get<uint64_t>() > 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_FALSE(peer.is_null());
  EXPECT_EQ(peer.at("name"), "node-a");
  EXPECT_EQ(peer.at("up"), true);
  // The UCX lanes of the open endpoint, as kvtier_remote_peer_info shows them.
  EXPECT_TRUE(absl::StrContains(peer.at("transport").get<std::string>(), "am=")) << peer.dump();
  EXPECT_GT(peer.at("bytes_received").get<uint64_t>(), 0u);
  EXPECT_TRUE(absl::StrContains(mb, "kvtier_remote_peer_info{node=\"node-a\""));
  // The transport UCX chose is visible.
  const std::string am = std::string(GetParam()) == "tcp" ? "am=tcp/lo" : "am=posix/memory";
  EXPECT_TRUE(absl::StrContains(mb, am)) << mb.substr(mb.find("kvtier_remote_peer_info"));
  // Over shared memory kvtierd's arena is UCX's (a file it shares with local
  // clients as it would a memfd), B maps A's and copies out of it; over TCP
  // the arena is a memfd registered with UCX.
  const bool shm = std::string(GetParam()) != "tcp";
  EXPECT_TRUE(absl::StrContains(mb, absl::StrCat("kvtier_ucx_arena_info{memory=\"",
                                                 shm ? "allocated" : "registered", "\"} 1")))
      << mb;
  EXPECT_EQ(absl::StrContains(mb, "transports=\"rma=mapped-shm"), shm) << mb;
  EXPECT_TRUE(absl::StrContains(mb, absl::StrCat("kvtier_ucx_direct_reads_total ", shm ? 6 : 0)))
      << mb;
  // A served them and released every lease (Release is asynchronous).
  std::string ma;
  for (int i = 0; i < 100; ++i) {
    auto m = a.daemon->HttpGet("/metrics");
    ASSERT_TRUE(m.ok());
    ma = m->second;
    if (absl::StrContains(ma, "kvtier_peer_leases 0")) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(absl::StrContains(ma, "kvtier_peer_pinned_chunks_total 6"));
  EXPECT_TRUE(absl::StrContains(ma, "kvtier_peer_leases 0"));
  // A chunk no node holds is a plain miss.
  std::vector<std::byte> out(ns.PayloadBytes(64));
  EXPECT_THAT(cb->Load(ns, BlockKey{77, 88}, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(RemoteTest, ThreeNodesLongestHolderWins) {
  Node a, b, c;
  a.port = FreePort();
  c.port = FreePort();
  ASSERT_OK(StartNode(a, "node-a", {c.address()}));
  ASSERT_OK(StartNode(c, "node-c", {a.address()}));
  ASSERT_OK(StartNode(b, "node-b", {a.address(), c.address()}));
  Namespace ns = *Namespace::Create(SmallNamespace());
  auto ca = Connect(a.daemon->socket());
  auto cc = Connect(c.daemon->socket());
  auto cb = Connect(b.daemon->socket());
  SaveChain(*ca, ns, 3, 2);
  std::vector<ChunkRef> refs = SaveChain(*cc, ns, 6, 2);
  auto found = cb->Lookup(ns, Namespace::Keys(refs));
  ASSERT_TRUE(found.ok());
  ASSERT_EQ(found->matched, 6u);
  for (const ChunkLocation& l : found->chunks) EXPECT_EQ(l.holder, "node-c");
  ExpectLoads(*cb, ns, refs);
  // A, whose peers include C, reads the tail it lacks from C.
  auto fa = ca->Lookup(ns, Namespace::Keys(refs));
  ASSERT_TRUE(fa.ok());
  ASSERT_EQ(fa->matched, 6u);
  EXPECT_EQ(fa->chunks[2].tier, Tier::kDram);
  EXPECT_EQ(fa->chunks[3].holder, "node-c");
  ExpectLoads(*ca, ns, refs);
}

TEST_P(RemoteTest, HolderKilledMidTransferGivesMissesNeverPartialChunks) {
  Node a, b;
  ASSERT_OK(StartNode(a, "node-a", {}));
  ASSERT_OK(StartNode(b, "node-b", {a.address()}));
  Namespace ns = *Namespace::Create(SmallNamespace());
  auto ca = Connect(a.daemon->socket());
  std::vector<ChunkRef> refs = SaveChain(*ca, ns, 400, 3);
  auto cb = Connect(b.daemon->socket());
  ASSERT_TRUE(cb->Lookup(ns, Namespace::Keys(refs)).ok());  // hints for every chunk

  std::atomic<int> loaded{0}, failed{0}, wrong{0};
  std::thread reader([&] {
    auto c = Connect(b.daemon->socket());
    for (const ChunkRef& r : refs) {
      std::vector<std::byte> out(ns.PayloadBytes(r.num_tokens));
      absl::StatusOr<size_t> n = c->Load(ns, r.key, absl::MakeSpan(out));
      if (n.ok()) {
        (out == Payload(r.key, out.size()) ? loaded : wrong)++;
      } else {
        // A miss; over shared memory (no dead-peer detection in UCX) the
        // first read after the death can also outlast the client's deadline.
        EXPECT_THAT(n.status().code(), ::testing::AnyOf(absl::StatusCode::kNotFound,
                                                        absl::StatusCode::kDeadlineExceeded))
            << n.status();
        failed++;
      }
    }
  });
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (loaded.load() < 20 && absl::Now() < until) absl::SleepFor(absl::Microseconds(200));
  // B reads from A: the peer is up. No ASSERT until the reader is joined.
  const std::string up_series = absl::StrCat("kvtier_peer_up{peer=\"", a.address(), "\"} ");
  auto before = b.daemon->HttpGet("/metrics");
  EXPECT_TRUE(before.ok() && absl::StrContains(before->second, up_series + "1"))
      << (before.ok() ? before->second : before.status().ToString());
  // Pins go as UCX calls over TCP and over shared memory (the holder's arena
  // is mapped here and its process watched).
  EXPECT_TRUE(before.ok() && !absl::StrContains(before->second, "kvtier_remote_ucx_pins_total 0\n"))
      << (before.ok() ? before->second : "");
  a.daemon->process().Signal(SIGKILL);
  reader.join();
  // The dead holder's endpoint (and a mapping of its arena) goes within
  // about a second, whatever B does next.
  const std::string peer_info = "kvtier_remote_peer_info{node=\"node-a\"";
  bool dropped = false;
  for (const absl::Time gone_by = absl::Now() + absl::Seconds(5); !dropped && absl::Now() < gone_by;
       absl::SleepFor(absl::Milliseconds(100))) {
    auto m = b.daemon->HttpGet("/metrics");
    dropped = m.ok() && !absl::StrContains(m->second, peer_info);
  }
  EXPECT_TRUE(dropped) << "node-a's endpoint was not dropped";
  // A Lookup contacts the (static) peer again, whether or not a read failed.
  EXPECT_TRUE(cb->Lookup(ns, Namespace::Keys(refs)).ok());
  auto after = b.daemon->HttpGet("/metrics");
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(absl::StrContains(after->second, up_series + "0")) << after->second;
  nlohmann::json peer_down;
  const absl::Time down_deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < down_deadline) {
    auto page = b.daemon->HttpGet("/api/v1/status");
    ASSERT_TRUE(page.ok());
    peer_down = FindStatusPeer(page->second, a.address());
    if (!peer_down.is_null() && peer_down.at("up") == false) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_FALSE(peer_down.is_null());
  EXPECT_EQ(peer_down.at("up"), false);
  EXPECT_GE(loaded.load(), 20);
  EXPECT_GT(failed.load(), 0) << "the holder died before any read failed";
  EXPECT_EQ(wrong.load(), 0);
  // B has every chunk whole or not at all, and still serves.
  int present = 0;
  for (const ChunkRef& r : refs) {
    std::vector<std::byte> out(ns.PayloadBytes(r.num_tokens));
    absl::StatusOr<size_t> n = cb->Load(ns, r.key, absl::MakeSpan(out));
    if (n.ok()) {
      ++present;
      EXPECT_EQ(out, Payload(r.key, out.size()));
    } else {
      EXPECT_EQ(n.status().code(), absl::StatusCode::kNotFound);
    }
  }
  EXPECT_EQ(present, loaded.load());
  auto h = cb->Health();
  EXPECT_TRUE(h.ok()) << h.status();
}

TEST_P(RemoteTest, RestartedHolderIsReadAgain) {
  Node a, b;
  ASSERT_OK(StartNode(a, "node-a", {}));
  ASSERT_OK(StartNode(b, "node-b", {a.address()}));
  Namespace ns = *Namespace::Create(SmallNamespace());
  std::vector<ChunkRef> refs;
  {
    auto ca = Connect(a.daemon->socket());
    refs = SaveChain(*ca, ns, 4, 4);
  }
  auto cb = Connect(b.daemon->socket());
  ASSERT_TRUE(cb->Lookup(ns, Namespace::Keys(refs)).ok());
  ExpectLoads(*cb, ns, {refs[0], refs[1]});
  // A restarts: new arena, new UCX keys and addresses, new boot id.
  a.daemon->process().Signal(SIGKILL);
  (void)a.daemon->process().Wait(absl::Seconds(5));
  a.daemon.reset();
  ASSERT_OK(StartNode(a, "node-a", {}));
  {
    auto ca = Connect(a.daemon->socket());
    SaveChain(*ca, ns, 4, 4);
  }
  // B's channel to A may still be waiting out its reconnect backoff (up to
  // 1 s; until then a read is a miss): wait until a Lookup has reached A.
  const std::string up = absl::StrCat("kvtier_peer_up{peer=\"", a.address(), "\"} 1");
  const absl::Time until = absl::Now() + absl::Seconds(10);
  bool reached = false;
  while (!reached && absl::Now() < until) {
    ASSERT_TRUE(cb->Lookup(ns, Namespace::Keys(refs)).ok());
    auto m = b.daemon->HttpGet("/metrics");
    reached = m.ok() && absl::StrContains(m->second, up);
    if (!reached) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(reached);
  // B's cached endpoint and key are stale; it greets A again and reads.
  ExpectLoads(*cb, ns, {refs[2], refs[3]});
  auto metrics = b.daemon->HttpGet("/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(metrics->second, HasSubstr("kvtier_remote_hellos_total 2"));
}

INSTANTIATE_TEST_SUITE_P(Transports, RemoteTest, ::testing::Values("tcp", "posix,cma"),
                         [](const auto& info) {
                           return std::string(info.param[0] == 't' ? "tcp" : "shm");
                         });

// ---- network namespaces -------------------------------------------------------

int Shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// Two network namespaces joined by a veth pair, removed on destruction.
class NetnsPair {
 public:
  NetnsPair() {
    const std::string tag = std::to_string(getpid() % 100000);
    ns_[0] = "kvt-a-" + tag;
    ns_[1] = "kvt-b-" + tag;
    const std::string va = "kva" + tag, vb = "kvb" + tag;
    ok_ = Shell("ip netns add " + ns_[0]) == 0 && Shell("ip netns add " + ns_[1]) == 0 &&
          Shell("ip link add " + va + " type veth peer name " + vb) == 0 &&
          Shell("ip link set " + va + " netns " + ns_[0]) == 0 &&
          Shell("ip link set " + vb + " netns " + ns_[1]) == 0 &&
          Shell(Exec(0) + "ip addr add 10.231.7.1/24 dev " + va) == 0 &&
          Shell(Exec(1) + "ip addr add 10.231.7.2/24 dev " + vb) == 0 &&
          Shell(Exec(0) + "ip link set " + va + " up") == 0 &&
          Shell(Exec(1) + "ip link set " + vb + " up") == 0 &&
          Shell(Exec(0) + "ip link set lo up") == 0 && Shell(Exec(1) + "ip link set lo up") == 0;
  }
  ~NetnsPair() {
    Shell("ip netns del " + ns_[0]);
    Shell("ip netns del " + ns_[1]);
  }
  bool ok() const { return ok_; }
  const std::string& name(int i) const { return ns_[i]; }
  std::string Exec(int i) const { return "ip netns exec " + ns_[i] + " "; }

 private:
  std::string ns_[2];
  bool ok_ = false;
};

// A peer token replaced in three steps (src/common/token_list.h): a node in
// the first step lists old and new (sends old), one in the second new and old
// (sends new). They read from each other. A node that jumps to the third step
// (new only) while another still sends the old token refuses that one, until
// its token file lists the old token again (read again while it runs).
TEST(RemotePeerTokenTest, RotationInStepsRefusesNoNodeInStep) {
  setenv("UCX_TLS", "tcp", 1);
  const std::string old_token = "remote-test-peer-token-old-0123456789";
  const std::string new_token = "remote-test-peer-token-new-0123456789";
  Node a, b, c;
  a.peer_token = absl::StrCat(old_token, "\n", new_token, "\n");
  b.peer_token = absl::StrCat(new_token, "\n", old_token, "\n");
  c.peer_token = new_token;
  b.port = FreePort();
  c.port = FreePort();
  ASSERT_OK(StartNode(a, "node-a", {b.address(), c.address()}));
  ASSERT_OK(StartNode(b, "node-b", {a.address()}));
  ASSERT_OK(StartNode(c, "node-c", {a.address()},
                      {"--config", c.dir->Write("reload.yaml", "tls:\n  reload_seconds: 1\n")}));
  unsetenv("UCX_TLS");
  Namespace ns = *Namespace::Create(SmallNamespace());
  auto ca = Connect(a.daemon->socket());
  auto cb = Connect(b.daemon->socket());
  auto cc = Connect(c.daemon->socket());

  // B and C send the new token, which A accepts.
  std::vector<ChunkRef> on_a = SaveChain(*ca, ns, 3, 71);
  for (Client* reader : {cb.get(), cc.get()}) {
    ASSERT_OK_AND_ASSIGN(LookupResult r, reader->Lookup(ns, Namespace::Keys(on_a)));
    EXPECT_EQ(r.matched, on_a.size());
    ExpectLoads(*reader, ns, on_a);
  }
  // A sends the old token: B (second step) still accepts it.
  std::vector<ChunkRef> on_b = SaveChain(*cb, ns, 3, 72);
  ASSERT_OK_AND_ASSIGN(LookupResult from_b, ca->Lookup(ns, Namespace::Keys(on_b)));
  EXPECT_EQ(from_b.matched, on_b.size());
  ExpectLoads(*ca, ns, on_b);
  // C (third step too early) refuses it: C's chunks are misses for A.
  std::vector<ChunkRef> on_c = SaveChain(*cc, ns, 3, 73);
  ASSERT_OK_AND_ASSIGN(LookupResult from_c, ca->Lookup(ns, Namespace::Keys(on_c)));
  EXPECT_EQ(from_c.matched, 0u);
  ASSERT_OK_AND_ASSIGN(auto metrics, c.daemon->HttpGet("/metrics"));
  EXPECT_THAT(metrics.second, ::testing::ContainsRegex("kvtier_peer_auth_failures_total [1-9]"))
      << metrics.second;
  ASSERT_OK_AND_ASSIGN(auto metrics_b, b.daemon->HttpGet("/metrics"));
  EXPECT_THAT(metrics_b.second, HasSubstr("kvtier_peer_auth_failures_total 0"));

  // C's file gets the old token back (by rename, as the kubelet writes a
  // Secret): within a few seconds A reads C's chunks.
  const std::string next =
      c.dir->Write("peer.token.next", absl::StrCat(new_token, "\n", old_token));
  ASSERT_EQ(std::rename(next.c_str(), c.dir->File("peer.token").c_str()), 0);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  size_t matched = 0;
  while (matched != on_c.size() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_OK_AND_ASSIGN(LookupResult r, ca->Lookup(ns, Namespace::Keys(on_c)));
    matched = r.matched;
  }
  EXPECT_EQ(matched, on_c.size()) << c.daemon->process().Log();
  ExpectLoads(*ca, ns, on_c);
}

// With TLS on (and client certificates required), a node calls its peers
// over TLS with its own certificate.
TEST(RemoteTlsTest, NodesReadFromEachOtherOverMutualTls) {
  setenv("UCX_TLS", "tcp", 1);
  TempDir certs;
  ASSERT_OK(MakeCertificates(certs));
  const std::string yaml =
      certs.Write("tls.yaml", absl::StrCat("tls:\n  client_ca_file: ", certs.File("ca.pem"),
                                           "\n  require_client_cert: true\n"));
  const std::vector<std::string> tls = {"--config",   yaml,
                                        "--tls-cert", certs.File("server.pem"),
                                        "--tls-key",  certs.File("server.key")};
  Node a, b;
  ASSERT_OK(StartNode(a, "node-a", {}, tls));
  ASSERT_OK(StartNode(b, "node-b", {a.address()}, tls));
  unsetenv("UCX_TLS");
  Namespace ns = *Namespace::Create(SmallNamespace());
  auto ca = Connect(a.daemon->socket());
  auto cb = Connect(b.daemon->socket());
  std::vector<ChunkRef> refs = SaveChain(*ca, ns, 4, 61);
  ASSERT_OK_AND_ASSIGN(LookupResult r, cb->Lookup(ns, Namespace::Keys(refs)));
  EXPECT_EQ(r.matched, refs.size());
  ExpectLoads(*cb, ns, refs);
}

TEST(RemoteNetnsTest, ReadsAcrossNetworkNamespacesOverVeth) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces (ip netns)";
  if (Shell("ip -V") != 0) GTEST_SKIP() << "needs the ip command (iproute2)";
  NetnsPair net;
  ASSERT_TRUE(net.ok()) << "could not create network namespaces and a veth pair";
  setenv("UCX_TLS", "tcp", 1);
  TempDir da, db;
  const std::string yaml =
      absl::StrCat("listen:\n  allow_insecure_tcp: true\nauth:\n  admin_token: ", kAdmin,
                   "\nucx:\n  peer_token: ", kPeerToken, "\n");
  const std::string ya = da.Write("kvtierd.yaml", yaml);
  const std::string yb = db.Write("kvtierd.yaml", yaml);
  auto start = [&](int i, const TempDir& dir, const std::string& yaml, const std::string& ip,
                   const std::string& id, const std::string& peer) {
    std::vector<std::string> argv = {
        "/usr/bin/env", "ip",       "netns",     "exec",     net.name(i),
        KvtierdPath(),  "--config", yaml,        "--socket", dir.File("kvtierd.sock"),
        "--http",       "",         "--dram",    "64MiB",    "--huge-pages",
        "false",        "--nvme",   "off",       "--tcp",    ip + ":7311",
        "--ucx",        "true",     "--node-id", id};
    if (!peer.empty()) {
      argv.push_back("--peers");
      argv.push_back(peer);
    }
    return Process::Start(argv, dir.File("kvtierd.log"));
  };
  auto pa = start(0, da, ya, "10.231.7.1", "node-a", "");
  ASSERT_TRUE(pa.ok()) << pa.status();
  ASSERT_OK(WaitForDaemon(da.File("kvtierd.sock"), pa->get(), absl::Seconds(20)));
  auto pb = start(1, db, yb, "10.231.7.2", "node-b", "10.231.7.1:7311");
  ASSERT_TRUE(pb.ok()) << pb.status();
  ASSERT_OK(WaitForDaemon(db.File("kvtierd.sock"), pb->get(), absl::Seconds(20)));
  unsetenv("UCX_TLS");

  Namespace ns = *Namespace::Create(SmallNamespace());
  auto ca = Connect(da.File("kvtierd.sock"));
  auto cb = Connect(db.File("kvtierd.sock"));
  std::vector<ChunkRef> refs = SaveChain(*ca, ns, 5, 5);
  auto found = cb->Lookup(ns, Namespace::Keys(refs));
  ASSERT_TRUE(found.ok()) << found.status() << "\n" << (*pb)->Log();
  ASSERT_EQ(found->matched, 5u) << (*pb)->Log();
  EXPECT_EQ(found->chunks[0].holder, "node-a");
  ExpectLoads(*cb, ns, refs);
  (*pa)->Signal(SIGTERM);
  (*pb)->Signal(SIGTERM);
  (void)(*pa)->Wait(absl::Seconds(10));
  (void)(*pb)->Wait(absl::Seconds(10));
}

}  // namespace
}  // namespace kvtier::testing
